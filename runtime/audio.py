"""Audio file I/O at the edges of every stage: read any rate and channel count, hand out 16 kHz
mono float32, write results back. NumPy, SciPy and soundfile only (no torch), so the runtime can
use it on a board."""
from __future__ import annotations

import os
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


class AudioError(Exception):
    """An audio file that cannot be used; the message says which file and what to do."""


def read(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read a file as float32 samples ``[L, C]`` and its sample rate."""
    path = Path(path)
    if path.is_dir():
        raise AudioError(f"{path}: is a folder; give an audio file")
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    try:
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types for bad headers, truncation, codecs
        raise AudioError(f"{path}: cannot decode audio ({str(e).strip() or type(e).__name__}); is it a WAV/FLAC/OGG file?") from None
    if x.shape[0] == 0:
        raise AudioError(f"{path}: file holds no samples")
    return x, sr


def to_mono(x: np.ndarray) -> np.ndarray:
    """Average the channels. Shape: [L, C] or [L] -> [L]"""
    return x.mean(axis=1) if x.ndim == 2 else x


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Polyphase resampling along the first axis."""
    if sr_in == sr_out:
        return x
    g = gcd(sr_in, sr_out)
    return resample_poly(x, sr_out // g, sr_in // g, axis=0).astype(np.float32)


def load(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """Mono float32 at ``sample_rate``; any input rate and channel count."""
    x, sr = read(path)
    return resample(to_mono(x), sr, sample_rate).astype(np.float32)


def finite(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Replace NaN/Inf samples by zero; returns the clean signal and how many were replaced."""
    bad = ~np.isfinite(x)
    n = int(bad.sum())
    if n:
        x = np.where(bad, np.float32(0), x)
    return x, n


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early, with a clear message, when an output file cannot be created."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise AudioError(f"{path}: is a folder; give an output file name")
    if not parent.is_dir():
        raise AudioError(f"{path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise AudioError(f"{path}: not writable")
    return path


# What each output suffix is written as: (format, subtype)
WRITE_FORMATS = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16"), ".ogg": ("OGG", "VORBIS")}


def check_audio_output(path: str | os.PathLike, *inputs: str | os.PathLike) -> Path:
    """``check_writable`` plus a known audio suffix, and never one of ``inputs`` (it would be overwritten)."""
    path = check_writable(path)
    if path.suffix.lower() not in WRITE_FORMATS:
        raise AudioError(f"{path}: unknown output format {path.suffix or '(no suffix)'!r}; name it .wav, .flac or .ogg")
    for other in inputs:
        if Path(other).resolve() == path.resolve():
            raise AudioError(f"{path}: this is also an input file and would be overwritten; write to another file")
    return path


def write(path: str | os.PathLike, x: np.ndarray, sample_rate: int) -> None:
    """Write float32 audio (mono ``[L]`` or ``[L, C]``): 16-bit PCM WAV/FLAC, or Vorbis for .ogg.

    The file appears complete or not at all: it is written beside the target and renamed.
    """
    path = check_audio_output(path)
    tmp = path.with_name(f".{path.name}.part")
    fmt, subtype = WRITE_FORMATS[path.suffix.lower()]
    try:
        sf.write(str(tmp), np.clip(x, -1.0, 1.0), sample_rate, format=fmt, subtype=subtype)
        os.replace(tmp, path)
    except Exception as e:
        tmp.unlink(missing_ok=True)
        raise AudioError(f"{path}: cannot write ({e})") from None


def list_audio(root: str | os.PathLike) -> list[Path]:
    """Audio files below ``root`` at any depth, sorted for reproducibility."""
    root = Path(root)
    if not root.is_dir():
        raise AudioError(f"{root}: not a folder")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
