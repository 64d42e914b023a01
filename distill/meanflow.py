"""MeanFlow on a student's estimates: the probability path, the MeanFlow target and MeCo's
Data-Space Optimization (DSO) loss, and the one-step inference.

Everything lives in the corrector's domain, the power-law compressed complex spectrum
``|X|^c e^{j angle X}`` (``to_flow``; c = the corrector's ``compress``). The path runs from clean
speech x (t = 0) to the student's estimate (t = 1):

    z_t = (1 - t) x + t est + sigma_t eps,   sigma_t = (1 - t) sigma_min + t sigma_max,
    v   = est - x + (sigma_max - sigma_min) eps                  (d z_t / d t)

The network learns the average velocity u(z_t, r, t) over [r, t], so z_r = z_t - (t - r) u: one
evaluation jumps from z_1 = est + sigma_max eps to z_{t_eps}, the clean estimate. The MeanFlow
identity u = v - (t - r) du/dt gives the training target, du/dt being the directional derivative
of u along (dz/dt, dr/dt, dt/dt) = (v, 0, 1): a Jacobian-vector product.

DSO (MeCo, arXiv 2606.09677) trains on three terms:
    (1 - w) L_cfm + w L_xr + lambda L_end
    L_cfm = 1/2 sum |u(z_t, t, t) - v|^2                     (flow matching at r = t)
    L_xr  = 1/2 sum |Delta u(z_t, r, t) - Delta u_tgt|^2     (u_tgt = v - c Delta JVP, Delta = t - r;
                                                              the error of the implied z_r)
    L_end = -SI-SDR(iSTFT(z_1 - (1 - t_eps) u(z_1, t_eps, 1)), clean)   (the inference itself)
with sums over bins, means over the batch. Defaults are the authors' (``DSOConfig``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from distill.dsp import istft
from distill.losses import si_sdr
from distill.models.corrector import Corrector, CorrectorConfig

Field = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # u(z, r, t)


def to_flow(spec: torch.Tensor, power: float) -> torch.Tensor:
    """Power-law compression of a complex spectrum, phase kept: |X|^power e^{j angle X}.

    Shape: [..., 2] -> [..., 2]
    """
    mag = spec.square().sum(-1, keepdim=True).clamp_min(1e-12).sqrt()  # [..., 1]
    return spec * mag.pow(power - 1)


def from_flow(z: torch.Tensor, power: float) -> torch.Tensor:
    """Inverse of :func:`to_flow`. Shape: [..., 2] -> [..., 2]"""
    mag = z.square().sum(-1, keepdim=True).clamp_min(1e-12).sqrt()  # [..., 1]
    return z * mag.pow(1 / power - 1)


def _b(t: torch.Tensor) -> torch.Tensor:
    """Per-example scalars broadcast over a spectrum. Shape: [B] -> [B, 1, 1, 1]"""
    return t[:, None, None, None]


def sigma(t: torch.Tensor, c: CorrectorConfig) -> torch.Tensor:
    """Noise level of the path. Shape: [B] -> [B]"""
    return (1 - t) * c.sigma_min + t * c.sigma_max


def path(x: torch.Tensor, est: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, c: CorrectorConfig) -> torch.Tensor:
    """z_t: t = 0 gives x, t = 1 gives est + sigma_max noise.

    Shape: x, est, noise [B, T, F, 2], t [B] -> [B, T, F, 2]
    """
    return _b(1 - t) * x + _b(t) * est + _b(sigma(t, c)) * noise


def velocity(x: torch.Tensor, est: torch.Tensor, noise: torch.Tensor, c: CorrectorConfig) -> torch.Tensor:
    """d z_t / d t along the path (the same at every t). Shape: [B, T, F, 2] -> [B, T, F, 2]"""
    return est - x + (c.sigma_max - c.sigma_min) * noise


def field(model: Corrector, est: torch.Tensor, noisy: torch.Tensor) -> Field:
    """u(z, r, t) of ``model`` for a batch's estimates and noisy inputs. z (with r and t) may stack
    k copies of the batch, so several evaluations run as one forward pass.

    Shape of u: z [kB, T, F, 2], r, t [kB] -> [kB, T, F, 2]
    """

    def u(z: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        k = z.shape[0] // est.shape[0]
        return model(Corrector.pack(z, est.repeat(k, 1, 1, 1), noisy.repeat(k, 1, 1, 1)), r, t)

    return u


def jvp_fd(u: Field, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor, v: torch.Tensor, rel_step: float = 1e-3) -> torch.Tensor:
    """du/dt along the path, (v, 0, 1) in (z, r, t), by central finite differences: two
    evaluations (one stacked forward pass), no graph. The step of each example is ``rel_step``
    times the mean magnitude of its z plus that of its v.

    Shape: z, v [B, T, F, 2], r, t [B] -> [B, T, F, 2]
    """
    h = rel_step * (z.abs().mean((1, 2, 3)) + v.abs().mean((1, 2, 3))).clamp_min(1e-6)  # [B]
    with torch.no_grad():
        both = u(torch.cat([z + _b(h) * v, z - _b(h) * v]), torch.cat([r, r]), torch.cat([t + h, t - h]))  # [2B, T, F, 2]
    plus, minus = both.chunk(2)
    return (plus - minus) / _b(2 * h)


def jvp_exact(u: Field, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The same derivative by forward-mode autodiff (``torch.func.jvp``): exact, one pass that
    carries tangents. Shape: as :func:`jvp_fd`."""
    with torch.no_grad():
        _, tangent = torch.func.jvp(lambda zz, tt: u(zz, r, tt), (z, t), (v, torch.ones_like(t)))
    return tangent


def clip_per_example(x: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Scale each example down to an L2 norm of at most ``max_norm``. Shape: [B, ...] -> [B, ...]"""
    norm = x.flatten(1).norm(dim=1).clamp_min(1e-12)  # [B]
    return x * (max_norm / norm).clamp(max=1.0).view(-1, *[1] * (x.dim() - 1))


def xr_target(v: torch.Tensor, jvp: torch.Tensor, r: torch.Tensor, t: torch.Tensor, coef: float) -> torch.Tensor:
    """u_tgt = v - coef (t - r) du/dt; at r = t it is v. Shape: v, jvp [B, T, F, 2], r, t [B] -> [B, T, F, 2]"""
    return v - coef * _b(t - r) * jvp


@dataclass(frozen=True)
class DSOConfig:
    """MeCo's Data-Space Optimization: every part an option, defaults the authors'."""

    xr_weight: float = 0.25  # final weight w of the x_r loss (0: no x_r loss); flow matching gets 1 - w
    xr_ramp: float = 0.5  # fraction of training over which w rises linearly from 0
    cfm_only: float = 0.1  # fraction of training on flow matching alone (the authors skip x_r and endpoint terms while w < 0.05)
    delta2: bool = True  # x_r loss on Delta * u (endpoint error, i.e. Delta^2 weighting); False: plain MeanFlow velocity loss
    coef: float = 0.5  # c in u_tgt = v - c Delta JVP (0.5 trapezoid-like; MeanFlow's own is 1)
    jvp: str = "fd"  # "fd": central finite differences; "exact": torch.func.jvp
    jvp_step: float = 1e-3  # relative finite-difference step
    jvp_clip: float = 5.0  # per-example L2 bound of the JVP (0: none)
    gamma: tuple[float, float] = (8.0, 1.0)  # r = t - U^gamma (t - t_eps): gamma annealed from short intervals to uniform
    gamma_ramp: float = 0.7  # fraction of training over which gamma anneals
    r_equals_t: float = 0.1  # probability that an x_r example takes r = t
    endpoint: float = 1.0  # weight of the endpoint SI-SDR loss (0: none)

    def __post_init__(self):
        if self.jvp not in ("fd", "exact"):
            raise ValueError(f"jvp must be 'fd' or 'exact', got {self.jvp!r}")
        fractions = dict(xr_weight=self.xr_weight, xr_ramp=self.xr_ramp, cfm_only=self.cfm_only, gamma_ramp=self.gamma_ramp, r_equals_t=self.r_equals_t)
        for name, value in fractions.items():
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.jvp_step <= 0 or self.jvp_clip < 0 or self.endpoint < 0 or min(self.gamma) <= 0:
            raise ValueError("jvp_step and gamma must be positive; jvp_clip and endpoint non-negative")

    def w(self, progress: float) -> float:
        """x_r weight at this point of training (0..1)."""
        return self.xr_weight * (1.0 if self.xr_ramp == 0 else min(1.0, progress / self.xr_ramp))

    def gamma_at(self, progress: float) -> float:
        g0, g1 = self.gamma
        return g1 if self.gamma_ramp == 0 else g0 + min(1.0, progress / self.gamma_ramp) * (g1 - g0)


def sample_t(batch: int, t_eps: float, device=None) -> torch.Tensor:
    """t uniform in (t_eps, 1]. Shape: -> [B]"""
    return (1 - torch.rand(batch, device=device)) * (1 - t_eps) + t_eps


def sample_r(t: torch.Tensor, t_eps: float, gamma: float, p_equal: float) -> torch.Tensor:
    """r in [t_eps, t]: t - U^gamma (t - t_eps) (gamma > 1 favours short intervals), and r = t
    with probability ``p_equal``. Shape: [B] -> [B]"""
    r = t - torch.rand_like(t).pow(gamma) * (t - t_eps)
    return torch.where(torch.rand_like(t) < p_equal, t, r)


def energy(x: torch.Tensor) -> torch.Tensor:
    """1/2 the squared L2 norm of each example, averaged over the batch. Shape: [B, ...] -> scalar"""
    return 0.5 * x.flatten(1).square().sum(1).mean()


def one_step(model: Corrector, est: torch.Tensor, noisy: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """The corrector's estimate of clean speech in one evaluation: z_1 - (1 - t_eps) u(z_1, t_eps, 1),
    z_1 = est + sigma_1 noise (``noise`` None: eps = 0, z_1 = est).

    Shape: est, noisy, noise [B, T, F, 2] -> [B, T, F, 2] (compressed domain)
    """
    c = model.config
    ones = est.new_ones(est.shape[0])  # [B]
    z1 = est if noise is None else est + _b(sigma(ones, c)) * noise
    return z1 - (1 - c.t_eps) * model(Corrector.pack(z1, est, noisy), ones * c.t_eps, ones)


def dso_loss(model: Corrector, x: torch.Tensor, est: torch.Tensor, noisy: torch.Tensor, clean: torch.Tensor, progress: float,
             cfg: DSOConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
    """The DSO loss of one batch at ``progress`` (0..1) of training: the total and its weighted
    terms by name (``cfm``, ``xr``, ``end``; they sum to the total). Noise, t and r come from
    torch's global generator. The terms needing the network at other points (x_r, endpoint) run
    with flow matching in one stacked forward pass.

    Shape: x, est, noisy [B, T, F, 2] (compressed), clean [B, L] -> scalar
    """
    c = model.config
    B = x.shape[0]
    u = field(model, est, noisy)
    t = sample_t(B, c.t_eps, x.device)  # [B]
    eps = torch.randn_like(x)
    z = path(x, est, eps, t, c)  # [B, T, F, 2]
    v = velocity(x, est, eps, c)
    w = cfg.w(progress)
    full = progress >= cfg.cfm_only
    use_xr = full and w > 0
    use_end = full and cfg.endpoint > 0
    zs, rs, ts = [z], [t], [t]
    if use_xr:
        r = sample_r(t, c.t_eps, cfg.gamma_at(progress), cfg.r_equals_t)  # [B]
        jvp = jvp_fd(u, z, r, t, v, cfg.jvp_step) if cfg.jvp == "fd" else jvp_exact(u, z, r, t, v)
        if cfg.jvp_clip:
            jvp = clip_per_example(jvp, cfg.jvp_clip)
        target = xr_target(v, jvp, r, t, cfg.coef).detach()
        zs, rs, ts = zs + [z], rs + [r], ts + [t]
    if use_end:
        ones = x.new_ones(B)
        z1 = est + _b(sigma(ones, c)) * torch.randn_like(x)  # a fresh prior sample, as at inference
        zs, rs, ts = zs + [z1], rs + [ones * c.t_eps], ts + [ones]
    outs = list(u(torch.cat(zs), torch.cat(rs), torch.cat(ts)).chunk(len(zs)))  # each [B, T, F, 2]
    cfm = energy(outs.pop(0) - v)
    terms = {"cfm": (1 - w) * cfm if use_xr else cfm}
    if use_xr:
        err = outs.pop(0) - target
        terms["xr"] = w * energy(_b(t - r) * err if cfg.delta2 else err)
    if use_end:
        est_clean = from_flow(z1 - (1 - c.t_eps) * outs.pop(0), c.compress)  # [B, T, F, 2]
        terms["end"] = -cfg.endpoint * si_sdr(istft(est_clean, c.stft, clean.shape[-1]), clean).mean()
    return sum(terms.values()), terms
