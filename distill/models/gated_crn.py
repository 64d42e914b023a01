"""Dynamically slimmable causal CRN: an always-on trunk plus gated branches, chosen per frame.

The trunk is a narrow CRN (the same layers as ``crn.py``). Each of the ``branches`` gated branches
adds channels to every encoder and decoder layer and a group to the bottleneck GRU, and adds its
own term to the output ``z``. A branch reads the trunk's activations but the trunk never reads a
branch (block-triangular weights), so the trunk is complete on its own and every branch can be
skipped for a frame without changing it: exported, the trunk and each branch are separate graphs
and a device runs only the branches the policy enables.

Per frame t with gate g_k(t) in {0, 1}: a skipped branch outputs zeros everywhere (so its
convolutions see zeros as the previous frame next time) and its GRU group keeps its hidden state.
The policy, a small causal network on the frame's band energies and the trunk's GRU output,
emits one logit per branch. Training samples gates with a straight-through Gumbel-sigmoid.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from distill.dsp import StftConfig
from distill.models.crn import BoundedMask, CompressedFeatures, start_real
from distill.models.layers import CausalConv, GroupedGRU, fold_norms


@dataclass(frozen=True)
class GatedCRNConfig:
    stft: StftConfig = field(default_factory=StftConfig)
    channels: tuple[int, ...] = (6, 12, 16, 24, 24)  # trunk encoder widths; each layer halves the bins
    branch_channels: tuple[int, ...] = (4, 6, 8, 12, 12)  # widths each branch adds per layer
    branches: int = 2  # gated branches
    trunk_groups: int = 2  # GRU groups of the trunk bottleneck
    policy_bands: int = 16  # band energies the policy sees
    policy_hidden: int = 16  # policy GRU width
    compress: float = 0.3
    slope: float = 0.2

    def __post_init__(self):
        if len(self.branch_channels) != len(self.channels):
            raise ValueError("branch_channels needs one width per trunk layer")
        if self.branches < 1:
            raise ValueError("a gated model needs at least one branch")


class Policy(nn.Module):
    """Per-frame gate logits from log band energies of the frame and the trunk's GRU output.

    Shape: forward: spec [B, T, F, 2], r [B, T, H] -> [B, T, K]; step: e [B, bands], r [B, H], h -> ([B, K], h)
    """

    def __init__(self, bins: int, trunk_width: int, bands: int, hidden: int, branches: int):
        super().__init__()
        self.bands, self.band_width = bands, (bins - 1) // bands
        self.proj = nn.Linear(bands + trunk_width, hidden)
        self.gru = GroupedGRU(hidden, hidden, 1)
        self.out = nn.Linear(hidden, branches)

    def energies(self, spec: torch.Tensor) -> torch.Tensor:
        power = spec.square().sum(-1)[..., : self.bands * self.band_width]  # [..., bands * width]
        power = power.unflatten(-1, (self.bands, self.band_width)).mean(-1)  # [..., bands]
        return torch.log10(power + 1e-8)

    def forward(self, spec, r):
        x = torch.relu(self.proj(torch.cat([self.energies(spec), r], dim=-1)))  # [B, T, hidden]
        y, _ = self.gru(x, self.gru.initial_state(x.shape[0]).to(x))
        return self.out(y)

    def step(self, e, r, h):
        """One frame from its band energies ``e`` [B, bands] (``energies(frame)``), taken apart so
        an exported policy graph needs no log."""
        return self.recur(torch.relu(self.proj(torch.cat([e, r], dim=-1))), h)

    def recur(self, x, h):
        """The GRU and output layer on the frame's projected input. Shape: x [B, hidden], h -> ([B, K], h)"""
        h = self.gru.step(x, h)  # [B, hidden]
        return self.out(h), h


class Branch(nn.Module):
    """One gated slice of every layer. Its encoder layer l reads the trunk's input to that layer
    and its own previous layer; its decoder reads the trunk's decoder input and its own."""

    def __init__(self, c: GatedCRNConfig, bins: list[int]):
        super().__init__()
        t, b = c.channels, c.branch_channels
        ins = [3] + [t[l - 1] + b[l - 1] for l in range(1, len(t))]
        self.encoder = nn.ModuleList(CausalConv(ins[l], b[l], bins[l]) for l in range(len(t)))
        self.enc_norms = nn.ModuleList(nn.BatchNorm2d(w) for w in b)
        self.skips = nn.ModuleList(nn.Conv2d(w, w, 1) for w in b)
        self.flat = b[-1] * bins[-1]
        self.gru = GroupedGRU(self.flat, self.flat, 1)
        outs = (2,) + tuple(b[:-1])
        self.decoder = nn.ModuleList(
            CausalConv(t[l] + b[l], outs[l], bins[l + 1], transpose=True, out_bins=bins[l]) for l in range(len(t))
        )
        start_real(self.decoder[0].conv, gain=0.0)  # adds about nothing to the trunk's pass-through at first
        self.dec_norms = nn.ModuleList(nn.BatchNorm2d(w) for w in outs[1:])
        self.width, self.bins = b[-1], bins[-1]


class GatedCRN(nn.Module):
    """Trunk + gated branches + policy.

    Shape:
        forward: spec [B, T, F, 2] -> (mask [B, T, F, 2], gates [B, T, K], logits [B, T, K])
        step: frame [B, F, 2], state -> (mask [B, F, 2], state); gates from the policy unless given
    """

    def __init__(self, config: GatedCRNConfig):
        super().__init__()
        self.config = c = config
        bins = [c.stft.bins]
        widths = (3,) + tuple(c.channels)
        self.encoder = nn.ModuleList()
        for cin, cout in zip(widths[:-1], widths[1:]):
            self.encoder.append(CausalConv(cin, cout, bins[-1]))
            bins.append(self.encoder[-1].out_bins)
        self.enc_norms = nn.ModuleList(nn.BatchNorm2d(ch) for ch in c.channels)
        self.skips = nn.ModuleList(nn.Conv2d(ch, ch, 1) for ch in c.channels)
        flat = c.channels[-1] * bins[-1]
        self.gru = GroupedGRU(flat, flat, c.trunk_groups)
        outs = (2,) + tuple(c.channels[:-1])
        self.decoder = nn.ModuleList(
            CausalConv(c.channels[l], outs[l], bins[l + 1], transpose=True, out_bins=bins[l]) for l in range(len(c.channels))
        )
        start_real(self.decoder[0].conv)
        self.dec_norms = nn.ModuleList(nn.BatchNorm2d(ch) for ch in outs[1:])
        self.branches = nn.ModuleList(Branch(c, bins) for _ in range(c.branches))
        self.policy = Policy(c.stft.bins, flat, c.policy_bands, c.policy_hidden, c.branches)
        self.act = nn.LeakyReLU(c.slope)
        self.features = CompressedFeatures(c.compress)
        self.bound = BoundedMask()
        self.bins = bins

    # ------------------------------------------------------------------ whole sequences

    def forward(self, spec: torch.Tensor, tau: float = 1.0, gates: torch.Tensor | None = None, detach_policy: bool = False):
        """Training/offline pass. Gates are sampled (straight-through Gumbel-sigmoid at temperature
        ``tau``) in training mode, thresholded at logit 0 in eval mode, or taken from ``gates``
        ([B, T, K] or broadcastable to it, e.g. [1, 1, K] for fixed gates). ``detach_policy``
        stops the policy's gradients (its cost and the straight-through gates) at
        the trunk output it reads, so that training the policy does not reshape the trunk."""
        B, T = spec.shape[:2]
        x = self.features(spec)  # [B, 3, T, F]
        enc_in = [x]  # input of every trunk encoder layer
        for l, (conv, norm) in enumerate(zip(self.encoder, self.enc_norms)):
            enc_in.append(self.act(norm(conv(enc_in[-1]))))  # [B, C_l, T, F_l]
        s = enc_in[-1]
        r, _ = self.gru(s.permute(0, 2, 1, 3).flatten(2), self.gru.initial_state(B).to(s))  # [B, T, C*F]
        logits = self.policy(spec, r.detach() if detach_policy else r)  # [B, T, K]
        if gates is None:
            gates = gumbel_gates(logits, tau) if self.training else (logits > 0).float()
        gates = gates.expand_as(logits)  # [B, T, K]
        u = r.unflatten(-1, (self.config.channels[-1], self.bins[-1])).permute(0, 2, 1, 3)  # [B, C_L, T, F_L]
        dec_in = [None] * len(self.decoder)
        for l in reversed(range(len(self.decoder))):
            dec_in[l] = u + self.skips[l](enc_in[l + 1])  # [B, C_l, T, F_l]
            u = self.decoder[l](dec_in[l])
            if l > 0:
                u = self.act(self.dec_norms[l - 1](u))
        z = u  # [B, 2, T, F]
        for k, branch in enumerate(self.branches):
            z = z + self._branch(branch, enc_in, dec_in, gates[..., k])
        return self.bound(z), gates, logits

    def _branch(self, br: Branch, enc_in: list, dec_in: list, g: torch.Tensor) -> torch.Tensor:
        on = g[:, None, :, None]  # [B, 1, T, 1]
        own, b = [], None
        for l, (conv, norm) in enumerate(zip(br.encoder, br.enc_norms)):
            inp = enc_in[0] if l == 0 else torch.cat([enc_in[l], b], dim=1)
            b = self.act(norm(conv(inp))) * on  # [B, Cb_l, T, F_l]
            own.append(b)
        y, _ = br.gru(b.permute(0, 2, 1, 3).flatten(2), br.gru.initial_state(b.shape[0]).to(b), gate=g)
        v = y.unflatten(-1, (br.width, br.bins)).permute(0, 2, 1, 3)  # [B, Cb_L, T, F_L]
        for l in reversed(range(len(br.decoder))):
            e = (v + br.skips[l](own[l])) * on
            v = br.decoder[l](torch.cat([dec_in[l], e], dim=1))
            v = (self.act(br.dec_norms[l - 1](v)) if l > 0 else v) * on
        return v  # [B, 2, T, F]

    # ------------------------------------------------------------------ streaming

    def state_names(self) -> tuple[str, ...]:
        L = len(self.encoder)
        trunk = [f"enc{i}_prev" for i in range(L)] + [f"dec{i}_prev" for i in range(L)] + ["gru_h", "policy_h"]
        own = [*(f"enc{i}_prev" for i in range(1, L)), *(f"dec{i}_prev" for i in range(L)), "gru_h"]
        branch = [f"b{k}_{n}" for k in range(len(self.branches)) for n in own]
        return tuple(trunk + branch)

    def initial_state(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        return self.trunk_state(batch) + sum((self.branch_state(k, batch) for k in range(len(self.branches))), ())

    def trunk_state(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        """Zero state of the trunk and then of the policy (``policy_h``, last)."""
        convs = [m.initial_state(batch) for m in self.encoder] + [m.initial_state(batch) for m in self.decoder]
        return tuple(convs) + (self.gru.initial_state(batch), self.policy.gru.initial_state(batch))

    def branch_state(self, k: int, batch: int = 1) -> tuple[torch.Tensor, ...]:
        """Zero state of branch k: the previous frame of its own channels at the input of encoder
        layers 1..L-1 (layer 0 reads only the trunk's features) and of every decoder layer, then
        its GRU hidden."""
        b, L = self.config.branch_channels, len(self.encoder)
        enc = [torch.zeros(batch, b[l - 1], 1, self.bins[l]) for l in range(1, L)]
        dec = [torch.zeros(batch, b[l], 1, self.bins[l + 1]) for l in range(L)]
        return tuple(enc) + tuple(dec) + (self.branches[k].gru.initial_state(batch),)

    def trunk_step(self, x: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
        """The always-on part of one frame, from its features: its z term and the trunk's new state
        (conv inputs, then GRU hidden; the conv entries are also what the branches read as the
        trunk's current inputs, and the hidden is what the policy reads).

        Shape: x [B, 3, 1, F], state (no policy_h) -> (z [B, 2, 1, F], state)
        """
        L = len(self.encoder)
        enc_prev, dec_prev, h = state[:L], state[L : 2 * L], state[2 * L]
        new_enc, new_dec, skips = [], [None] * L, []
        for conv, norm, prev in zip(self.encoder, self.enc_norms, enc_prev):
            x, kept = conv.step(x, prev)
            x = self.act(norm(x))
            new_enc.append(kept)
            skips.append(x)
        h = self.gru.step(x.permute(0, 2, 1, 3).flatten(1), h)  # [B, C*F]
        u = h.view(-1, self.config.channels[-1], 1, self.bins[-1])  # [B, C_L, 1, F_L]
        for l in reversed(range(L)):
            u, new_dec[l] = self.decoder[l].step(u + self.skips[l](skips[l]), dec_prev[l])
            if l > 0:
                u = self.act(self.dec_norms[l - 1](u))
        return u, tuple(new_enc) + tuple(new_dec) + (h,)

    def branch_step(self, k: int, trunk_old: tuple, trunk_new: tuple, state: tuple) -> tuple[torch.Tensor, tuple]:
        """Branch k for one frame, given the trunk's state before and after ``trunk_step``.

        Shape: -> (z_k [B, 2, 1, F], state)
        """
        br, L = self.branches[k], len(self.encoder)
        enc_prev, dec_prev, h = state[: L - 1], state[L - 1 : 2 * L - 1], state[2 * L - 1]
        new_enc, new_dec, own = [], [None] * L, []
        b = None
        for l, (conv, norm) in enumerate(zip(br.encoder, br.enc_norms)):
            if l == 0:  # reads only the trunk's features
                cur, prev = trunk_new[0], trunk_old[0]
            else:
                cur = torch.cat([trunk_new[l], b], dim=1)
                prev = torch.cat([trunk_old[l], enc_prev[l - 1]], dim=1)
                new_enc.append(b)
            y, _ = conv.step(cur, prev)
            b = self.act(norm(y))  # [B, Cb_l, 1, F_l]
            own.append(b)
        h = br.gru.step(b.permute(0, 2, 1, 3).flatten(1), h)
        v = h.view(-1, br.width, 1, br.bins)
        for l in reversed(range(L)):
            e = v + br.skips[l](own[l])
            prev = torch.cat([trunk_old[L + l], dec_prev[l]], dim=1)
            v, _ = br.decoder[l].step(torch.cat([trunk_new[L + l], e], dim=1), prev)
            new_dec[l] = e
            if l > 0:
                v = self.act(br.dec_norms[l - 1](v))
        return v, tuple(new_enc) + tuple(new_dec) + (h,)

    def skipped(self, k: int, state: tuple) -> tuple:
        """Branch k's state after a frame it did not run: its outputs were zero, its GRU kept."""
        return tuple(torch.zeros_like(s) for s in state[:-1]) + (state[-1],)

    def step(self, frame: torch.Tensor, state: tuple, gates: torch.Tensor | None = None):
        """One frame with hard gates (from the policy's logits > 0 unless ``gates`` [B, K] given):
        trunk, then policy, then the enabled branches, the order an exported model runs in."""
        nt = 2 * len(self.encoder) + 1
        nb = 2 * len(self.encoder)
        trunk, hp = state[:nt], state[nt]
        z, new_trunk = self.trunk_step(self.features(frame.unsqueeze(1)), trunk)
        logits, hp = self.policy.step(self.policy.energies(frame), new_trunk[-1], hp)
        g = (logits > 0).float() if gates is None else gates
        out = [*new_trunk, hp]
        for k in range(len(self.branches)):
            bs = state[nt + 1 + k * nb : nt + 1 + (k + 1) * nb]
            zk, run = self.branch_step(k, trunk, new_trunk, bs)
            skip = self.skipped(k, bs)
            on = g[:, k].view(-1, 1, 1, 1)
            z = z + on * zk
            out += [torch.where(on.view(-1, *[1] * (r.dim() - 1)) > 0, r, s) for r, s in zip(run, skip)]
        return self.bound(z)[:, 0], tuple(out)

    def fold_batchnorm(self) -> "GatedCRN":
        """A copy in eval mode with every BatchNorm folded into its convolution."""
        m = copy.deepcopy(self).eval()
        for part in [m, *m.branches]:
            fold_norms(part)
        return m


def parse_gates(text: str) -> tuple[float, ...]:
    """Fixed gates as written on command lines (``CKPT@1,0``): ``"1,0"`` -> (1., 0.), one 0 or 1
    per branch. Raises ValueError."""
    try:
        gates = tuple(float(g) for g in text.split(","))
    except ValueError:
        gates = ()
    if not gates or any(g not in (0.0, 1.0) for g in gates):
        raise ValueError(f"fixed gates are 0s and 1s separated by commas, one per branch; got {text!r}")
    return gates


def gumbel_gates(logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Hard 0/1 gates in the forward pass, the gradient of a Gumbel-sigmoid relaxation backward."""
    u = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
    soft = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / tau)
    return (soft > 0.5).float() - soft.detach() + soft
