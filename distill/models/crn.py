"""Causal convolutional recurrent network in the CRUSE style.

Encoder convolutions stride over frequency, a grouped GRU models time at the bottleneck, and a
mirrored decoder with additive (1x1-scaled) skips returns a bounded complex mask for the noisy
spectrum. One class covers the ~1.5 M-parameter teacher and the 20-150 k students.

Optionally (``erb_low``) the network runs on a coarser frequency grid, as GTCRN does: the lowest
bins stay as they are, the rest are merged into ERB-spaced bands by a fixed matrix before the
encoder, and the decoder's output is interpolated back to every bin by the fixed synthesis matrix
before the mask bound. ``subband`` also unfolds each band's neighbours into input channels.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from distill.dsp import StftConfig
from distill.models.layers import BandMatrix, CausalConv, GroupedGRU, SubbandUnfold, erb_weights, fold_norms


class CompressedFeatures(nn.Module):
    """Power-law compressed magnitude and compressed re/im, channels first. A module of its own so
    that exporters and quantisers can find (and keep in float) its pow/sqrt/div ops.

    Shape: spec [B, T, F, 2] -> [B, 3, T, F]
    """

    def __init__(self, power: float):
        super().__init__()
        self.power = power

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        mag = spec.square().sum(-1, keepdim=True).clamp_min(1e-12).sqrt()  # [B, T, F, 1]; clamp, not +eps: ONNX optimisers drop a tiny add
        comp = mag.pow(self.power)  # [B, T, F, 1]
        feats = torch.cat([comp, spec * (comp / mag)], dim=-1)  # [B, T, F, 3]
        return feats.permute(0, 3, 1, 2)  # [B, 3, T, F]


class BoundedMask(nn.Module):
    """Complex mask with magnitude tanh(|z|) and the phase of z.

    Shape: z [B, 2, T, F] -> [B, T, F, 2]
    """

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        r = z.square().sum(1, keepdim=True).clamp_min(1e-12).sqrt()  # [B, 1, T, F]
        return (z * (torch.tanh(r) / r)).permute(0, 2, 3, 1)  # [B, T, F, 2]


@torch.no_grad()
def start_real(conv: nn.Module, gain: float = 1.0, scale: float = 0.1) -> None:
    """Initialise the convolution whose (re, im) output channels feed ``BoundedMask`` so that the
    first masks are close to the real gain tanh(``gain``) on every bin.

    From a random start the mask's mean phase depends on the seed, and training settles on
    whichever side of the inverted output it starts: an output at -1 times the clean speech is a
    saddle of the spectral loss, and the network, which sets the sign of every bin through the
    same last layer, stays there (a student-erb-30k run reached +5.8 dB validation SI-SDR at a
    correlation of -0.85 with the clean speech). Starting as a pass-through puts every run on the
    right side."""
    conv.weight.mul_(scale)
    conv.bias.copy_(torch.tensor([gain, 0.0]))


@dataclass(frozen=True)
class CRNConfig:
    stft: StftConfig = field(default_factory=StftConfig)  # signal contract the model was trained on
    channels: tuple[int, ...] = (16, 32, 64, 64)  # encoder widths; each layer halves the bins
    rnn_groups: int = 4  # parallel GRUs at the bottleneck (CRUSE "P")
    rnn_layers: int = 2  # stacked grouped GRUs
    rnn_size: int | None = None  # GRU width; None keeps channels[-1] * bottleneck bins (no projection)
    compress: float = 0.3  # power-law exponent applied to the input magnitude
    slope: float = 0.2  # leaky-ReLU negative slope
    erb_low: int | None = None  # bins kept as they are below the ERB bands; None: no band merging, the encoder sees every bin
    erb_bands: int = 40  # ERB bands that bins erb_low .. last are merged into (used with erb_low)
    subband: int = 1  # bands unfolded into the input channels, centred (GTCRN's subband features); 1: none

    def __post_init__(self):
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must be positive, got {self.channels}")
        if self.rnn_layers < 1 or self.rnn_groups < 1:
            raise ValueError("rnn_layers and rnn_groups must be >= 1")
        if self.erb_low is not None and not (1 <= self.erb_low and 2 <= self.erb_bands < self.stft.bins - self.erb_low):
            limit = self.stft.bins - self.erb_low
            raise ValueError(f"erb_low={self.erb_low}, erb_bands={self.erb_bands}: need 1 <= erb_low and 2 <= erb_bands < {limit}")
        if self.subband < 1 or self.subband % 2 == 0:
            raise ValueError(f"subband must be odd and positive, got {self.subband}")

    @property
    def bands(self) -> int:
        """Frequency points the encoder's first layer sees."""
        return self.stft.bins if self.erb_low is None else self.erb_low + self.erb_bands


class CRN(nn.Module):
    """Causal CRN returning a complex mask bounded to magnitude < 1.

    Shape:
        forward: spec [B, T, F, 2] -> mask [B, T, F, 2]
        step: frame [B, F, 2], state -> (mask [B, F, 2], state)
    with re/im in the last axis and F = config.stft.bins. The encoder's first layer sees
    F_0 = config.bands points (F, or the bands after merging).
    """

    def __init__(self, config: CRNConfig):
        super().__init__()
        self.config = c = config
        if c.erb_low is None:
            self.merge = self.split = None
        else:
            w = erb_weights(c.stft.bins, c.erb_low, c.erb_bands, c.stft.sample_rate)  # [K, F - erb_low]
            self.merge = BandMatrix(w / w.sum(1, keepdim=True), c.erb_low)  # each band: weighted mean of its bins
            self.split = BandMatrix(w.t().contiguous(), c.erb_low)  # each bin: interpolated between its two band centres
        self.unfold = SubbandUnfold(c.subband) if c.subband > 1 else None
        bins = [c.bands]
        widths = (3 * c.subband,) + tuple(c.channels)  # input features: compressed magnitude, re, im (x subband)
        self.encoder = nn.ModuleList()
        for cin, cout in zip(widths[:-1], widths[1:]):
            conv = CausalConv(cin, cout, bins[-1])
            self.encoder.append(conv)
            bins.append(conv.out_bins)
        self.enc_norms = nn.ModuleList(nn.BatchNorm2d(ch) for ch in c.channels)
        self.skips = nn.ModuleList(nn.Conv2d(ch, ch, 1) for ch in c.channels)

        flat = c.channels[-1] * bins[-1]
        size = c.rnn_size or flat
        self.rnn_in = nn.Linear(flat, size) if c.rnn_size else None
        self.rnns = nn.ModuleList(GroupedGRU(size, size, c.rnn_groups) for _ in range(c.rnn_layers))
        self.rnn_out = nn.Linear(size, flat) if c.rnn_size else None

        outs = (2,) + tuple(c.channels[:-1])  # decoder level l maps channels[l] -> outs[l]
        self.decoder = nn.ModuleList(
            CausalConv(c.channels[l], outs[l], bins[l + 1], transpose=True, out_bins=bins[l]) for l in range(len(c.channels))
        )
        start_real(self.decoder[0].conv)
        self.dec_norms = nn.ModuleList(nn.BatchNorm2d(ch) for ch in outs[1:])
        self.act = nn.LeakyReLU(c.slope)
        self.features = CompressedFeatures(c.compress)
        self.bound = BoundedMask()
        self.bins = bins

    def _encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """Features on the encoder's grid: bands merged, neighbours unfolded.

        Shape: [B, 3, T, F] -> [B, 3 * subband, T, F_0]
        """
        if self.merge is not None:
            x = self.merge(x)  # [B, 3, T, F_0]
        if self.unfold is not None:
            x = self.unfold(x)  # [B, 3 * subband, T, F_0]
        return x

    def _to_bins(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output back on every bin. Shape: [B, 2, T, F_0] -> [B, 2, T, F]"""
        return z if self.split is None else self.split(z)

    def _bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """Flatten channels x bins per frame. Shape: [B, C, T, F] -> [B, T, C*F]"""
        B, C, T, F = x.shape
        return x.permute(0, 2, 1, 3).reshape(B, T, C * F)

    def _unflatten(self, y: torch.Tensor) -> torch.Tensor:
        """Shape: [B, T, C*F] -> [B, C, T, F]"""
        B, T, _ = y.shape
        return y.reshape(B, T, self.config.channels[-1], self.bins[-1]).permute(0, 2, 1, 3)

    def forward(self, spec: torch.Tensor, taps: bool = False):
        """Mask for a whole sequence; with ``taps``, also the activations by name (``enc{l}``,
        ``rnn``, ``dec{l}``: each [B, C, T, F], ``dec{l}`` on the grid of ``enc{l-1}``, ``dec0``
        on the encoder's input grid) for feature distillation."""
        acts = {}
        x = self._encoder_input(self.features(spec))  # [B, 3 * subband, T, F_0]
        skips = []
        for conv, norm in zip(self.encoder, self.enc_norms):
            x = self.act(norm(conv(x)))  # [B, C_l, T, F_l]
            skips.append(x)
            acts[f"enc{len(skips) - 1}"] = x
        y = self._bottleneck(x)  # [B, T, C*F]
        if self.rnn_in is not None:
            y = self.rnn_in(y)  # [B, T, H]
        for rnn in self.rnns:
            y, _ = rnn(y, rnn.initial_state(y.shape[0]).to(y))  # [B, T, H]
        if self.rnn_out is not None:
            y = self.rnn_out(y)  # [B, T, C*F]
        x = acts["rnn"] = self._unflatten(y)  # [B, C_L, T, F_L]
        for l in reversed(range(len(self.decoder))):
            x = self.decoder[l](x + self.skips[l](skips[l]))  # [B, C_{l-1}, T, F_{l-1}]
            if l > 0:
                x = self.act(self.dec_norms[l - 1](x))
            acts[f"dec{l}"] = x
        mask = self.bound(self._to_bins(x))  # [B, T, F, 2]
        return (mask, acts) if taps else mask

    @torch.no_grad()
    def negate_output(self) -> None:
        """Invert the polarity of the output in place. The mask bound is odd in z, so negating the
        last decoder convolution negates the mask, and so the enhanced signal, exactly: the repair
        for a model trained on a sign-blind loss (SI-SDR) that learned an inverted output."""
        self.decoder[0].conv.weight.neg_()
        self.decoder[0].conv.bias.neg_()

    def fold_batchnorm(self) -> "CRN":
        """A copy in eval mode with every BatchNorm folded into the convolution before it; same
        outputs, fewer ops to export and quantise."""
        m = copy.deepcopy(self).eval()
        fold_norms(m)
        return m

    def initial_state(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        """Zero state: previous input frame of every encoder and decoder conv, then GRU hiddens."""
        convs = [m.initial_state(batch) for m in self.encoder] + [m.initial_state(batch) for m in self.decoder]
        return tuple(convs) + tuple(r.initial_state(batch) for r in self.rnns)

    def state_names(self) -> tuple[str, ...]:
        n_enc, n_dec = len(self.encoder), len(self.decoder)
        return (
            tuple(f"enc{i}_prev" for i in range(n_enc))
            + tuple(f"dec{i}_prev" for i in range(n_dec))
            + tuple(f"gru{i}_h" for i in range(len(self.rnns)))
        )

    def step(self, frame: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        z, state = self.core_step(self.features(frame.unsqueeze(1)), state)  # [B, 2, 1, F]
        return self.bound(z)[:, 0], state  # [B, F, 2]

    def core_step(self, x: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The network between the feature transform and the mask bound, one frame: what an
        integer-only export runs while the float feature/bound arithmetic stays outside.

        Shape: x [B, 3, 1, F] -> z [B, 2, 1, F]
        """
        x = self._encoder_input(x)  # [B, 3 * subband, 1, F_0]
        n_enc, n_dec = len(self.encoder), len(self.decoder)
        enc_prev, dec_prev = state[:n_enc], state[n_enc : n_enc + n_dec]
        hidden = state[n_enc + n_dec :]
        new_enc, new_dec, new_h = [], [None] * n_dec, []
        skips = []
        for conv, norm, prev in zip(self.encoder, self.enc_norms, enc_prev):
            x, s = conv.step(x, prev)
            x = self.act(norm(x))  # [B, C_l, 1, F_l]
            new_enc.append(s)
            skips.append(x)
        y = self._bottleneck(x)[:, 0]  # [B, C*F]
        if self.rnn_in is not None:
            y = self.rnn_in(y)  # [B, H]
        for rnn, h in zip(self.rnns, hidden):
            y = rnn.step(y, h)  # [B, H]
            new_h.append(y)
        if self.rnn_out is not None:
            y = self.rnn_out(y)  # [B, C*F]
        x = self._unflatten(y.unsqueeze(1))  # [B, C_L, 1, F_L]
        for l in reversed(range(n_dec)):
            x, new_dec[l] = self.decoder[l].step(x + self.skips[l](skips[l]), dec_prev[l])
            if l > 0:
                x = self.act(self.dec_norms[l - 1](x))  # [B, C_{l-1}, 1, F_{l-1}]
        return self._to_bins(x), tuple(new_enc) + tuple(new_dec) + tuple(new_h)
