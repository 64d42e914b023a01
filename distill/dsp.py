"""Signal contract and the STFT pair every stage agrees on.

Frame ``t`` covers input samples ``[t*hop - (win - hop), t*hop + hop)``: the signal is preceded by
``win - hop`` zeros, exactly like a streaming analysis buffer that starts empty. Overlap-add of the
synthesis frames therefore reproduces the input delayed by nothing once the leading padding is cut,
and a streaming engine that emits ``hop`` samples per frame lags the input by ``win`` samples.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class StftConfig:
    sample_rate: int = 16000  # Hz; everything else is resampled to this at the edges
    n_fft: int = 320  # 20 ms at 16 kHz -> 161 bins
    win_length: int = 320  # analysis = synthesis window length
    hop: int = 160  # 10 ms frame advance
    window: str = "sqrt_hann"  # periodic; analysis and synthesis, so their product is a Hann

    def __post_init__(self):
        if any(not isinstance(v, int) or v < 1 for v in (self.sample_rate, self.n_fft, self.win_length, self.hop)):
            raise ValueError("sample_rate, n_fft, win_length and hop must be positive integers")
        if self.window != "sqrt_hann":
            raise ValueError(f"unsupported window {self.window!r}; only 'sqrt_hann' is implemented")
        if self.win_length > self.n_fft or self.win_length % self.hop:
            raise ValueError("win_length must be <= n_fft and a multiple of hop")

    @property
    def bins(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def latency_ms(self) -> float:
        """Algorithmic latency of analysis + overlap-add (no model look-ahead)."""
        return 1000.0 * self.win_length / self.sample_rate

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop

    def num_frames(self, length: int) -> int:
        """Frames needed so that every one of ``length`` samples is fully overlap-added."""
        return math.ceil(length / self.hop) + self.win_length // self.hop - 1


def window(cfg: StftConfig, dtype=torch.float32) -> torch.Tensor:
    """Analysis/synthesis window, scaled so that overlap-add of window**2 sums to one."""
    w = torch.hann_window(cfg.win_length, periodic=True, dtype=torch.float64).sqrt()
    ola = (w**2).sum() / cfg.hop  # constant overlap-add gain of the squared window
    return (w / ola.sqrt()).to(dtype)


def stft(x: torch.Tensor, cfg: StftConfig) -> torch.Tensor:
    """Real signal to spectrum with re/im in the last axis.

    Shape:
        x: [B, L] -> [B, T, F, 2] with T = cfg.num_frames(L), F = cfg.bins.
    """
    B, L = x.shape
    T = cfg.num_frames(L)
    pad_left = cfg.win_length - cfg.hop
    pad_right = (T - 1) * cfg.hop + cfg.win_length - pad_left - L
    x = F.pad(x, (pad_left, pad_right))  # [B, (T-1)*hop + win]
    frames = x.unfold(-1, cfg.win_length, cfg.hop)  # [B, T, win]
    frames = frames * window(cfg, x.dtype)
    spec = torch.fft.rfft(frames, n=cfg.n_fft)  # [B, T, F] complex
    return torch.view_as_real(spec)  # [B, T, F, 2]


def istft(spec: torch.Tensor, cfg: StftConfig, length: int) -> torch.Tensor:
    """Inverse of :func:`stft` by overlap-add, cut back to ``length`` samples.

    Shape:
        spec: [B, T, F, 2] -> [B, length]
    """
    B, T = spec.shape[:2]
    frames = torch.fft.irfft(torch.view_as_complex(spec.contiguous()), n=cfg.n_fft)  # [B, T, n_fft]
    frames = frames[..., : cfg.win_length] * window(cfg, frames.dtype)  # [B, T, win]
    total = (T - 1) * cfg.hop + cfg.win_length
    y = F.fold(
        frames.transpose(1, 2),  # [B, win, T]
        output_size=(1, total),
        kernel_size=(1, cfg.win_length),
        stride=(1, cfg.hop),
    ).reshape(B, total)  # [B, total]
    start = cfg.win_length - cfg.hop
    return y[:, start : start + length]


def apply_mask(spec: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Complex multiplication of a spectrum by a mask, re/im in the last axis.

    Shape: spec, mask [..., 2] -> [..., 2]
    """
    sr, si = spec.unbind(-1)
    mr, mi = mask.unbind(-1)
    return torch.stack([sr * mr - si * mi, sr * mi + si * mr], dim=-1)


def enhance(model: torch.nn.Module, wav: torch.Tensor, **forward) -> torch.Tensor:
    """Offline enhancement over whole signals with ``model.forward`` (given ``forward``'s
    keyword arguments, e.g. a gated model's fixed ``gates``).

    Shape: wav [B, L] -> [B, L]
    """
    cfg = model.config.stft
    spec = stft(wav, cfg)  # [B, T, F, 2]
    return istft(apply_mask(spec, predict_mask(model, spec, **forward)), cfg, wav.shape[-1])


def predict_mask(model: torch.nn.Module, spec: torch.Tensor, **forward) -> torch.Tensor:
    """``model.forward``'s mask. Shape: spec [B, T, F, 2] -> [B, T, F, 2]"""
    out = model(spec, **forward)
    return out[0] if isinstance(out, tuple) else out  # gated models also return their gates and logits
