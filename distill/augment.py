"""Augmentation for the on-the-fly mixer: rooms, several noise sources, low-frequency noise, the
channel (EQ, band limits), level and clipping.

Every function draws from the ``rng`` it is given, so a mixture stays a function of
``(seed, step)`` and a resumed run sees exactly the batches an uninterrupted one would. Rooms come
from a :class:`RirBank`: measured impulse responses from a folder plus shoebox rooms simulated once
with pyroomacoustics and cached on disk, never per batch.
"""
from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import signal

from runtime.audio import AudioError, load

log = logging.getLogger("distill.augment")


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of each augmentation (0 turns one off)."""

    reverb: float = 0.5  # probability that the speech is heard in a room
    noise_room: float = 0.7  # given a room, probability that the noise is reverberant too (its own position)
    early_ms: float = 50.0  # the target keeps the direct path and the reflections of this many ms
    full_target: bool = False  # the target is the whole reverberant speech: the model learns no dereverberation
    sources: tuple[float, float] = (0.4, 0.15)  # probability of a second and of a third noise source
    source_gain_db: tuple[float, float] = (-12.0, 0.0)  # level of each extra source against the first
    envelope: float = 0.3  # probability of a random gain envelope (fades, bursts) on a noise source
    low: float = 0.2  # probability of added rumble, mains hum or a DC offset
    eq: float = 0.4  # probability of a random EQ: 1-3 shelf/peak filters of up to +-12 dB, input and target alike
    band: float = 0.1  # probability of a band limit (telephone band, or a low-pass at 3.4-7 kHz), input and target alike
    clip: float = 0.05  # probability that the input is driven 1-12 dB into clipping (the target is not)
    speech_highpass_hz: float = 40.0  # zero-phase high-pass of the clean speech: rumble below it is noise (0: off)

    def __post_init__(self):
        for name in ("reverb", "noise_room", "envelope", "low", "eq", "band", "clip"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"augment {name} is a probability, got {v}")
        if len(self.sources) != 2 or not all(0.0 <= p <= 1.0 for p in self.sources):
            raise ValueError(f"augment sources are two probabilities, got {self.sources}")


NONE = AugmentConfig(reverb=0, noise_room=0, sources=(0, 0), envelope=0, low=0, eq=0, band=0, clip=0, speech_highpass_hz=0)


# ---------------------------------------------------------------- rooms


def direct_index(rir: np.ndarray) -> int:
    """Sample of the direct path: the first sample within 6 dB of the largest peak (the largest
    peak can be a strong early reflection)."""
    a = np.abs(rir)
    return int(np.argmax(a >= 0.5 * a.max()))


def trim_rir(rir: np.ndarray, sample_rate: int, lead_ms: float = 2.5) -> np.ndarray:
    """Cut ``lead_ms`` before the direct path (keeps simulated fractional-delay ringing) and scale
    the direct path to unit peak, so rooms differ in reverberation, not in gain or delay."""
    d = direct_index(rir)
    start = max(0, d - int(lead_ms * sample_rate / 1000))
    rir = rir[start:].astype(np.float32)
    return rir / (np.abs(rir[d - start]) + 1e-12)


def early(rir: np.ndarray, sample_rate: int, ms: float) -> np.ndarray:
    """The direct path and the reflections that arrive within ``ms`` of it, with a 5 ms fade so
    the cut adds no click to the target."""
    end = direct_index(rir) + int(ms * sample_rate / 1000)
    fade = max(1, int(0.005 * sample_rate))
    out = rir[: end + fade].copy()
    if len(out) > end:
        out[end:] *= np.cos(0.5 * np.pi * np.arange(len(out) - end) / fade)
    return out


@dataclass(frozen=True)
class RoomConfig:
    """Shoebox rooms simulated by the image-source method (pyroomacoustics)."""

    rooms: int = 200  # rooms in the bank; each has a speech and a noise position
    seed: int = 0  # another seed gives other rooms (the out-of-domain dev set uses one)
    rt60: tuple[float, float] = (0.1, 1.0)  # uniform range of reverberation times, s
    size: tuple[tuple[float, float], ...] = ((3.0, 10.0), (2.5, 8.0), (2.4, 4.0))  # length, width, height ranges, m
    distance: tuple[float, float] = (0.5, 3.0)  # source-to-microphone distance, m
    max_order: int = 40  # image-source order cap: the part of a long tail it misses is added as decaying noise
    seconds: float = 1.2  # RIR length kept


def simulate_room(rng: np.random.Generator, cfg: RoomConfig, sample_rate: int) -> tuple[np.ndarray, np.ndarray, float]:
    """One shoebox room: impulse responses from a speech and a noise position to one microphone,
    trimmed by :func:`trim_rir`, and the room's RT60. Where the image-source order cap cuts the
    tail short, the missing tail is filled with noise decaying at the room's RT60.

    Shape: -> ([N_s], [N_n], rt60)
    """
    import pyroomacoustics as pra

    rt60 = float(rng.uniform(*cfg.rt60))
    dims = np.array([rng.uniform(*r) for r in cfg.size])
    try:
        absorption, order = pra.inverse_sabine(rt60, dims)
    except ValueError:  # the room is too large for this RT60 with any absorption: make it livelier
        absorption, order = 0.05, cfg.max_order
    room = pra.ShoeBox(dims, fs=sample_rate, materials=pra.Material(absorption), max_order=min(order, cfg.max_order))
    margin = 0.4
    mic = np.array([rng.uniform(margin, d - margin) for d in dims[:2]] + [rng.uniform(0.7, min(1.8, dims[2] - margin))])
    for _ in range(2):
        room.add_source(_position(rng, mic, dims, margin, cfg.distance))
    room.add_microphone(mic)
    room.compute_rir()
    n = int(cfg.seconds * sample_rate)
    out = []
    for rir in (room.rir[0][0], room.rir[0][1]):
        rir = trim_rir(np.asarray(rir, np.float64), sample_rate)[:n]
        out.append(_extend_tail(rng, rir, rt60, sample_rate, n))
    return out[0], out[1], rt60


def _position(rng, mic, dims, margin, distance):
    for _ in range(100):
        d = rng.uniform(*distance)
        v = rng.standard_normal(3)
        v[2] *= 0.2  # talkers and noise sources sit near the microphone's height
        p = mic + d * v / np.linalg.norm(v)
        if np.all(p > margin) and np.all(p < dims - margin):
            return p
    return np.array([rng.uniform(margin, x - margin) for x in dims])


def _extend_tail(rng, rir: np.ndarray, rt60: float, sample_rate: int, n: int) -> np.ndarray:
    """Continue a tail that stops early with Gaussian noise decaying by 60 dB per ``rt60``,
    starting at the level of the last 20 ms."""
    out = np.zeros(n, np.float32)
    out[: len(rir)] = rir
    tail = int(0.02 * sample_rate)
    last = len(rir)
    while last > tail and np.abs(rir[last - 1]) < 1e-8:
        last -= 1
    expected_end = int(min(n, rt60 * sample_rate))
    if last >= expected_end or last <= tail:
        return out
    level = np.sqrt(np.mean(rir[last - tail : last] ** 2))
    t = np.arange(n - last) / sample_rate
    out[last:] += (level * 10 ** (-3 * t / rt60) * rng.standard_normal(n - last)).astype(np.float32)
    return out


class RirBank:
    """Rooms to draw from: measured impulse responses (each used for speech, the noise getting
    another room's) and simulated rooms (a speech and a noise position each).

    ``RirBank.build`` simulates the rooms once and caches them in ``cache`` under a key of the
    room settings and sample rate, so later runs (and resumed ones) load the same rooms at once.
    """

    def __init__(self, measured: list[np.ndarray], simulated: list[tuple[np.ndarray, np.ndarray]], names: list[str] | None = None):
        if not measured and not simulated:
            raise AudioError("the room bank is empty: give --rir DIR or --rooms N > 0")
        self.measured, self.simulated = measured, simulated
        self.names = names or []

    def __len__(self) -> int:
        return len(self.measured) + len(self.simulated)

    @classmethod
    def build(cls, files: list[Path] | None, rooms: RoomConfig, sample_rate: int, cache: str | Path | None) -> "RirBank":
        """Measured impulse responses from ``files`` (trimmed to their direct path) and the
        simulated rooms of ``rooms``."""
        files = files or []
        measured = [trim_rir(load(path, sample_rate), sample_rate) for path in files]
        return cls(measured, simulated_rooms(rooms, sample_rate, cache), [path.name for path in files])

    def pick(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A room: the speech's impulse response and the noise's."""
        k = int(rng.integers(len(self)))
        if k < len(self.simulated):
            return self.simulated[k]
        other = int(rng.integers(len(self)))
        noise = self.simulated[other][1] if other < len(self.simulated) else self.measured[other - len(self.simulated)]
        return self.measured[k - len(self.simulated)], noise


def simulated_rooms(cfg: RoomConfig, sample_rate: int, cache: str | Path | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """``cfg.rooms`` simulated rooms, loaded from ``cache`` when simulated before."""
    if cfg.rooms == 0:
        return []
    key = hashlib.sha1(f"{asdict(cfg)}|{sample_rate}|v1".encode()).hexdigest()[:16]
    path = Path(cache) / f"rooms_{key}.npz" if cache else None
    if path is not None and path.is_file():
        z = np.load(path)
        return list(zip(z["speech"], z["noise"]))
    from tqdm import tqdm

    rng = np.random.default_rng([cfg.seed, 7])
    speech, noise = [], []
    for _ in tqdm(range(cfg.rooms), desc="simulating rooms", leave=False):
        s, n, _ = simulate_room(rng, cfg, sample_rate)
        speech.append(s)
        noise.append(n)
    speech, noise = np.stack(speech), np.stack(noise)  # [R, N]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part.npz")
        np.savez(tmp, speech=speech, noise=noise)
        tmp.replace(path)  # atomic: an interrupted simulation leaves no half-written bank
        log.info("cached %d simulated rooms in %s", cfg.rooms, path)
    return list(zip(speech, noise))


def reverberate(x: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """``x`` convolved with ``rir``, cut to ``len(x)`` (the room's delay is removed by trim_rir)."""
    return signal.fftconvolve(x, rir)[: len(x)].astype(np.float32)


# ---------------------------------------------------------------- noise


def loop(x: np.ndarray, length: int, start: int, fade: int) -> np.ndarray:
    """``length`` samples of ``x`` repeated from offset ``start``, each join an equal-power
    crossfade of ``fade`` samples, so looping a short noise adds no click.

    Shape: x [N] -> [length]
    """
    fade = min(fade, len(x) // 4)
    if fade < 2:
        return np.tile(x, math.ceil((length + start) / len(x)) + 1)[start : start + length]
    period = len(x) - fade
    reps = math.ceil((length + start + fade) / period) + 1
    ramp = np.sin(0.5 * np.pi * (np.arange(fade) + 0.5) / fade)
    win = np.ones(len(x))
    win[:fade], win[-fade:] = ramp, ramp[::-1]
    out = np.zeros(reps * period + fade)
    for k in range(reps):
        out[k * period : k * period + len(x)] += x * win
    start = fade + start % period  # past the fade-in of the first copy
    return out[start : start + length].astype(np.float32)


def envelope(rng: np.random.Generator, length: int, sample_rate: int) -> np.ndarray:
    """A gain envelope: piecewise linear in dB through 2-8 random knots between -25 and 0 dB, so a
    source fades in and out or comes and goes.

    Shape: -> [length]
    """
    knots = int(rng.integers(2, 9))
    t = np.sort(np.concatenate([[0, length - 1], rng.uniform(0, length - 1, knots - 2)]))
    db = rng.uniform(-25, 0, knots)
    return (10 ** (np.interp(np.arange(length), t, db) / 20)).astype(np.float32)


def low_noise(rng: np.random.Generator, length: int, sample_rate: int) -> np.ndarray:
    """Rumble (brown noise below 20-120 Hz), mains hum (50 or 60 Hz and harmonics) or a DC offset
    with a slow drift: what clean speech never has below its fundamental.

    Shape: -> [length] (unit RMS)
    """
    kind = int(rng.integers(3))
    t = np.arange(length) / sample_rate
    if kind == 0:
        sos = signal.butter(4, rng.uniform(20, 120), "lowpass", fs=sample_rate, output="sos")
        x = signal.sosfilt(sos, np.cumsum(rng.standard_normal(length + sample_rate)))[sample_rate:]
        x = x - x.mean()
    elif kind == 1:
        f0 = rng.choice([50.0, 60.0]) * (1 + rng.uniform(-0.01, 0.01))
        x = sum(rng.uniform(0, 1) / h * np.sin(2 * np.pi * h * f0 * t + rng.uniform(0, 2 * np.pi)) for h in range(1, 6))
    else:
        x = 1.0 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.05, 0.5) * t + rng.uniform(0, 2 * np.pi))
    return (x / (np.sqrt(np.mean(np.square(x))) + 1e-12)).astype(np.float32)


# ---------------------------------------------------------------- channel


def _biquad(kind: str, f0: float, gain_db: float, q: float, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Peak or shelf filter coefficients (the Audio EQ Cookbook formulas)."""
    a_ = 10 ** (gain_db / 40)
    w = 2 * np.pi * f0 / sample_rate
    cw, alpha = np.cos(w), np.sin(w) / (2 * q)
    if kind == "peak":
        b = [1 + alpha * a_, -2 * cw, 1 - alpha * a_]
        a = [1 + alpha / a_, -2 * cw, 1 - alpha / a_]
    else:
        s = 2 * np.sqrt(a_) * alpha
        sign = 1 if kind == "low" else -1
        b = [a_ * ((a_ + 1) - sign * (a_ - 1) * cw + s), sign * 2 * a_ * ((a_ - 1) - sign * (a_ + 1) * cw), a_ * ((a_ + 1) - sign * (a_ - 1) * cw - s)]
        a = [(a_ + 1) + sign * (a_ - 1) * cw + s, -sign * 2 * ((a_ - 1) + sign * (a_ + 1) * cw), (a_ + 1) + sign * (a_ - 1) * cw - s]
    return np.array(b) / a[0], np.array(a) / a[0]


def random_eq(rng: np.random.Generator, sample_rate: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """1-3 random filters: low shelf, high shelf or peak, +-12 dB: room, microphone and speaker colouring."""
    filters = []
    for _ in range(int(rng.integers(1, 4))):
        kind = ("low", "high", "peak")[int(rng.integers(3))]
        f0 = {"low": rng.uniform(80, 500), "high": rng.uniform(2000, 6000), "peak": np.exp(rng.uniform(np.log(150), np.log(6500)))}[kind]
        filters.append(_biquad(kind, f0, rng.uniform(-12, 12), rng.uniform(0.5, 2.0) if kind == "peak" else 0.707, sample_rate))
    return filters


def band_limit(rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """A telephone band (300-3400 Hz) or a low-pass at 3.4-7 kHz, as second-order sections."""
    if rng.random() < 0.5:
        return signal.butter(4, (300, 3400), "bandpass", fs=sample_rate, output="sos")
    return signal.butter(6, rng.uniform(3400, 7000), "lowpass", fs=sample_rate, output="sos")


def highpass(x: np.ndarray, hz: float, sample_rate: int) -> np.ndarray:
    """Zero-phase high-pass: no phase shift on the speech fundamentals above it."""
    sos = signal.butter(4, hz, "highpass", fs=sample_rate, output="sos")
    return signal.sosfiltfilt(sos, x).astype(np.float32)


def channel(rng: np.random.Generator, cfg: AugmentConfig, sample_rate: int, *signals: np.ndarray) -> list[np.ndarray]:
    """The same random EQ and band limit applied to each signal (noisy input and target alike: a
    mask cannot restore what the channel took away, so the target is what the channel passes)."""
    out = list(signals)
    if rng.random() < cfg.eq:
        for b, a in random_eq(rng, sample_rate):
            out = [signal.lfilter(b, a, x) for x in out]
    if rng.random() < cfg.band:
        sos = band_limit(rng, sample_rate)
        out = [signal.sosfilt(sos, x) for x in out]
    return [np.asarray(x, np.float32) for x in out]
