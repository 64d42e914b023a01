"""Denoise audio at any sample rate and channel count, as a stream or as a whole signal.

    from runtime import Enhancer

    enh = Enhancer(sample_rate=48000, channels=2)
    out = [enh.process(block) for block in blocks]  # float32 [n, 2] in, [m, 2] out, any n
    out.append(enh.flush())                         # in total exactly as many samples as went in

``process`` returns every output sample completed so far, aligned with the input (output sample i
is the enhanced input sample i), so the stream lags by the model's latency plus what resampling
holds back; ``flush`` returns the rest. Each channel runs through its own engine, with its own
model state. At the model's rate (16 kHz) blocks go straight to the engine. Other rates are
resampled to it and back with soxr's streaming resampler, whose output does not depend on how the
stream is cut into blocks, so neither does the Enhancer's.

Above the model's rate the band it cannot see (8 kHz up to the input's Nyquist frequency) is kept,
not dropped: high band = input - its low band taken down to 16 kHz and back up, scaled sample by
sample by how much the model kept of the upper half of its own band (4-8 kHz, where the noise is
most like the noise above 8 kHz; see ``Engine`` ``band_gain``) and added to the enhanced low band.
The gain curve comes out of the engine aligned with its audio, so the high band lines up with the
model's latency by construction. With the model doing nothing (``atten_limit_db=0``) the output is
the input. ``drop_high_band=True`` leaves the high band out.
"""
from __future__ import annotations

import math
import os

import numpy as np

from runtime import report
from runtime.backends import GATE_MODES, choose_backend, open_runner
from runtime.bundle import Bundle
from runtime.engine import Engine
from runtime.models import open_bundle


class Enhancer:
    """A bundle model with its backend, streaming at the caller's rate and channel count.

    ``model``: a shipped bundle's name (``default``, ``gated``), a bundle folder or a ``Bundle``.
    ``backend``: ``auto`` (the fastest measured that the bundle has at ``precision``: LiteRT, else
    ONNX Runtime), ``litert``, ``onnxruntime`` or ``pytorch``. ``precision``: ``fp32``, ``int8`` or
    ``int8io``. ``sample_rate``: the caller's (default: the model's). ``atten_limit_db``: suppress by
    at most this much. ``gates``: gated bundles only, see ``GatedRunner``. ``stages``: two-stage
    bundles only, ``all`` (the default) or ``student`` (the corrector bypassed), see ``ChainRunner``.
    """

    def __init__(
        self,
        model: str | os.PathLike | Bundle = "default",
        backend: str = "auto",
        precision: str = "fp32",
        sample_rate: int | None = None,
        channels: int = 1,
        atten_limit_db: float | None = None,
        threads: int = 1,
        gates: str = "policy",
        drop_high_band: bool = False,
        stages: str | None = None,
    ):
        if atten_limit_db is not None and not (math.isfinite(atten_limit_db) and atten_limit_db >= 0):
            raise ValueError(f"atten_limit_db must be a finite number of dB >= 0, not {atten_limit_db!r}")
        if gates not in GATE_MODES:
            raise ValueError(f"gates must be one of {', '.join(GATE_MODES)}, not {gates!r}")
        self.bundle = open_bundle(model)
        self.backend = choose_backend(self.bundle, backend, precision)
        self.precision, self.threads, self.atten_limit_db = precision, threads, atten_limit_db
        self.runner = open_runner(self.bundle, self.backend, precision, threads, gates, stages)
        self.model_rate = self.bundle.signal["sample_rate"]
        self.drop_high_band = drop_high_band
        self.rate, self.channels = self.model_rate, 1
        self.reset(sample_rate, channels)

    def reset(self, sample_rate: int | None = None, channels: int | None = None) -> None:
        """Start a new stream, at a new rate or channel count when given; the model stays loaded."""
        rate = self.rate if sample_rate is None else sample_rate
        channels = self.channels if channels is None else channels
        if not (isinstance(rate, (int, np.integer)) and rate > 0):
            raise ValueError(f"sample_rate must be a positive integer, not {rate!r}")
        if not (isinstance(channels, (int, np.integer)) and channels > 0):
            raise ValueError(f"channels must be a positive integer, not {channels!r}")
        self.rate, self.channels = int(rate), int(channels)
        self.split = self.rate > self.model_rate and not self.drop_high_band
        self.engines = [Engine(self.bundle, self.runner, self.atten_limit_db, band_gain=self.split) for _ in range(self.channels)]
        if self.rate != self.model_rate:
            import soxr  # only when resampling: a board fed at the model's rate does without it

            def stream(a, b):
                return soxr.ResampleStream(a, b, self.channels, dtype="float32", quality="HQ")

            self.down, self.up = stream(self.rate, self.model_rate), stream(self.model_rate, self.rate)
            if self.split:
                self.recon, self.cut_up = stream(self.model_rate, self.rate), stream(self.model_rate, self.rate)
        empty = np.zeros((0, self.channels), np.float32)
        self.pending, self.high = empty, empty  # input awaiting its low band; high band awaiting its output
        self.lead = self.engines[0].delay  # engine output before the first input sample, dropped
        self.given = self.emitted = self.low_given = self.low_out = 0
        self.nonfinite_samples = 0
        self.flat = self.channels == 1
        self.ended = False

    def process(self, block: np.ndarray) -> np.ndarray:
        """Shape: block [n, channels] (or [n] for mono) -> [m, channels] (or [m]), the output
        samples completed so far."""
        if self.ended:
            raise RuntimeError("flush() ended this stream; call reset() to start another")
        x = self._frames(block)
        self.given += len(x)
        low = x if self.rate == self.model_rate else self.down.resample_chunk(x)  # [k, C]
        if self.split:
            self._split(x, low, last=False)
        return self._out(low, last=False)

    def flush(self) -> np.ndarray:
        """The rest of the stream: with what ``process`` returned, exactly as many samples as it
        was given. Ends the stream (``reset`` starts another)."""
        empty = np.zeros((0, self.channels), np.float32)
        low = empty if self.rate == self.model_rate else self.down.resample_chunk(empty, last=True)
        if self.split:
            self._split(empty, low, last=True)
        out = self._out(low, last=True)
        self.ended = True
        return out

    def enhance(self, signal: np.ndarray, sample_rate: int | None = None, block: int | None = None) -> np.ndarray:
        """A whole signal (``[n]`` or ``[n, channels]``) as one stream, in blocks of ``block``
        samples (default: at once); the same output as any other blocks. Starts a new stream."""
        x = np.asarray(signal, dtype=np.float32)
        self.reset(sample_rate, 1 if x.ndim == 1 else x.shape[1])
        step = block or max(len(x), 1)
        parts = [self.process(x[i : i + step]) for i in range(0, len(x), step)]
        return np.concatenate([*parts, self.flush()])

    def _frames(self, block: np.ndarray) -> np.ndarray:
        """Shape: [n] or [n, C] -> [n, C] float32, NaN/Inf replaced by zeros (and counted) before
        resampling spreads them."""
        x = np.asarray(block, dtype=np.float32)
        flat = x.ndim == 1 and self.channels == 1
        if flat:
            x = x[:, None]
        if x.ndim != 2 or x.shape[1] != self.channels:
            raise ValueError(f"blocks must have shape [n, {self.channels}]{' or [n]' if self.channels == 1 else ''}, not {list(x.shape)}")
        self.flat = flat
        bad = ~np.isfinite(x)
        if bad.any():
            self.nonfinite_samples += int(bad.sum())
            x = np.where(bad, np.float32(0), x)
        return np.ascontiguousarray(x)

    def _split(self, x: np.ndarray, low: np.ndarray, last: bool) -> None:
        """Queue the high band: input minus its low band brought back to the input's rate."""
        self.pending = np.concatenate([self.pending, x])
        recon = self.recon.resample_chunk(low, last=last)  # [r, C], aligned with the input
        n = min(len(recon), len(self.pending))
        self.high = np.concatenate([self.high, self.pending[:n] - recon[:n]])
        self.pending = self.pending[n:]

    def _out(self, low: np.ndarray, last: bool) -> np.ndarray:
        ys, gains = [], []
        for c, e in enumerate(self.engines):
            y, g = e.process(low[:, c]), e.gains
            if last:
                y, g = np.concatenate([y, e.flush()]), np.concatenate([g, e.gains])
            ys.append(y)
            gains.append(g)
        self.low_given += len(low)
        y, g = np.stack(ys, 1), np.stack(gains, 1)  # [k, C] at the model's rate
        drop = min(self.lead, len(y))
        self.lead -= drop
        keep = self.low_given - self.low_out if last else len(y) - drop  # the engine's flush overshoots
        y, g = y[drop : drop + keep], g[drop : drop + keep]
        self.low_out += len(y)
        if self.rate != self.model_rate:
            y = self.up.resample_chunk(np.ascontiguousarray(y), last=last)  # [m, C]
            if self.split:
                # the cut (1 - gain) is resampled, not the gain: it is zero outside the stream, so
                # the stream's edges raise no resampling ripple where the model cuts nothing
                g = 1 - self.cut_up.resample_chunk(np.ascontiguousarray(1 - g), last=last)
                high = self.high[: len(y)]
                self.high = self.high[len(y) :]
                y = y + g * np.pad(high, ((0, len(y) - len(high)), (0, 0)))
        want = self.given - self.emitted  # resampling may end a sample or two off the input's length
        y = np.pad(y[:want], ((0, want - min(want, len(y))), (0, 0))) if last else y[:want]
        self.emitted += len(y)
        return y[:, 0] if self.flat else y

    @property
    def high_band(self) -> str:
        if self.rate <= self.model_rate:
            return f"none (input at or below the model's {self.model_rate} Hz)"
        if self.drop_high_band:
            return "dropped"
        return "kept, scaled by the model's gain in the upper half of its band"

    def report(self, audio_seconds: float | None = None, **extra) -> dict:
        """What the stream so far measured (see ``runtime.report``)."""
        seconds = self.given / self.rate if audio_seconds is None else audio_seconds
        return report.build(
            self.engines, self.backend, self.precision, self.threads, seconds,
            nonfinite_samples_replaced=self.nonfinite_samples + sum(e.nonfinite_samples for e in self.engines), sample_rate=self.rate, channels=self.channels,
            channel_processing="each channel enhanced on its own (own model state)", high_band=self.high_band, **extra,
        )  # fmt: skip
