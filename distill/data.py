"""Training data: on-the-fly mixtures of clean speech and noise folders, paired noisy/clean folders
(VoiceBank+DEMAND layout) and a procedural speech-like generator for tests.

Every sampler hands out whole batches through ``batch(step, size)``; the random draws depend only
on ``(seed, step)``, so a resumed run sees exactly the batches an uninterrupted run would have.

A corpus is a folder or an index of one: ``python -m distill.data index DIR`` scans the folder
once and writes ``DIR/index.jsonl`` (each file's path relative to the index, frames, rate and
channels), so that training on a large corpus starts without probing every file again.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import soundfile as sf

from distill import augment as aug
from runtime.audio import AudioError, list_audio, resample, to_mono

log = logging.getLogger("distill.data")


@dataclass(frozen=True)
class MixConfig:
    sample_rate: int = 16000
    seconds: float = 4.0  # training segment length
    snr_db: tuple[float, float] = (-5.0, 20.0)  # uniform range of speech-to-noise ratios
    level_db: tuple[float, float] = (-35.0, -15.0)  # uniform range of mixture RMS, dBFS
    min_seconds: float = 1.0  # shorter files are skipped when a folder is scanned
    peak: float = 0.99  # mixtures louder than this are scaled down instead of clipped

    @property
    def length(self) -> int:
        return int(round(self.seconds * self.sample_rate))


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


def mix(clean: np.ndarray, noise: np.ndarray, snr_db: float, level_db: float, peak: float) -> tuple[np.ndarray, np.ndarray]:
    """Scale ``noise`` to ``snr_db`` below ``clean``, set the mixture RMS to ``level_db`` dBFS and
    lower both when the mixture would exceed ``peak``. Returns float32 ``(noisy, clean)``."""
    noise = noise * (rms(clean) / rms(noise) * 10 ** (-snr_db / 20))
    noisy = clean + noise
    gain = 10 ** (level_db / 20) / rms(noisy)
    gain = min(gain, peak / (np.abs(noisy).max() + 1e-12))
    return (noisy * gain).astype(np.float32), (clean * gain).astype(np.float32)


@dataclass
class _Entry:
    path: Path
    frames: int
    sample_rate: int
    name: str  # relative to the corpus folder: what exclusion lists and pairings match


INDEX_FORMAT = "tiny-denoise-audio-index"
INDEX_VERSION = 1


def is_index(source: str | os.PathLike) -> bool:
    """An index file rather than a folder: a ``.jsonl`` name."""
    return Path(source).suffix == ".jsonl"


def probe(path: Path) -> tuple[int, int, int] | str:
    """(frames, rate, channels) of an audio file from its header, or why it cannot be read."""
    try:
        info = sf.info(str(path))
    except Exception as e:  # soundfile raises several types for files it cannot parse
        return str(e).strip() or type(e).__name__
    return info.frames, info.samplerate, info.channels


def write_index(root: str | os.PathLike, out: str | os.PathLike, progress: bool = False) -> tuple[int, float, list[tuple[Path, str]]]:
    """Scan the audio files below ``root`` once and write their index to ``out`` (JSON lines: a
    header, then per file its path relative to the index's folder, frames, rate, channels and
    seconds), atomically. Returns (files indexed, their hours, [(unreadable file, why)]).
    Raises AudioError when ``root`` holds no readable audio."""
    root, out = Path(root), Path(out)
    base = Path(os.path.abspath(out)).parent
    paths = list_audio(root)
    if progress:
        from tqdm import tqdm

        paths = tqdm(paths, desc="indexing", unit="file")
    records, skipped = [], []
    for path in paths:
        info = probe(path)
        if isinstance(info, str):
            skipped.append((path, info))
            continue
        frames, rate, channels = info
        records.append({"path": Path(os.path.relpath(os.path.abspath(path), base)).as_posix(), "frames": frames, "rate": rate, "channels": channels,
                        "seconds": round(frames / rate, 3)})  # fmt: skip
    if not records:
        raise AudioError(f"{root}: no readable audio files (WAV/FLAC/OGG)")
    hours = sum(r["frames"] / r["rate"] for r in records) / 3600
    header = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "root": Path(os.path.relpath(os.path.abspath(root), base)).as_posix(),
              "files": len(records), "hours": round(hours, 3), "skipped": len(skipped)}  # fmt: skip
    tmp = out.with_name(f".{out.name}.part")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for row in (header, *records):
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, out)  # an interrupted scan leaves no half-written index
    finally:
        tmp.unlink(missing_ok=True)
    return len(records), hours, skipped


def read_index(path: str | os.PathLike) -> tuple[Path, list[tuple[Path, str, int, int]]]:
    """The corpus folder an index describes and its files: (path, name relative to the corpus
    folder, frames, rate), in the order they were scanned."""
    path = Path(path)
    redo = f"re-create it with python -m distill.data index DIR --out {path}"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise AudioError(f"{path}: no such index file; create one with python -m distill.data index DIR --out {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AudioError(f"{path}: cannot read the index ({e}); {redo}") from None
    try:
        header = json.loads(lines[0]) if lines else None
    except json.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or header.get("format") != INDEX_FORMAT:
        raise AudioError(f"{path}: not an audio index of this project (no {INDEX_FORMAT} header); {redo}")
    if header.get("version") != INDEX_VERSION:
        raise AudioError(f"{path}: index version {header.get('version')}, this code reads {INDEX_VERSION}; {redo}")
    if not isinstance(header.get("root"), str):
        raise AudioError(f"{path}: the index header names no corpus folder; {redo}")
    base, root = path.parent, PurePosixPath(header["root"])
    files = []
    for n, line in enumerate(lines[1:], start=2):
        try:
            r = json.loads(line)
            rel, frames, rate = PurePosixPath(r["path"]), r["frames"], r["rate"]
            if not (isinstance(frames, int) and isinstance(rate, int) and frames >= 0 and rate > 0):
                raise ValueError
            name = rel.as_posix() if str(root) == "." else rel.relative_to(root).as_posix()  # ValueError: outside the corpus folder
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise AudioError(f"{path}: line {n} is not a record of a file in {root} (path, frames, rate); {redo}") from None
        files.append((Path(os.path.normpath(base / rel)), name, frames, rate))
    return Path(os.path.normpath(base / root)), files


def corpus_root(source: str | os.PathLike) -> Path:
    """The folder of a corpus given as a folder or as its index."""
    return read_index(source)[0] if is_index(source) else Path(source)


def corpus_files(source: str | os.PathLike, exclude: set[str] = frozenset()) -> list[tuple[Path, str, tuple[int, int, None] | None]]:
    """The audio files of a corpus (folder or index) not in ``exclude`` (by name or by path relative
    to the corpus folder): (path, relative name, (frames, rate, None) from an index or None). A
    folder is listed, not probed, so excluded files are never opened."""
    if is_index(source):
        listing = [(path, name, (frames, rate, None)) for path, name, frames, rate in read_index(source)[1]]
    else:
        root = Path(source)
        listing = [(path, path.relative_to(root).as_posix(), None) for path in list_audio(root)]
    return [(path, rel, info) for path, rel, info in listing if rel not in exclude and path.name not in exclude]


def room_bank(rir: str | os.PathLike | None, rooms: aug.RoomConfig, sample_rate: int, cache: str | os.PathLike | None, exclude: set[str] = frozenset()) -> aug.RirBank:
    """The measured rooms of ``rir`` (a folder or its index, less ``exclude``) beside ``rooms``
    simulated ones."""
    files = None
    if rir is not None:
        files = [path for path, _, _ in corpus_files(rir, exclude)]
        if not files:
            raise AudioError(f"{rir}: no room impulse responses (WAV/FLAC) left after exclusions")
    return aug.RirBank.build(files, rooms, sample_rate, cache)


def audio_names(source: str | os.PathLike) -> list[str]:
    """The audio files of a corpus (folder or index), relative to its folder, sorted."""
    if is_index(source):
        return sorted(name for _, name, _, _ in read_index(source)[1])
    root = Path(source)
    return [p.relative_to(root).as_posix() for p in list_audio(root)]


class AudioFolder:
    """The usable audio files of a corpus, a folder (scanned) or its index (read), segment by segment.

    Unreadable, empty or too-short files are skipped with a warning naming them; a file that fails
    later (a truncated FLAC can pass the header check, an index can be older than its folder) is
    dropped with a warning at that point.
    """

    def __init__(self, root: str | os.PathLike, min_seconds: float, exclude: set[str] = frozenset()):
        self.root = Path(root)
        self.entries: list[_Entry] = []
        for path, rel, info in corpus_files(self.root, exclude):
            info = info or probe(path)
            if isinstance(info, str):
                log.warning("skipping %s: unreadable (%s)", path, info)
                continue
            frames, rate, _ = info
            if frames <= 0:
                log.warning("skipping %s: empty", path)
            elif frames < min_seconds * rate:
                log.warning("skipping %s: shorter than %.1f s", path, min_seconds)
            else:
                self.entries.append(_Entry(path, frames, rate, rel))
        if not self.entries:
            raise AudioError(f"{self.root}: no usable audio files (WAV/FLAC/OGG, at least {min_seconds:.1f} s)")

    def __len__(self) -> int:
        return len(self.entries)

    def pick(self, rng: np.random.Generator) -> _Entry:
        return self.entries[rng.integers(len(self.entries))]

    def read(self, entry: _Entry, start: int, frames: int, sample_rate: int) -> np.ndarray:
        """``frames`` native-rate samples from ``start``, mono, resampled to ``sample_rate``."""
        try:
            x, _ = sf.read(str(entry.path), start=start, frames=frames, dtype="float32", always_2d=True)
        except Exception as e:  # soundfile raises several types for truncated or corrupt data
            why = str(e).strip() or type(e).__name__
            self.drop(entry, why)
            raise AudioError(f"{entry.path}: {why}") from None
        if x.shape[0] == 0:
            self.drop(entry, "no samples where the header promised some")
            raise AudioError(f"{entry.path}: truncated")
        return resample(to_mono(x), entry.sample_rate, sample_rate)

    def drop(self, entry: _Entry, why: str) -> None:
        log.warning("dropping %s: %s", entry.path, why)
        if entry in self.entries:
            self.entries.remove(entry)

    def segment(self, rng: np.random.Generator, length: int, sample_rate: int, loop: bool) -> np.ndarray:
        """A random ``length``-sample segment; shorter files are looped (``loop``) or zero-padded at a
        random offset. Retries with another file when one turns out unreadable."""
        for _ in range(100):
            if not self.entries:
                raise AudioError(f"{self.root}: every audio file failed to read")
            e = self.pick(rng)
            native = math.ceil(length * e.sample_rate / sample_rate)
            try:
                if e.frames >= native:
                    start = int(rng.integers(e.frames - native + 1))
                    return _fit(self.read(e, start, native, sample_rate), length)
                x = self.read(e, 0, e.frames, sample_rate)
            except AudioError:
                continue
            if loop:
                return aug.loop(x, length, int(rng.integers(len(x))), int(0.02 * sample_rate))
            out = np.zeros(length, np.float32)
            offset = int(rng.integers(length - len(x) + 1)) if len(x) < length else 0
            out[offset : offset + len(x)] = x[:length]
            return out
        raise AudioError(f"{self.root}: could not read a segment after 100 attempts")


def _fit(x: np.ndarray, length: int) -> np.ndarray:
    return x[:length] if len(x) >= length else np.pad(x, (0, length - len(x)))


class Sampler:
    """Base: deterministic batches of ``(noisy, clean)`` float32 arrays of shape ``[B, L]``."""

    def __init__(self, config: MixConfig, seed: int):
        self.config, self.seed = config, seed

    def batch(self, step: int, size: int, stream: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Batch number ``step`` of random stream ``stream`` (0: training, others: held-out draws)."""
        rng = np.random.default_rng([self.seed, stream, step])
        pairs = [self.example(rng) for _ in range(size)]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    def example(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _mix(self, rng, clean, noise):
        c = self.config
        return mix(clean, noise, rng.uniform(*c.snr_db), rng.uniform(*c.level_db), c.peak)


class MixtureSampler(Sampler):
    """Clean speech plus noise from two folders at a random SNR and level, augmented by
    ``augment`` (rooms from ``rooms``, several noise sources, low-frequency noise, channel,
    clipping; see :mod:`distill.augment`). The SNR is that of the speech as the microphone hears
    it (reverberant, where a room is drawn) against the sum of the noise sources."""

    def __init__(self, clean: AudioFolder, noise: AudioFolder, config: MixConfig, seed: int = 0,
                 augment: aug.AugmentConfig = aug.NONE, rooms: aug.RirBank | None = None):  # fmt: skip
        super().__init__(config, seed)
        self.clean, self.noise = clean, noise
        self.augment, self.rooms = augment, rooms

    def example(self, rng):
        c, a, sr = self.config, self.augment, self.config.sample_rate
        for _ in range(20):
            speech = self.clean.segment(rng, c.length, sr, loop=False)
            if rms(speech) > 1e-4:  # a segment of pure silence has no SNR
                break
        if a == aug.NONE:
            return self._mix(rng, speech, self._source(rng))
        if a.speech_highpass_hz:
            speech = aug.highpass(speech, a.speech_highpass_hz, sr)
        noise = self._noise(rng)
        target = speech
        if self.rooms is not None and _chance(rng, a.reverb):
            rir_speech, rir_noise = self.rooms.pick(rng)
            wet = aug.reverberate(speech, rir_speech)
            target = wet if a.full_target else aug.reverberate(speech, aug.early(rir_speech, sr, a.early_ms))
            speech = wet
            if _chance(rng, a.noise_room):
                noise = aug.reverberate(noise, rir_noise)
        snr, level = rng.uniform(*c.snr_db), rng.uniform(*c.level_db)
        noisy = speech + noise * (rms(speech) / rms(noise) * 10 ** (-snr / 20))
        noisy, target = aug.channel(rng, a, sr, noisy, target)
        if _chance(rng, a.clip):
            gain = 10 ** (rng.uniform(1, 12) / 20) / (np.abs(noisy).max() + 1e-12)  # peak driven 1-12 dB past full scale
            return np.clip(noisy * gain, -1, 1).astype(np.float32), (target * gain).astype(np.float32)
        gain = min(10 ** (level / 20) / rms(noisy), c.peak / (np.abs(noisy).max() + 1e-12))
        return (noisy * gain).astype(np.float32), (target * gain).astype(np.float32)

    def _source(self, rng) -> np.ndarray:
        noise = self.noise.segment(rng, self.config.length, self.config.sample_rate, loop=True)
        if rms(noise) < 1e-7:
            noise = rng.standard_normal(self.config.length).astype(np.float32) * 1e-3
        return noise

    def _noise(self, rng) -> np.ndarray:
        """One to three noise sources at random relative levels, some with a gain envelope, plus
        (sometimes) rumble, hum or DC. Shape: -> [L]"""
        c, a = self.config, self.augment
        total = np.zeros(c.length, np.float32)
        for k in range(1 + len(a.sources)):
            if k and not _chance(rng, a.sources[k - 1]):
                break
            x = self._source(rng)
            x = x / rms(x) * (10 ** (rng.uniform(*a.source_gain_db) / 20) if k else 1.0)
            if _chance(rng, a.envelope):
                x = x * aug.envelope(rng, c.length, c.sample_rate)
            total += x
        if _chance(rng, a.low):
            total += aug.low_noise(rng, c.length, c.sample_rate) * rms(total) * 10 ** (rng.uniform(-15, 5) / 20)
        return total


def _chance(rng: np.random.Generator, p: float) -> bool:
    """True with probability ``p``; draws nothing when ``p`` is 0, so a switched-off augmentation
    leaves every later draw as it was."""
    return bool(p) and rng.random() < p


def _key(path: Path, root: Path) -> str:
    return _stem(path.relative_to(root).as_posix())


def _stem(name: str) -> str:
    """A relative file name without its suffix: what pairs a noisy file with its clean one."""
    return PurePosixPath(name).with_suffix("").as_posix()


def paired_files(noisy_dir: str | os.PathLike, clean_dir: str | os.PathLike) -> list[tuple[Path, Path]]:
    """Noisy/clean file pairs matched by relative path without suffix (VoiceBank+DEMAND layout)."""
    noisy_dir, clean_dir = Path(noisy_dir), Path(clean_dir)
    clean = {_key(p, clean_dir): p for p in list_audio(clean_dir)}
    pairs = []
    for p in list_audio(noisy_dir):
        if _key(p, noisy_dir) in clean:
            pairs.append((p, clean[_key(p, noisy_dir)]))
        else:
            log.warning("skipping %s: no clean file %s.* in %s", p, _key(p, noisy_dir), clean_dir)
    if not pairs:
        raise AudioError(f"no matching noisy/clean files in {noisy_dir} and {clean_dir}")
    return pairs


class PairedSampler(Sampler):
    """Aligned random crops of paired noisy/clean files at their recorded SNR and a random level."""

    def __init__(self, noisy_dir, clean_dir, config: MixConfig, seed: int = 0):
        super().__init__(config, seed)
        self.noisy = AudioFolder(noisy_dir, config.min_seconds)
        self.clean = AudioFolder(clean_dir, config.min_seconds)
        by_key = {_stem(e.name): e for e in self.clean.entries}
        self.pairs = [(e, by_key[_stem(e.name)]) for e in self.noisy.entries if _stem(e.name) in by_key]
        if not self.pairs:
            raise AudioError(f"no matching noisy/clean files in {noisy_dir} and {clean_dir}")

    def example(self, rng):
        c = self.config
        for _ in range(100):
            e, ce = self.pairs[rng.integers(len(self.pairs))]
            native = math.ceil(c.length * e.sample_rate / c.sample_rate)
            start = int(rng.integers(max(min(e.frames, ce.frames) - native, 0) + 1))
            try:
                noisy = _fit(self.noisy.read(e, start, native, c.sample_rate), c.length)
                clean = _fit(self.clean.read(ce, start, native, c.sample_rate), c.length)
            except AudioError:
                self.pairs.remove((e, ce))
                if not self.pairs:
                    raise AudioError(f"{self.noisy.root}: every noisy/clean pair failed to read") from None
                continue
            gain = 10 ** (rng.uniform(*c.level_db) / 20) / rms(noisy)
            gain = min(gain, c.peak / (np.abs(noisy).max() + 1e-12))
            return (noisy * gain).astype(np.float32), (clean * gain).astype(np.float32)
        raise AudioError(f"{self.noisy.root}: could not read a pair after 100 attempts")


class PooledSampler(Sampler):
    """A fixed pool of examples drawn once from another sampler, each with the DNSMOS OVRL of its
    noisy input (for metric-guided training). The scores are cached in ``cache``, keyed by the
    pool's size, seed and source, so later runs on the same pool start at once. Batches are random
    draws from the pool: ``batch`` returns ``(noisy, clean, ovrl)``.
    """

    def __init__(self, base: Sampler, size: int, cache: Path | None, seed: int = 0, describe: str = ""):
        super().__init__(base.config, seed)
        from tqdm import tqdm

        from distill.metrics import dnsmos_ovrl_window

        chunk = 64
        parts = [base.batch(i, min(chunk, size - i * chunk), stream=2) for i in tqdm(range(-(-size // chunk)), desc="pool: mixing", leave=False)]
        self.noisy = np.concatenate([p[0] for p in parts]).astype(np.float16)  # half the memory; ample for 16-bit audio
        self.clean = np.concatenate([p[1] for p in parts]).astype(np.float16)
        key = hashlib.sha1(f"{describe}|{base.config}|{base.seed}|{size}".encode()).hexdigest()[:16]
        path = Path(cache) / f"ovrl_{key}.npy" if cache else None
        if path is not None and path.is_file():
            self.ovrl = np.load(path)
        else:
            scores = [dnsmos_ovrl_window(self.noisy[i : i + chunk].astype(np.float32)) for i in tqdm(range(0, size, chunk), desc="pool: DNSMOS", leave=False)]
            self.ovrl = np.concatenate(scores)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                np.save(path, self.ovrl)

    def batch(self, step: int, size: int, stream: int = 0):
        idx = np.random.default_rng([self.seed, stream, step]).integers(len(self.noisy), size=size)
        return self.noisy[idx].astype(np.float32), self.clean[idx].astype(np.float32), self.ovrl[idx]


# ---------------------------------------------------------------- procedural audio for tests


def synth_speech(rng: np.random.Generator, length: int, sample_rate: int = 16000) -> np.ndarray:
    """Speech-like bursts: a gliding harmonic source with a formant-like spectral tilt, gated into
    syllables of 80-300 ms separated by pauses."""
    t = np.arange(length) / sample_rate
    f0 = rng.uniform(90, 240) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t + rng.uniform(0, 6.3)))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    formant = rng.uniform(400, 1200)
    voice = np.zeros(length)
    for k in range(1, 30):
        fk = k * f0
        amp = np.exp(-np.abs(fk - formant) / 800) / k**0.5 * (fk < sample_rate / 2 - 200)
        voice += amp * np.sin(k * phase)
    envelope = np.zeros(length)
    pos = int(rng.integers(0, sample_rate // 10))
    while pos < length:
        dur = int(rng.uniform(0.08, 0.3) * sample_rate)
        seg = np.hanning(dur) if dur > 1 else np.ones(dur)
        end = min(pos + dur, length)
        envelope[pos:end] = seg[: end - pos] * rng.uniform(0.3, 1.0)
        pos = end + int(rng.uniform(0.02, 0.25) * sample_rate)
    x = voice * envelope
    return (x / (np.abs(x).max() + 1e-9) * 0.5).astype(np.float32)


def synth_noise(rng: np.random.Generator, length: int, sample_rate: int = 16000) -> np.ndarray:
    """Coloured noise (white to brown) with an optional mains-like hum."""
    white = rng.standard_normal(length)
    spec = np.fft.rfft(white)
    freqs = np.fft.rfftfreq(length, 1 / sample_rate)
    spec /= np.maximum(freqs, 20.0) ** rng.uniform(0, 1)  # 0: white, 0.5: pink, 1: brown
    x = np.fft.irfft(spec, n=length)
    if rng.random() < 0.5:
        t = np.arange(length) / sample_rate
        x += np.std(x) * rng.uniform(0.2, 1) * np.sin(2 * np.pi * rng.choice([50.0, 60.0, 120.0]) * t)
    return (x / (np.abs(x).max() + 1e-9) * 0.5).astype(np.float32)


class SyntheticSampler(Sampler):
    """Procedural speech-like signals mixed with procedural noise: no files needed."""

    def example(self, rng):
        c = self.config
        return self._mix(rng, synth_speech(rng, c.length, c.sample_rate), synth_noise(rng, c.length, c.sample_rate))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m distill.data", description="Corpus tools.")
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("index", help="scan a folder of audio once and write its index, which --clean/--noise/--rir and the dev-set renderer take in its place")
    i.add_argument("folder", type=Path)
    i.add_argument("--out", type=Path, help="the index, a .jsonl file (default: FOLDER/index.jsonl); its paths are relative to its own folder")
    i.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    out = args.out or args.folder / "index.jsonl"
    if not is_index(out):
        print(f"error: --out {out}: an index file name ends in .jsonl (that is how training tells an index from a folder)", file=sys.stderr)
        return 2
    if not out.parent.is_dir():
        print(f"error: --out {out}: folder {out.parent} does not exist", file=sys.stderr)
        return 2
    try:
        files, hours, skipped = write_index(args.folder, out, progress=not args.no_progress)
    except (AudioError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path, why in skipped:
        print(f"skipped {path}: unreadable ({why})", file=sys.stderr)
    print(f"indexed {files} files ({hours:.2f} h) of {args.folder} in {out}" + (f"; skipped {len(skipped)} unreadable files (listed above)" if skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
