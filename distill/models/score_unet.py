"""Score-based (diffusion) enhancer: a small U-Net over the compressed complex spectrogram,
conditioned on the noise level, as EDM's preconditioned denoiser of the OUVE SDE (:mod:`distill.sde`).

A generative teacher, not a streaming model: the U-Net sees the whole utterance (its 3x3 convolutions
look ahead in time, and each level halves time and frequency), so it has no ``step``. It enhances
whole signals through :meth:`ScoreUNet.enhance`, with the N-step predictor-corrector sampler (a
score teacher) or in one network evaluation (a consistency-distilled student, ROSE-CD); the config
says which, along with the SDE it was trained on.

The network's input is the noisy spectrum y and the diffusion state x_t, both in SGMSE's spectral
transform |X|^compress * scale with the phase kept, computed on a waveform scaled to a peak of one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from distill import sde as sdes
from distill.dsp import StftConfig, istft, stft


@dataclass(frozen=True)
class ScoreUNetConfig:
    stft: StftConfig = field(default_factory=StftConfig)  # signal contract the model was trained on
    compress: float = 0.5  # spectral transform: magnitude ** compress ...
    scale: float = 0.15  # ... times scale, phase kept (SGMSE's defaults)
    channels: tuple[int, ...] = (16, 32, 64)  # width per level; each level after the first halves time and frequency
    blocks: int = 1  # residual blocks per level on the way down (and up)
    emb: int = 64  # width of the noise-level embedding
    groups: int = 4  # GroupNorm groups (fewer where a width is not divisible)
    theta: float = 1.5  # OUVE SDE, see distill.sde.OUVE
    sigma_min: float = 0.05
    sigma_max: float = 0.5
    t_max: float = 1.0
    t_eps: float = 0.03
    sigma_data: float = 0.1  # EDM preconditioning: standard deviation assumed of the clean compressed spectrum
    c_in: str = "edm"  # input scaling: "edm" (1 / sqrt(sigma^2 + sigma_data^2)) or "1" (none: ROSE-CD's students)
    sampler: str = "pc"  # what enhance() runs: "pc" (predictor-corrector over `steps` times) or "one-step" (D(x_T, y, T))
    steps: int = 30  # pc: reverse steps (each 1 + corrector_steps network evaluations)
    snr: float = 0.5  # pc: Langevin corrector's signal-to-noise ratio
    corrector_steps: int = 1  # pc: Langevin steps per reverse step

    def __post_init__(self):
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must be positive, got {self.channels}")
        if self.blocks < 1 or self.emb < 2 or self.emb % 2 or self.groups < 1:
            raise ValueError("blocks >= 1, an even emb >= 2 and groups >= 1 are needed")
        if not (self.compress > 0 and self.scale > 0 and self.sigma_data > 0):
            raise ValueError("compress, scale and sigma_data must be positive")
        if self.c_in not in ("edm", "1"):
            raise ValueError(f"c_in must be 'edm' or '1', got {self.c_in!r}")
        if self.sampler not in sdes.SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(sdes.SAMPLERS)}, got {self.sampler!r}")
        if self.steps < 1 or self.corrector_steps < 0 or self.snr <= 0:
            raise ValueError("steps >= 1, corrector_steps >= 0 and snr > 0 are needed")
        _ = self.sde  # OUVE checks its own parameters

    @property
    def sde(self) -> sdes.OUVE:
        return sdes.OUVE(self.theta, self.sigma_min, self.sigma_max, self.t_max, self.t_eps)

    @property
    def nfe(self) -> int:
        """Network evaluations of one enhancement with the configured sampler."""
        return sdes.nfe(self.sampler, self.steps, self.corrector_steps)

    @property
    def multiple(self) -> int:
        """Frames and bins are padded to a multiple of this (each level halves them)."""
        return 2 ** (len(self.channels) - 1)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(channels, groups), channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the noise-level embedding added in between, and a residual path.
    The second convolution starts at zero, so every block starts as the identity.

    Shape: x [B, C_in, T, F], e [B, E] -> [B, C_out, T, F]
    """

    def __init__(self, cin: int, cout: int, emb: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin, groups), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb, cout)
        self.norm2, self.conv2 = _norm(cout, groups), nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.emb(e)[:, :, None, None]  # [B, C_out, T, F]
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class NoiseEmbedding(nn.Module):
    """Sinusoids of c_noise at geometrically spaced frequencies, then a two-layer MLP.

    Shape: c_noise [B] -> [B, E]
    """

    def __init__(self, emb: int):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(1000.0), emb // 2)), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(emb, emb), nn.SiLU(), nn.Linear(emb, emb), nn.SiLU())

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        a = c_noise[:, None] * self.freqs  # [B, E/2]
        return self.mlp(torch.cat([a.sin(), a.cos()], dim=-1))


class ScoreUNet(nn.Module):
    """EDM-preconditioned denoiser of the OUVE SDE over compressed spectra.

    Shape:
        forward: x_t, y [B, T, F, 2], t [B] -> D [B, T, F, 2] (estimate of the marginal mean)
        enhance: wav [B, L] -> [B, L]
    """

    def __init__(self, config: ScoreUNetConfig):
        super().__init__()
        self.config = c = config
        ch, e, g = c.channels, c.emb, c.groups
        self.embed = NoiseEmbedding(e)
        self.stem = nn.Conv2d(4, ch[0], 3, padding=1)  # x_t and y, re/im each
        self.down = nn.ModuleList(
            nn.ModuleList(ResBlock(ch[l], ch[l], e, g) for _ in range(c.blocks)) for l in range(len(ch))
        )
        self.downsample = nn.ModuleList(nn.Conv2d(ch[l], ch[l + 1], 3, stride=2, padding=1) for l in range(len(ch) - 1))
        self.mid = ResBlock(ch[-1], ch[-1], e, g)
        self.upsample = nn.ModuleList(nn.Conv2d(ch[l + 1], ch[l], 3, padding=1) for l in range(len(ch) - 1))
        self.up = nn.ModuleList(
            nn.ModuleList(ResBlock(2 * ch[l] if b == 0 else ch[l], ch[l], e, g) for b in range(c.blocks)) for l in range(len(ch))
        )
        self.head = nn.Sequential(_norm(ch[0], g), nn.SiLU(), nn.Conv2d(ch[0], 2, 3, padding=1))

    def network(self, x: torch.Tensor, y: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        """The raw U-Net F, on inputs already scaled by c_in.

        Shape: x, y [B, T, F, 2], c_noise [B] -> [B, T, F, 2]
        """
        B, T, Fq, _ = x.shape
        m = self.config.multiple
        h = torch.cat([x, y], dim=-1).permute(0, 3, 1, 2)  # [B, 4, T, F]
        h = F.pad(h, (0, -Fq % m, 0, -T % m))  # [B, 4, T', F'], multiples of m
        e = self.embed(c_noise)  # [B, E]
        h = self.stem(h)  # [B, C_0, T', F']
        skips = []
        for l, blocks in enumerate(self.down):
            for block in blocks:
                h = block(h, e)
            skips.append(h)  # [B, C_l, T'/2^l, F'/2^l]
            if l < len(self.downsample):
                h = self.downsample[l](h)  # [B, C_{l+1}, T'/2^(l+1), F'/2^(l+1)]
        h = self.mid(h, e)
        for l in reversed(range(len(self.up))):
            if l < len(self.upsample):
                h = self.upsample[l](F.interpolate(h, scale_factor=2.0, mode="nearest"))  # [B, C_l, T'/2^l, F'/2^l]
            h = torch.cat([h, skips[l]], dim=1)  # [B, 2 C_l, T'/2^l, F'/2^l]
            for block in self.up[l]:
                h = block(h, e)
        out = self.head(h)[:, :, :T, :Fq]  # [B, 2, T, F]
        return out.permute(0, 2, 3, 1)  # [B, T, F, 2]

    def scalings(self, t: torch.Tensor) -> sdes.Scalings:
        s = sdes.edm_scalings(self.config.sde.std(t), self.config.sigma_data)
        return s if self.config.c_in == "edm" else sdes.Scalings(torch.ones_like(s.c_in), s.c_out, s.c_skip, s.c_noise)

    def forward(self, x_t: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """D(x_t, y, t) = c_skip x_t + c_out F(c_in x_t, c_in y, c_noise)."""
        s = self.scalings(t)
        c_in, c_out, c_skip = (v.reshape(-1, 1, 1, 1) for v in (s.c_in, s.c_out, s.c_skip))
        return c_skip * x_t + c_out * self.network(c_in * x_t, c_in * y, s.c_noise)

    def to_spec(self, wav: torch.Tensor) -> torch.Tensor:
        """Waveform to the compressed spectrum the network works on. Shape: [B, L] -> [B, T, F, 2]"""
        spec = stft(wav, self.config.stft)  # [B, T, F, 2]
        mag = spec.square().sum(-1, keepdim=True).clamp_min(1e-12).sqrt()  # [B, T, F, 1]
        return spec * (self.config.scale * mag.pow(self.config.compress - 1))

    def to_wave(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        """Inverse of :meth:`to_spec`. Shape: [B, T, F, 2] -> [B, length]"""
        c = self.config
        mag = spec.square().sum(-1, keepdim=True).clamp_min(1e-12).sqrt()  # [B, T, F, 1]
        return istft(spec * ((mag / c.scale).pow(1 / c.compress) / mag), c.stft, length)

    @torch.no_grad()
    def enhance(self, wav: torch.Tensor, sampler: str | None = None, steps: int | None = None, seed: int = 0) -> torch.Tensor:
        """Enhance whole signals with the configured sampler (or ``sampler``/``steps`` given here);
        the noise of the sampler comes from ``seed``, so a call is reproducible. Each signal is
        scaled to a peak of one for the network and back afterwards.

        Shape: wav [B, L] -> [B, L]
        """
        c = self.config
        peak = wav.abs().amax(-1, keepdim=True).clamp_min(1e-8)  # [B, 1]
        y = self.to_spec(wav / peak)  # [B, T, F, 2]
        generator = torch.Generator(wav.device).manual_seed(seed)
        x = sdes.sample(self, y, c.sde, sampler or c.sampler, steps or c.steps, c.snr, c.corrector_steps, generator)
        return self.to_wave(x, wav.shape[-1]) * peak

    def frame_macs(self) -> int:
        """Multiply-accumulates of one network evaluation per spectral frame, counted on a 64-frame
        input (the embedding MLP, run once per evaluation, is spread over those frames)."""
        from distill.models import _count_macs  # the registry imports this module

        frames = 64 * self.config.multiple
        x = torch.zeros(1, frames, self.config.stft.bins, 2)
        t = torch.full((1,), self.config.t_max)
        return _count_macs(list(self.modules()), lambda: self(x, x, t)) // frames
