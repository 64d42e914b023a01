"""The streaming engine: framing, one model step per hop, overlap-add, state; any backend.

Everything about the signal comes from the bundle's manifest. ``process(block)`` takes any number
of samples and returns every output sample completed so far, so block sizes do not change the
output; the output lags the input by ``delay`` samples (window minus hop) plus the part of a hop
still being collected. ``flush()`` pushes the rest out, ``reset()`` starts a new stream.

With ``band_gain`` the engine also says, per output sample, how much the model kept of the upper
half of its band (4-8 kHz at 16 kHz): per frame the amplitude ratio of enhanced to noisy energy
there, overlap-added with the squared window exactly as the frames' audio is, so the curve lines up
with the output sample for sample. ``Enhancer`` applies it to the band above the model's.
"""
from __future__ import annotations

import time

import numpy as np
from scipy import fft

from runtime.backends import Runner
from runtime.bundle import Bundle


def sqrt_hann(win: int, hop: int) -> np.ndarray:
    """Periodic sqrt-Hann, scaled so that overlap-add of its square sums to one."""
    w = np.sqrt(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win))
    return (w / np.sqrt((w**2).sum() / hop)).astype(np.float32)


class Engine:
    """Streams float32 16 kHz mono audio through a bundle model.

    ``atten_limit_db`` limits how much the model may suppress: the mask becomes
    ``g + (1 - g) * mask`` with ``g = 10 ** (-atten_limit_db / 20)``, i.e. a fraction ``g`` of the
    noisy signal is always kept (a two-stage bundle's enhanced spectrum Y becomes ``g X + (1 - g) Y``). ``band_gain``: after each ``process``, ``gains`` holds one gain
    per returned sample (see the module's docstring).
    """

    def __init__(self, bundle: Bundle, runner: Runner, atten_limit_db: float | None = None, band_gain: bool = False):
        sig = bundle.signal  # checked by Bundle: sqrt-Hann, positive integer sizes
        self.runner = runner
        self.rate, self.hop, self.win, self.n_fft = sig["sample_rate"], sig["hop"], sig["win_length"], sig["n_fft"]
        self.delay = self.win - self.hop
        self.latency_ms = float(sig["latency_ms"])
        self.macs_per_frame = int(bundle.manifest["model"]["macs_per_frame"])
        self.window = sqrt_hann(self.win, self.hop)
        self.weight = self.window**2  # overlap-adds to one
        self.band_gain = band_gain
        self.gain_bins = slice(sig["bins"] // 2, sig["bins"])
        self.gains = np.zeros(0, np.float32)
        self.floor = 0.0 if atten_limit_db is None else float(10 ** (-atten_limit_db / 20))
        self.identity = np.zeros((sig["bins"], 2), np.float32)
        self.identity[:, 0] = 1.0
        self.masked = runner.returns == "mask"  # else the runner returns the enhanced spectrum
        self.times_ns = np.zeros(1 << 16, np.int64)  # per-frame compute time, grown by doubling
        self.reset()

    def reset(self) -> None:
        self.frame = np.zeros(self.win, np.float32)  # analysis buffer; its last hop fills up
        self.fill = 0
        self.ola = np.zeros(self.win, np.float32)
        self.gain_ola = np.zeros(self.win, np.float32)
        self.states = self.runner.initial_state()
        self.runner.reset_usage()
        self.frames = 0
        self.nonfinite_samples = 0
        self.state_resets = 0

    def process(self, block: np.ndarray) -> np.ndarray:
        """Shape: block [N] -> [k * hop] (every hop of output completed by this block); with
        ``band_gain``, ``gains`` [k * hop] beside it."""
        block = np.asarray(block, dtype=np.float32).reshape(-1)
        bad = ~np.isfinite(block)
        if bad.any():
            self.nonfinite_samples += int(bad.sum())
            block = np.where(bad, np.float32(0), block)
        hop, head = self.hop, self.win - self.hop
        out = np.empty(((self.fill + len(block)) // hop) * hop, np.float32)
        gains = np.empty(len(out) if self.band_gain else 0, np.float32)
        pos = 0
        for k in range(len(out) // hop):
            take = hop - self.fill
            self.frame[head + self.fill :] = block[pos : pos + take]
            pos += take
            self.fill = 0
            self._step(out[k * hop : (k + 1) * hop], gains[k * hop : (k + 1) * hop])
            self.frame[:head] = self.frame[hop:]
        rest = len(block) - pos
        self.frame[head + self.fill : head + self.fill + rest] = block[pos:]
        self.fill += rest
        self.gains = gains
        return out

    def _step(self, out: np.ndarray, gains: np.ndarray) -> None:
        t0 = time.perf_counter_ns()
        spec = fft.rfft(self.frame * self.window, self.n_fft)  # complex64 [F]
        self.last_frame = spec.view(np.float32).reshape(-1, 2)  # [F, 2]: kept for benchmarks to replay
        res, states = self.runner(self.last_frame, self.states)
        if not np.isfinite(res).all():  # a corrupted state would keep producing garbage
            states = self.runner.initial_state()
            res = self.identity if self.masked else self.last_frame
            self.state_resets += 1
        self.states = states
        res = np.ascontiguousarray(res, dtype=np.float32).view(np.complex64)[:, 0]
        if self.masked:
            m = self.floor + (1 - self.floor) * res if self.floor else res
            enhanced = spec * m
        else:  # the runner's result is the enhanced spectrum itself (a two-stage bundle)
            enhanced = self.floor * spec + (1 - self.floor) * res if self.floor else res
        y = fft.irfft(enhanced, self.n_fft)[: self.win] * self.window
        self.ola += y
        out[:] = self.ola[: self.hop]
        self.ola[: -self.hop] = self.ola[self.hop :]
        self.ola[-self.hop :] = 0
        if self.band_gain:
            power = np.abs(spec[self.gain_bins]) ** 2  # [F / 2]
            noisy, kept = float(power.sum()), float((np.abs(enhanced[self.gain_bins]) ** 2).sum())
            self.gain_ola += (np.sqrt(kept / noisy) if noisy > 1e-20 else 1.0) * self.weight
            gains[:] = self.gain_ola[: self.hop]
            self.gain_ola[: -self.hop] = self.gain_ola[self.hop :]
            self.gain_ola[-self.hop :] = 0
        if self.frames == len(self.times_ns):
            self.times_ns = np.concatenate([self.times_ns, np.zeros_like(self.times_ns)])
        self.times_ns[self.frames] = time.perf_counter_ns() - t0
        self.frames += 1

    def flush(self) -> np.ndarray:
        """Zeros through the pipeline until every sample given so far has come out."""
        return self.process(np.zeros((self.hop - self.fill) % self.hop + self.delay, np.float32))

    def run(self, signal: np.ndarray, block: int = 160) -> np.ndarray:
        """A whole signal in blocks, aligned to the input and cut to its length."""
        parts = [self.process(signal[i : i + block]) for i in range(0, len(signal), block)]
        y = np.concatenate([*parts, self.flush()])
        return y[self.delay : self.delay + len(signal)]

    def frame_times_us(self) -> np.ndarray:
        return self.times_ns[: self.frames] / 1e3
