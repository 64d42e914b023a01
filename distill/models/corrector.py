"""Causal MeanFlow corrector (MeCo): the average velocity u(z_t, r, t | est, noisy) of a flow from
clean speech (t = 0) to a student's estimate (t = 1), in the power-law compressed complex STFT
domain |X|^c e^{j angle X} (c = ``compress``, the project's 0.3).

Per frame the network sees six values per bin: re/im of the flow state z_t, of the student's
estimate and of the noisy input, all compressed. Fourier features of t and of the interval
Delta = t - r pass through a small MLP whose output shifts every encoder and decoder layer (a
per-channel bias). The body is the CRN's: causal convolutions striding over frequency, a grouped
GRU over time at the bottleneck, a mirrored decoder with 1x1-scaled additive skips; the output is
the unbounded velocity (re/im per bin). No normalisation layers: batch statistics would mix
different t within a batch, and the EMA copy of the weights would have to average them too.

At inference the corrector runs once per frame at (r, t) = (t_eps, 1), where ``step``'s defaults
put it: x = z_1 - (1 - t_eps) u(z_1, t_eps, 1) with z_1 = est + sigma_max * eps (or eps = 0).
The path and the losses are in :mod:`distill.meanflow`.

``predict`` chooses what the last layer gives. "velocity" (MeCo's): u itself. "clean": a
correction d of the student's estimate, the network's clean speech being est + d, and
u = (z_t - est - d) / t, the average velocity towards it from z_t (exact for r = 0 on the
straight path, where z_t - x = t v). The path noise at t = 1, z_1 - est = sigma_max eps, then
passes through in closed form, so with d = 0 (the initial layer) the one-step output is the
estimate plus t_eps * sigma_max * eps under either eps, where "velocity" must learn to cancel
the noise bin by bin.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from distill.dsp import StftConfig
from distill.models.layers import CausalConv, GroupedGRU

INPUTS = 3  # spectra per frame: flow state z_t, student estimate, noisy input (re/im each)
PREDICTS = ("velocity", "clean")


@dataclass(frozen=True)
class CorrectorConfig:
    stft: StftConfig = field(default_factory=StftConfig)  # the student's signal contract
    channels: tuple[int, ...] = (8, 16, 24, 32, 32)  # encoder widths; each layer halves the bins
    rnn_groups: int = 4  # parallel GRUs at the bottleneck
    rnn_layers: int = 1  # stacked grouped GRUs
    features: int = 8  # Fourier frequencies per time input (t and Delta): pi * k, k = 1 .. features
    embed: int = 32  # width of the time embedding shared by all layers
    compress: float = 0.3  # power-law exponent of the flow's domain
    sigma_min: float = 0.0  # path noise at t = 0 (clean end)
    sigma_max: float = 0.487  # path noise at t = 1 (student end; MeCo's value)
    t_eps: float = 0.03  # training draws t in (t_eps, 1]; the one-step inference jumps from 1 to t_eps
    predict: str = "velocity"  # what the last layer gives: "velocity" (u, MeCo's) or "clean" (a correction of the estimate)

    def __post_init__(self):
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must be positive, got {self.channels}")
        if self.rnn_layers < 1 or self.rnn_groups < 1 or self.features < 1 or self.embed < 1:
            raise ValueError("rnn_layers, rnn_groups, features and embed must be >= 1")
        if not 0 < self.compress <= 1:
            raise ValueError(f"compress must be in (0, 1], got {self.compress}")
        if self.sigma_min < 0 or self.sigma_max < 0:
            raise ValueError("sigma_min and sigma_max must be >= 0")
        if not 0 < self.t_eps < 1:
            raise ValueError(f"t_eps must be in (0, 1), got {self.t_eps}")
        if self.predict not in PREDICTS:
            raise ValueError(f"predict must be one of {PREDICTS}, got {self.predict!r}")


# Named widths, so quality can be set against corrector size (the student's preset is "s"'s body).
SIZES: dict[str, dict] = {
    "xs": dict(channels=(4, 8, 12, 16, 16), rnn_groups=2, embed=16),
    "s": dict(channels=(8, 16, 24, 32, 32), rnn_groups=4, embed=32),
    "m": dict(channels=(16, 32, 48, 64, 64), rnn_groups=4, embed=64),
}


class TimeEmbedding(nn.Module):
    """Fourier features of t and of Delta = t - r, each through its own linear layer, summed, then
    one more layer: smooth in both, so the finite-difference JVP of training sees no kinks. The
    frequencies are harmonics of pi (not octaves): fine enough to tell t apart over [0, 1] while
    the third derivative, which sets a central difference's error, stays small.

    Shape: r, t [B] -> [B, embed]
    """

    def __init__(self, features: int, width: int):
        super().__init__()
        self.register_buffer("freqs", math.pi * torch.arange(1, features + 1, dtype=torch.float32), persistent=False)
        self.t_in = nn.Linear(2 * features, width)
        self.d_in = nn.Linear(2 * features, width)
        self.out = nn.Linear(width, width)
        self.act = nn.SiLU()

    def _fourier(self, s: torch.Tensor) -> torch.Tensor:
        a = s[:, None] * self.freqs  # [B, K]
        return torch.cat([a.sin(), a.cos()], dim=-1)  # [B, 2K]

    def forward(self, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.act(self.t_in(self._fourier(t)) + self.d_in(self._fourier(t - r)))  # [B, E]
        return self.act(self.out(h))  # [B, E]


class Corrector(nn.Module):
    """Causal average-velocity network.

    Shape:
        forward: frames [B, T, F, 6], r [B], t [B] -> u [B, T, F, 2]
        step: frame [B, F, 6], state, r [B], t [B] -> (u [B, F, 2], state)
    The last axis of the input holds re/im of z_t, then of the student's estimate, then of the
    noisy input (compressed); ``pack`` builds it. ``step``'s r and t default to (t_eps, 1).
    """

    frame_width = 2 * INPUTS  # values per bin of one input frame (cost() probes a step with it)

    def __init__(self, config: CorrectorConfig):
        super().__init__()
        self.config = c = config
        bins = [c.stft.bins]
        widths = (2 * INPUTS,) + tuple(c.channels)
        self.encoder = nn.ModuleList()
        for cin, cout in zip(widths[:-1], widths[1:]):
            conv = CausalConv(cin, cout, bins[-1])
            self.encoder.append(conv)
            bins.append(conv.out_bins)
        self.skips = nn.ModuleList(nn.Conv2d(ch, ch, 1) for ch in c.channels)
        size = c.channels[-1] * bins[-1]
        self.rnns = nn.ModuleList(GroupedGRU(size, size, c.rnn_groups) for _ in range(c.rnn_layers))
        outs = (2,) + tuple(c.channels[:-1])  # decoder level l maps channels[l] -> outs[l]
        self.decoder = nn.ModuleList(
            CausalConv(c.channels[l], outs[l], bins[l + 1], transpose=True, out_bins=bins[l]) for l in range(len(c.channels))
        )
        self.embed = TimeEmbedding(c.features, c.embed)
        self.enc_shift = nn.ModuleList(nn.Linear(c.embed, ch) for ch in c.channels)
        self.dec_shift = nn.ModuleList(nn.Linear(c.embed, ch) for ch in outs[1:])
        self.act = nn.SiLU()
        self.bins = bins
        # A zero last layer (u = 0, or d = 0 for "clean"): the one-step output with eps = 0 is then the
        # student's estimate itself, so training starts from the student's quality rather than
        # from a random map of it.
        nn.init.zeros_(self.decoder[0].conv.weight)
        nn.init.zeros_(self.decoder[0].conv.bias)

    @staticmethod
    def pack(z: torch.Tensor, est: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
        """The network's input from its three spectra. Shape: 3 x [..., F, 2] -> [..., F, 6]"""
        return torch.cat([z, est, noisy], dim=-1)

    def _shifts(self, r: torch.Tensor, t: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-layer channel biases from the time embedding, each [B, C, 1, 1]."""
        e = self.embed(r, t)  # [B, E]
        enc = [lin(e)[:, :, None, None] for lin in self.enc_shift]
        dec = [lin(e)[:, :, None, None] for lin in self.dec_shift]
        return enc, dec

    def _bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """Shape: [B, C, T, F] -> [B, T, C*F]"""
        B, C, T, F = x.shape
        return x.permute(0, 2, 1, 3).reshape(B, T, C * F)

    def _unflatten(self, y: torch.Tensor) -> torch.Tensor:
        """Shape: [B, T, C*F] -> [B, C, T, F]"""
        B, T, _ = y.shape
        return y.reshape(B, T, self.config.channels[-1], self.bins[-1]).permute(0, 2, 1, 3)

    def forward(self, frames: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        enc_shift, dec_shift = self._shifts(r, t)
        x = frames.permute(0, 3, 1, 2)  # [B, 6, T, F]
        skips = []
        for conv, shift in zip(self.encoder, enc_shift):
            x = self.act(conv(x) + shift)  # [B, C_l, T, F_l]
            skips.append(x)
        y = self._bottleneck(x)  # [B, T, C*F]
        for rnn in self.rnns:
            y, _ = rnn(y, rnn.initial_state(y.shape[0]).to(y))  # [B, T, C*F]
        x = self._unflatten(y)  # [B, C_L, T, F_L]
        for l in reversed(range(len(self.decoder))):
            x = self.decoder[l](x + self.skips[l](skips[l]))  # [B, C_{l-1}, T, F_{l-1}]
            if l > 0:
                x = self.act(x + dec_shift[l - 1])
        return self._velocity(x.permute(0, 2, 3, 1), frames[..., 0:2], frames[..., 2:4], t[:, None, None, None])  # [B, T, F, 2]

    def _velocity(self, out: torch.Tensor, z: torch.Tensor, est: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """u from the last layer's output, per ``predict``; t broadcasts against the spectra."""
        if self.config.predict == "velocity":
            return out
        if isinstance(t, (int, float)) and t == 1:  # the inference point: no division in an exported graph's every frame
            return z - est - out
        return (z - est - out) / t

    def initial_state(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        """Zero state: previous input frame of every encoder and decoder conv, then GRU hiddens."""
        convs = [m.initial_state(batch) for m in self.encoder] + [m.initial_state(batch) for m in self.decoder]
        return tuple(convs) + tuple(r.initial_state(batch) for r in self.rnns)

    def state_names(self) -> tuple[str, ...]:
        return (
            tuple(f"enc{i}_prev" for i in range(len(self.encoder)))
            + tuple(f"dec{i}_prev" for i in range(len(self.decoder)))
            + tuple(f"gru{i}_h" for i in range(len(self.rnns)))
        )

    def step(self, frame: torch.Tensor, state: tuple[torch.Tensor, ...], r: torch.Tensor | None = None, t: torch.Tensor | None = None):
        B = frame.shape[0]
        r = frame.new_full((B,), self.config.t_eps) if r is None else r
        t = frame.new_ones(B) if t is None else t
        u, state = self.core_step(frame.permute(0, 2, 1).unsqueeze(2), state, self._shifts(r, t), t[:, None, None, None])  # [B, 2, 1, F]
        return u[:, :, 0].transpose(1, 2), state  # [B, F, 2]

    def core_step(self, x: torch.Tensor, state: tuple[torch.Tensor, ...], shifts: tuple[list[torch.Tensor], list[torch.Tensor]],
                  t: torch.Tensor | float = 1.0):
        """One frame of the network, channels first, with the time embedding's per-layer shifts
        given: at inference (r, t) is fixed, so an export computes them once and folds them in.

        Shape: x [B, 6, 1, F], shifts as ``_shifts``, t [B, 1, 1, 1] or a number -> (u [B, 2, 1, F], state)
        """
        inputs = x
        enc_shift, dec_shift = shifts
        n_enc, n_dec = len(self.encoder), len(self.decoder)
        enc_prev, dec_prev, hidden = state[:n_enc], state[n_enc : n_enc + n_dec], state[n_enc + n_dec :]
        new_enc, new_dec, new_h = [], [None] * n_dec, []
        skips = []
        for conv, shift, prev in zip(self.encoder, enc_shift, enc_prev):
            x, s = conv.step(x, prev)
            x = self.act(x + shift)  # [B, C_l, 1, F_l]
            new_enc.append(s)
            skips.append(x)
        y = self._bottleneck(x)[:, 0]  # [B, C*F]
        for rnn, h in zip(self.rnns, hidden):
            y = rnn.step(y, h)  # [B, C*F]
            new_h.append(y)
        x = self._unflatten(y.unsqueeze(1))  # [B, C_L, 1, F_L]
        for l in reversed(range(n_dec)):
            x, new_dec[l] = self.decoder[l].step(x + self.skips[l](skips[l]), dec_prev[l])
            if l > 0:
                x = self.act(x + dec_shift[l - 1])  # [B, C_{l-1}, 1, F_{l-1}]
        u = self._velocity(x, inputs[:, 0:2], inputs[:, 2:4], t)  # [B, 2, 1, F]
        return u, tuple(new_enc) + tuple(new_dec) + tuple(new_h)
