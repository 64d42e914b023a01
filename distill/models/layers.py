"""Streaming building blocks shared by the models: every layer has a sequence ``forward`` and a
one-frame ``step`` that takes and returns its state explicitly."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval


class CausalConv(nn.Module):
    """Conv over frequency with a two-frame causal time kernel.

    The step stacks the previous input frame on the channel axis and runs a (1, 3) kernel over it:
    one plain convolution per frame, with the previous frame as explicit state. Over a sequence the
    same weights are viewed as a (2, 3) kernel on a time-padded input, which is the same arithmetic
    without copying every activation into a stacked tensor (twice as fast to train). Stride 2 over
    frequency halves the bins (``transpose=False``) or doubles them back (``transpose=True``, with
    ``out_bins`` fixing odd/even rounding).

    Shape:
        forward: x [B, C_in, T, F_in] -> [B, C_out, T, F_out]
        step: x [B, C_in, 1, F_in], prev [B, C_in, 1, F_in] -> ([B, C_out, 1, F_out], x)
    """

    def __init__(self, cin: int, cout: int, in_bins: int, transpose: bool = False, out_bins: int | None = None):
        super().__init__()
        self.cin, self.in_bins = cin, in_bins
        if transpose:
            pad = out_bins - (2 * in_bins - 1)
            if pad not in (0, 1):
                raise ValueError(f"cannot upsample {in_bins} bins to {out_bins}")
            self.conv = nn.ConvTranspose2d(2 * cin, cout, (1, 3), stride=(1, 2), padding=(0, 1), output_padding=(0, pad))
            self.out_bins = out_bins
        else:
            self.conv = nn.Conv2d(2 * cin, cout, (1, 3), stride=(1, 2), padding=(0, 1))
            self.out_bins = (in_bins - 1) // 2 + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, w = self.conv, self.conv.weight
        if isinstance(c, nn.ConvTranspose2d):
            # [2*C_in, C_out, 1, 3] -> [C_in, C_out, 2, 3]; time tap 0 acts on x[t], tap 1 on x[t-1]
            w = w.view(2, self.cin, -1, 1, 3).flip(0).permute(1, 2, 0, 3, 4).reshape(self.cin, -1, 2, 3)
            y = F.conv_transpose2d(x, w, c.bias, stride=c.stride, padding=c.padding, output_padding=c.output_padding)
            return y[:, :, :-1]  # [B, C_out, T, F_out]; the extra frame would need x[T]
        # [C_out, 2*C_in, 1, 3] -> [C_out, C_in, 2, 3]; time tap 0 acts on x[t-1], tap 1 on x[t]
        w = w.view(-1, 2, self.cin, 1, 3).transpose(1, 2).reshape(-1, self.cin, 2, 3)
        return F.conv2d(F.pad(x, (0, 0, 1, 0)), w, c.bias, stride=c.stride, padding=c.padding)  # [B, C_out, T, F_out]

    def step(self, x: torch.Tensor, prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.conv(torch.cat([prev, x], dim=1)), x  # [B, C_out, 1, F_out]

    def initial_state(self, batch: int = 1) -> torch.Tensor:
        return torch.zeros(batch, self.cin, 1, self.in_bins)


class GroupedGRU(nn.Module):
    """A GRU split into ``groups`` independent cells over equal slices of input and hidden vectors.

    Written from Linear ops (the equations of ``torch.nn.GRU``, reset gate applied after the hidden
    projection) because exporters mishandle ``nn.GRU``, ONNX Runtime does not quantise it and
    TFLite Micro has no GRU op. The sequence path batches the groups' recurrent matmuls into one
    ``baddbmm`` per frame; the step path calls each group's Linear layers, which is what exports.

    An optional per-frame ``gate`` (1 on, 0 off) skips the update: a gated-off frame keeps the
    hidden state and outputs zeros. Without a gate every frame updates, as in a plain GRU.

    Shape:
        forward: x [B, T, I], h [B, H], gate [B, T] -> (y [B, T, H], h [B, H])
        step: x [B, I], h [B, H] -> h [B, H]   (the output is the new hidden state)
    """

    def __init__(self, input_size: int, hidden_size: int, groups: int):
        super().__init__()
        if input_size % groups or hidden_size % groups:
            raise ValueError(f"GRU sizes {input_size}/{hidden_size} are not divisible by {groups} groups")
        self.groups, self.hidden_size = groups, hidden_size
        gi, gh = input_size // groups, hidden_size // groups
        self.ih = nn.ModuleList(nn.Linear(gi, 3 * gh) for _ in range(groups))
        self.hh = nn.ModuleList(nn.Linear(gh, 3 * gh) for _ in range(groups))

    @staticmethod
    def cell(xi: torch.Tensor, hh: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One GRU update from the input projection ``xi`` and hidden projection ``hh`` (both 3*h wide)."""
        xr, xz, xn = xi.chunk(3, dim=-1)
        hr, hz, hn = hh.chunk(3, dim=-1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return n + z * (h - n)

    def forward(self, x: torch.Tensor, h: torch.Tensor, gate: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, _ = x.shape
        P, gh = self.groups, self.hidden_size // self.groups
        xi = torch.stack([ih(xg) for ih, xg in zip(self.ih, x.chunk(P, dim=-1))])  # [P, B, T, 3gh]
        w = torch.stack([hh.weight.t() for hh in self.hh])  # [P, gh, 3gh]
        b = torch.stack([hh.bias for hh in self.hh]).unsqueeze(1)  # [P, 1, 3gh]
        h = h.view(B, P, gh).transpose(0, 1)  # [P, B, gh]
        gates = gate.t().reshape(T, 1, B, 1).unbind(0) if gate is not None else [None] * T  # T x [1, B, 1]
        ys = []
        for xt, g in zip(xi.unbind(dim=2), gates):  # unbind, not indexing: indexing backprops a full-size zero tensor per frame
            new = self.cell(xt, torch.baddbmm(b, h, w), h)  # [P, B, gh]
            if g is None:
                h = new
                ys.append(h)
            else:
                h = g * new + (1 - g) * h
                ys.append(g * h)
        y = torch.stack(ys, dim=2)  # [P, B, T, gh]
        y = y.permute(1, 2, 0, 3).reshape(B, T, P * gh)  # [B, T, H]
        return y, h.transpose(0, 1).reshape(B, P * gh)

    def step(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        P = self.groups
        if P == 1:  # no one-piece split: litert-torch 0.10 cannot lower it
            return self.cell(self.ih[0](x), self.hh[0](h), h)  # [B, H]
        hs = [
            self.cell(ih(xg), hh(hg), hg)  # [B, gh]
            for ih, hh, xg, hg in zip(self.ih, self.hh, x.chunk(P, dim=-1), h.chunk(P, dim=-1))
        ]
        return torch.cat(hs, dim=-1)  # [B, H]

    def initial_state(self, batch: int = 1) -> torch.Tensor:
        return torch.zeros(batch, self.hidden_size)


def fold_norms(part: nn.Module) -> None:
    """Fold, in place, the BatchNorm after every encoder conv and before every decoder conv but the
    first into that conv (eval mode). ``part`` has ``encoder``, ``enc_norms``, ``decoder``, ``dec_norms``."""
    for l, conv in enumerate(part.encoder):
        conv.conv = fuse_conv_bn_eval(conv.conv, part.enc_norms[l])
        part.enc_norms[l] = nn.Identity()
    for l in range(1, len(part.decoder)):
        part.decoder[l].conv = fuse_conv_bn_eval(part.decoder[l].conv, part.dec_norms[l - 1], transpose=True)
        part.dec_norms[l - 1] = nn.Identity()


def erb_weights(bins: int, low: int, bands: int, sample_rate: int) -> torch.Tensor:
    """Triangular bands equally spaced on the ERB-rate scale (Glasberg & Moore: 21.4 log10(1 +
    0.00437 f)) whose centres run from bin ``low`` to the last bin: linear interpolation weights,
    so every bin's weights sum to one. Raises if two centres are closer than one bin (a band
    would see no bin of its own).

    Shape: -> [bands, bins - low]
    """
    hz = sample_rate / 2 / (bins - 1)  # bin spacing
    ends = torch.tensor([low, bins - 1], dtype=torch.float64) * hz  # [2] Hz
    lo, hi = 21.4 * torch.log10(1 + 0.00437 * ends)  # ERB rate of the first and last centre
    centres = (10 ** (torch.linspace(lo, hi, bands, dtype=torch.float64) / 21.4) - 1) / 0.00437 / hz  # [bands] fractional bins
    if (centres[1:] - centres[:-1]).min() < 1:
        raise ValueError(f"{bands} ERB bands above bin {low} are narrower than one bin at the bottom; use fewer bands or a higher erb_low")
    f = torch.arange(low, bins, dtype=torch.float64)  # [N]
    k = torch.searchsorted(centres, f, right=True).clamp(1, bands - 1)  # [N] upper neighbour centre
    frac = (f - centres[k - 1]) / (centres[k] - centres[k - 1])  # [N] 0 at the lower centre, 1 at the upper
    w = torch.zeros(bands, bins - low, dtype=torch.float64)
    cols = torch.arange(bins - low)
    w[k - 1, cols] = 1 - frac
    w[k, cols] += frac
    return w.float()


class BandMatrix(nn.Module):
    """A fixed (non-trainable) linear map over the upper part of the frequency axis: the first
    ``keep`` bins pass unchanged, the rest are multiplied by ``weight``. Band merging (bins ->
    bands) and its synthesis (bands -> bins) are one of these each.

    Shape: x [B, C, T, keep + weight.shape[1]] -> [B, C, T, keep + weight.shape[0]]
    """

    def __init__(self, weight: torch.Tensor, keep: int):
        super().__init__()
        self.keep = keep
        self.register_buffer("weight", weight)  # [out, in]; in the state dict, so a checkpoint carries its grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A 1x1 convolution with frequency as channels: litert-torch 0.10 folds the reshapes around a
        # linear layer on 4-D input into a rank-4 BATCH_MATMUL, which TFLite rejects.
        hi = x[..., self.keep :].transpose(1, 3)  # [B, in, T, C]
        y = F.conv2d(hi, self.weight[:, :, None, None]).transpose(1, 3)  # [B, C, T, out]
        return torch.cat([x[..., : self.keep], y], dim=-1)  # [B, C, T, keep + out]


class SubbandUnfold(nn.Module):
    """Each bin also carries its ``k - 1`` nearest neighbours as channels (zero beyond the edges):
    GTCRN's subband feature extraction, a copy without arithmetic.

    Shape: x [B, C, T, F] -> [B, k * C, T, F]
    """

    def __init__(self, k: int):
        super().__init__()
        if k < 3 or k % 2 == 0:
            raise ValueError(f"subband width must be odd and at least 3, got {k}")
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[-1]
        p = F.pad(x, (self.k // 2, self.k // 2))  # [B, C, T, F + k - 1]
        return torch.cat([p[..., i : i + n] for i in range(self.k)], dim=1)  # [B, k*C, T, F]
