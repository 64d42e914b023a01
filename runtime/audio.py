"""Audio file I/O at the edges of every stage: read any rate and channel count, hand out 16 kHz
mono float32, write results back. NumPy, SciPy and soundfile only (no torch), so the runtime can
use it on a board."""
from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from math import gcd
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


class AudioError(Exception):
    """An audio file that cannot be used; the message says which file and what to do."""


@dataclass(frozen=True)
class Clip:
    """Decoded audio and what it was stored as, so a result can be written back the same way."""

    samples: np.ndarray  # float32 [L, C]
    rate: int
    format: str  # soundfile's major format: "WAV", "FLAC", "OGG", ...
    subtype: str  # soundfile's subtype: "PCM_16", "PCM_24", "FLOAT", "VORBIS", ...


def wav_data_frames(head: bytes, size: int) -> tuple[int, int] | None:
    """(frames the header of a RIFF/WAVE file promises, frames its ``size`` bytes hold), or None
    when that cannot be told: not a RIFF WAVE file, no data chunk in ``head``, or a data size left
    open (0 or 0xFFFFFFFF, as writers to a pipe leave it). libsndfile quietly shortens a cut file
    to what is there, so this is how a cut is noticed."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, block_align = 12, None
    while pos + 8 <= len(head):
        cid, n = head[pos : pos + 4], struct.unpack("<I", head[pos + 4 : pos + 8])[0]
        if cid == b"fmt " and pos + 22 <= len(head):
            block_align = struct.unpack("<H", head[pos + 20 : pos + 22])[0]
        elif cid == b"data":
            if not block_align or n in (0, 0xFFFFFFFF):
                return None
            return n // block_align, max(size - pos - 8, 0) // block_align
        pos += 8 + n + (n & 1)  # chunks are padded to an even size
    return None


def read_clip(src: str | os.PathLike | BinaryIO, seconds: float | None = None) -> Clip:
    """Read a file (or a binary stream such as stdin, read to its end) as float32 ``[L, C]``, with
    its rate and sample format; only its first ``seconds`` when given. A WAV file whose data was cut
    short is refused, as is one without samples."""
    if hasattr(src, "read"):
        name, data = "stdin", src.read()
        if not data:
            raise AudioError("stdin: no data; pipe an audio file in (e.g. cat in.wav | ... --input -)")
        head, size, source = data[:1 << 16], len(data), io.BytesIO(data)
    else:
        path = Path(src)
        name = str(path)
        if path.is_dir():
            raise AudioError(f"{path}: is a folder; give an audio file")
        if not path.is_file():
            raise AudioError(f"{path}: no such file")
        with open(path, "rb") as f:
            head = f.read(1 << 16)
        size, source = path.stat().st_size, str(path)
    try:
        with sf.SoundFile(source) as f:
            rate, fmt, subtype = f.samplerate, f.format, f.subtype
            wanted = -1 if seconds is None else int(round(seconds * rate))
            frames = wav_data_frames(head, size)
            if frames and frames[1] < frames[0] and (wanted < 0 or wanted > frames[1]):
                promised, held = frames
                raise AudioError(
                    f"{name}: truncated: its header promises {promised / rate:.2f} s ({promised} frames) but the file holds only "
                    f"{held / rate:.2f} s ({held}); it was cut short (an interrupted copy, download or recording?): use a complete copy"
                )
            x = f.read(wanted, dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as e:  # soundfile raises several types for bad headers, truncation, codecs
        detail = str(e).strip().split("': ")[-1] or type(e).__name__  # less libsndfile's "Error opening '<path>': "
        raise AudioError(f"{name}: cannot decode audio ({detail}); is it a WAV/FLAC/OGG file?") from None
    if x.shape[0] == 0:
        raise AudioError(f"{name}: file holds no samples")
    return Clip(x, rate, fmt, subtype)


def read(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read a file as float32 samples ``[L, C]`` and its sample rate."""
    clip = read_clip(path)
    return clip.samples, clip.rate


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


# What each output suffix is written as: (format, subtype when the input's cannot be kept)
WRITE_FORMATS = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16"), ".ogg": ("OGG", "VORBIS")}
FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")


def check_audio_output(path: str | os.PathLike, *inputs: str | os.PathLike) -> Path:
    """``check_writable`` plus a known audio suffix, and never one of ``inputs`` (it would be overwritten)."""
    path = check_writable(path)
    if path.suffix.lower() not in WRITE_FORMATS:
        raise AudioError(f"{path}: unknown output format {path.suffix or '(no suffix)'!r}; name it .wav, .flac or .ogg")
    for other in inputs:
        if Path(other).resolve() == path.resolve():
            raise AudioError(f"{path}: this is also an input file and would be overwritten; write to another file")
    return path


def output_subtype(fmt: str, subtype: str | None, default: str) -> str:
    """``subtype`` when format ``fmt`` can store it; else 24-bit PCM for high-resolution input
    where the format has it (FLAC cannot store float), else ``default``."""
    if subtype and sf.check_format(fmt, subtype):
        return subtype
    if subtype in (*FLOAT_SUBTYPES, "PCM_24", "PCM_32") and sf.check_format(fmt, "PCM_24"):
        return "PCM_24"
    return default


def encode(x: np.ndarray, subtype: str) -> tuple[np.ndarray, int]:
    """The samples as they will be stored, and how many were clipped: formats other than float
    hold [-1, 1] only."""
    if subtype in FLOAT_SUBTYPES:
        return x, 0
    return np.clip(x, -1.0, 1.0), int(np.count_nonzero(np.abs(x) > 1.0))


def write(path: str | os.PathLike, x: np.ndarray, sample_rate: int, subtype: str | None = None) -> int:
    """Write float32 audio (mono ``[L]`` or ``[L, C]``) as ``subtype`` (soundfile's name, e.g.
    ``PCM_24``) where the suffix's format can store it, else 16-bit PCM WAV/FLAC or Vorbis for .ogg.
    Returns how many samples were beyond full scale and clipped.

    The file appears complete or not at all: it is written beside the target and renamed.
    """
    path = check_audio_output(path)
    tmp = path.with_name(f".{path.name}.part")
    fmt, default = WRITE_FORMATS[path.suffix.lower()]
    subtype = output_subtype(fmt, subtype, default)
    y, clipped = encode(x, subtype)
    try:
        sf.write(str(tmp), y, sample_rate, format=fmt, subtype=subtype)
        os.replace(tmp, path)
    except Exception as e:
        tmp.unlink(missing_ok=True)
        raise AudioError(f"{path}: cannot write ({e})") from None
    return clipped


def write_wav_stream(stream: BinaryIO, x: np.ndarray, sample_rate: int, subtype: str | None = None) -> int:
    """``write`` as one WAV file onto a binary stream such as stdout. Returns the clipped count."""
    subtype = output_subtype("WAV", subtype, "PCM_16")
    y, clipped = encode(x, subtype)
    buf = io.BytesIO()  # a WAV header holds the data size, so the file is built before it is sent
    sf.write(buf, y, sample_rate, format="WAV", subtype=subtype)
    data = memoryview(buf.getvalue())
    while data:  # a pipe may take part of a large write, and says so only by the count
        data = data[stream.write(data) :]
    stream.flush()
    return clipped


def list_audio(root: str | os.PathLike) -> list[Path]:
    """Audio files below ``root`` at any depth, sorted for reproducibility."""
    root = Path(root)
    if not root.is_dir():
        raise AudioError(f"{root}: not a folder")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
