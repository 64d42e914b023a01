"""Export stage: checkpoint -> model bundle (ONNX and TFLite, fp32 and int8, verified)."""
from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import time
import warnings
from pathlib import Path

_log_fd: int | None = None  # the open export log, while ``log_to`` is active


@contextlib.contextmanager
def log_to(path: Path, command: str):
    """Open the export log that ``quiet`` blocks write to, for the duration of the block."""
    global _log_fd
    with open(path, "w", buffering=1) as f:
        f.write(f"# {command}\n# started {time.strftime('%Y-%m-%d %H:%M:%S')}; what converters, quantisers and interpreters printed:\n")
        _log_fd = f.fileno()
        try:
            yield
        finally:
            _log_fd = None


def _flush_all() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    with contextlib.suppress(OSError, AttributeError):  # C stdio buffers: a converter's printf, on glibc
        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def quiet():
    """Send what converters, quantisers and interpreters print to the export log: their Python
    warnings and logging, and their C-level stdout and stderr (file descriptors 1 and 2). They print
    progress lines and warnings that are not ours to report; the export reports what matters
    itself. Without an open log (``log_to``) nothing is redirected."""
    if _log_fd is None:
        yield
        return
    _flush_all()
    saved = os.dup(1), os.dup(2)
    try:
        os.dup2(_log_fd, 1)
        os.dup2(_log_fd, 2)
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            yield
    finally:
        _flush_all()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
