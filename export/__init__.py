"""Export stage: checkpoint -> model bundle (ONNX and TFLite, fp32 and int8, verified)."""
from __future__ import annotations

import contextlib
import io
import logging
import warnings


@contextlib.contextmanager
def quiet():
    """Silence converters and quantisers, which print progress lines and warnings of their own;
    the export reports what matters itself."""
    level = logging.root.level
    logging.root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.root.setLevel(level)
