"""The mathematics of score-based speech enhancement and its one-step consistency distillation.

The forward process is SGMSE+'s Ornstein-Uhlenbeck variance-exploding SDE (OUVE) between the clean
spectrum x0 and the noisy one y,

    dx = theta (y - x) dt + g(t) dw,   g(t) = sigma_min (sigma_max / sigma_min)^t sqrt(2 ln(sigma_max / sigma_min)),

whose marginal at time t is Gaussian around mu(x0, y, t) = e^(-theta t) x0 + (1 - e^(-theta t)) y.
A network estimates that mean as EDM's preconditioned denoiser D(x_t, y, t); the score follows as
(D - x_t) / sigma(t)^2. Enhancement runs the reverse SDE from x_T = y + sigma(T) z with a
predictor-corrector sampler (N steps, 2N network evaluations), or, for a consistency model, returns
D(x_T, y, T) in one evaluation. Consistency distillation (ROSE-CD) teaches a student to give the
same D at neighbouring times t > t' of one trajectory, the point at t' coming from one Heun step of
the teacher that re-injects noise (a randomized trajectory), from the deterministic step (plain
CD), or, without a teacher, from an independent draw of the forward marginal (CT).

States are compressed complex spectra with re/im in the last axis, [B, T, F, 2], and ``t`` is one
time per example, [B]. Noise is circular complex Gaussian: re and im each have variance 1/2, so
sigma(t) is the standard deviation of the complex value, the convention the published SDE
parameters are stated in. A *denoiser* is any callable ``D(x_t, y, t)`` returning the estimate of
mu(x0, y, t) with the shape of ``x_t``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

SAMPLERS = ("pc", "one-step")
MODES = ("rosecd", "cd", "ct")  # randomized teacher step, deterministic teacher step, no teacher


def _per_example(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Shape: v [B] -> [B, 1, ..., 1] broadcasting against ``like``."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def complex_noise(like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Circular complex Gaussian noise of unit power per bin. Shape: like [..., 2] -> [..., 2]"""
    return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device) * math.sqrt(0.5)


@dataclass(frozen=True)
class OUVE:
    """SGMSE+'s OUVE SDE with the published parameters as defaults."""

    theta: float = 1.5  # stiffness: rate at which the mean moves from the clean towards the noisy spectrum
    sigma_min: float = 0.05  # diffusion scale at t = 0
    sigma_max: float = 0.5  # diffusion scale at t = 1
    t_max: float = 1.0  # T: where sampling starts
    t_eps: float = 0.03  # smallest time trained and sampled (the marginal is nearly clean there)

    def __post_init__(self):
        if not (self.theta > 0 and 0 < self.sigma_min < self.sigma_max):
            raise ValueError(f"OUVE needs theta > 0 and 0 < sigma_min < sigma_max, got {self.theta}, {self.sigma_min}, {self.sigma_max}")
        if not 0 < self.t_eps < self.t_max:
            raise ValueError(f"OUVE needs 0 < t_eps < t_max, got {self.t_eps}, {self.t_max}")

    @property
    def _log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    def mean(self, x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """mu(x0, y, t). Shape: x0, y [B, ...], t [B] -> [B, ...]"""
        a = _per_example(torch.exp(-self.theta * t), x0)
        return a * x0 + (1 - a) * y

    def std(self, t: torch.Tensor) -> torch.Tensor:
        """sigma(t), the closed-form solution of the variance ODE for this g(t). Shape: [B] -> [B]"""
        k, th = self._log_ratio, self.theta
        return torch.sqrt(self.sigma_min**2 * (torch.exp(2 * k * t) - torch.exp(-2 * th * t)) * k / (th + k))

    def drift(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """f(x, y) = theta (y - x). Shape: x, y [B, ...] -> [B, ...]"""
        return self.theta * (y - x)

    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        """g(t). Shape: [B] -> [B]"""
        return self.sigma_min * torch.exp(self._log_ratio * t) * math.sqrt(2 * self._log_ratio)

    def prior(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x_T = y + sigma(T) z, where sampling starts. Shape: y, z [B, ...] -> [B, ...]"""
        return y + self.std(torch.tensor(self.t_max, dtype=y.dtype)) * z

    def times(self, steps: int, device=None) -> torch.Tensor:
        """The sampling and distillation grid, T down to t_eps. Shape: [steps]"""
        return torch.linspace(self.t_max, self.t_eps, steps, device=device)


@dataclass(frozen=True)
class Scalings:
    """EDM preconditioning: D = c_skip x + c_out F(c_in x, c_noise). Each [B]."""

    c_in: torch.Tensor
    c_out: torch.Tensor
    c_skip: torch.Tensor
    c_noise: torch.Tensor


def edm_scalings(sigma: torch.Tensor, sigma_data: float) -> Scalings:
    """Karras et al.'s scalings for a marginal of standard deviation ``sigma`` around data of
    standard deviation ``sigma_data``: the network's input and target both have unit variance.
    As sigma -> 0 the denoiser tends to the identity (c_skip -> 1, c_out -> 0).

    Shape: sigma [B] -> four [B]
    """
    total = sigma.square() + sigma_data**2
    return Scalings(c_in=total.rsqrt(), c_out=sigma * sigma_data * total.rsqrt(), c_skip=sigma_data**2 / total, c_noise=sigma.log() / 4)


def bin_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared complex error per example, |a - b|^2 averaged over frames and bins.

    Shape: a, b [B, T, F, 2] -> [B]
    """
    return (a - b).square().sum(-1).flatten(1).mean(1)


def dsm_loss(denoiser: Denoiser, x0: torch.Tensor, y: torch.Tensor, sde: OUVE, sigma_data: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Denoising score matching of a preconditioned denoiser: at t ~ U[t_eps, T], the error of
    D(x_t, y, t) against the marginal mean, weighted by EDM's 1 / c_out^2 so every time counts as
    a unit-variance regression of the network output.

    Shape: x0, y [B, T, F, 2] -> scalar
    """
    t = sde.t_eps + (sde.t_max - sde.t_eps) * torch.rand(x0.shape[0], generator=generator, dtype=x0.dtype, device=x0.device)  # [B]
    sigma = sde.std(t)  # [B]
    mu = sde.mean(x0, y, t)  # [B, T, F, 2]
    x_t = mu + _per_example(sigma, x0) * complex_noise(x0, generator)
    weight = (sigma.square() + sigma_data**2) / (sigma * sigma_data).square()  # [B]
    return (weight * bin_error(denoiser(x_t, y, t), mu)).mean()


def score(denoiser: Denoiser, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, sde: OUVE) -> torch.Tensor:
    """grad log p_t(x | y) from the denoiser (Tweedie). Shape: x, y [B, ...], t [B] -> [B, ...]"""
    return (denoiser(x, y, t) - x) / _per_example(sde.std(t).square(), x)


def reverse_diffusion(denoiser: Denoiser, x, y, t, h: float, sde: OUVE, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictor: one Euler-Maruyama step of the reverse SDE from t to t - h. Returns the new
    state and its noiseless mean. Shape: x, y [B, ...], t [B] -> two [B, ...]"""
    g2h = _per_example(sde.diffusion(t).square() * h, x)
    mean = x - sde.drift(x, y) * h + g2h * score(denoiser, x, y, t, sde)
    return mean + g2h.sqrt() * complex_noise(x, generator), mean


def langevin(denoiser: Denoiser, x, y, t, snr: float, sde: OUVE, generator=None) -> torch.Tensor:
    """Corrector: one step of annealed Langevin dynamics at time t, step size 2 (snr sigma(t))^2.

    Shape: x, y [B, ...], t [B] -> [B, ...]
    """
    eps = _per_example(2 * (snr * sde.std(t)).square(), x)
    return x + eps * score(denoiser, x, y, t, sde) + (2 * eps).sqrt() * complex_noise(x, generator)


def pc_sample(denoiser: Denoiser, y: torch.Tensor, sde: OUVE, steps: int = 30, snr: float = 0.5, corrector_steps: int = 1,
              generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """The N-step predictor-corrector sampler: from x_T = y + sigma(T) z, at each of ``steps``
    times from T down to t_eps, ``corrector_steps`` Langevin steps then a reverse-diffusion step
    to the next time (the last to t = 0); returns the last step's noiseless mean.

    Shape: y [B, T, F, 2] -> [B, T, F, 2]
    """
    if steps < 1:
        raise ValueError(f"the sampler needs at least one step, got {steps}")
    ts = sde.times(steps, y.device)
    x = sde.prior(y, complex_noise(y, generator))
    for i in range(steps):
        t = ts[i].expand(y.shape[0])  # [B]
        h = float(ts[i] - ts[i + 1]) if i + 1 < steps else float(ts[i])
        for _ in range(corrector_steps):
            x = langevin(denoiser, x, y, t, snr, sde, generator)
        x, mean = reverse_diffusion(denoiser, x, y, t, h, sde, generator)
    return mean


def one_step(denoiser: Denoiser, y: torch.Tensor, sde: OUVE, generator: torch.Generator | None = None) -> torch.Tensor:
    """A consistency model's enhancement: D(x_T, y, T) with x_T = y + sigma(T) z.

    Shape: y [B, T, F, 2] -> [B, T, F, 2]
    """
    t = torch.full((y.shape[0],), sde.t_max, dtype=y.dtype, device=y.device)
    return denoiser(sde.prior(y, complex_noise(y, generator)), y, t)


def nfe(sampler: str, steps: int, corrector_steps: int) -> int:
    """Network evaluations of one enhancement."""
    return 1 if sampler == "one-step" else steps * (1 + corrector_steps)


def sample(denoiser: Denoiser, y: torch.Tensor, sde: OUVE, sampler: str = "pc", steps: int = 30, snr: float = 0.5, corrector_steps: int = 1,
           generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """Enhance compressed noisy spectra with ``sampler``: "pc" (:func:`pc_sample`) or "one-step".

    Shape: y [B, T, F, 2] -> [B, T, F, 2]
    """
    if sampler == "one-step":
        return one_step(denoiser, y, sde, generator)
    if sampler == "pc":
        return pc_sample(denoiser, y, sde, steps, snr, corrector_steps, generator)
    raise ValueError(f"unknown sampler {sampler!r}; choose from {', '.join(SAMPLERS)}")


def flow_velocity(denoiser: Denoiser, x, y, t, sde: OUVE) -> torch.Tensor:
    """dx/dt of the probability-flow ODE, f - g^2 score / 2. Shape: x, y [B, ...], t [B] -> [B, ...]"""
    return sde.drift(x, y) - 0.5 * _per_example(sde.diffusion(t).square(), x) * score(denoiser, x, y, t, sde)


def heun_step(denoiser: Denoiser, x, y, t, t_next, sde: OUVE, z: torch.Tensor | None = None) -> torch.Tensor:
    """The teacher's move from time t to the earlier t_next: Heun's method on the probability-flow
    ODE (two evaluations), plus, given noise ``z``, g(t) sqrt(t - t_next) z re-injected: the
    randomized trajectory of ROSE-CD. Without ``z`` it is the deterministic step of plain CD.

    Shape: x, y, z [B, T, F, 2], t, t_next [B] -> [B, T, F, 2]
    """
    h = _per_example(t - t_next, x)
    v = flow_velocity(denoiser, x, y, t, sde)
    v_next = flow_velocity(denoiser, x - h * v, y, t_next, sde)
    out = x - h * 0.5 * (v + v_next)
    if z is not None:
        out = out + _per_example(sde.diffusion(t), x) * h.sqrt() * z
    return out


@dataclass(frozen=True)
class ConsistencyPair:
    """What one consistency step compares: the online model at (x_t, t) against the target
    network at (x_next, t_next), one grid step closer to clean."""

    x_t: torch.Tensor  # [B, T, F, 2]
    t: torch.Tensor  # [B]
    x_next: torch.Tensor  # [B, T, F, 2]
    t_next: torch.Tensor  # [B]


def consistency_pair(x0: torch.Tensor, y: torch.Tensor, sde: OUVE, grid: int, mode: str, teacher: Denoiser | None = None,
                     generator: torch.Generator | None = None) -> ConsistencyPair:  # fmt: skip
    """Draw n ~ U{0, ..., grid - 2} per example, t = t_n, t' = t_{n+1} on :meth:`OUVE.times`,
    x_t from the forward marginal, and x_t' by ``mode``: "rosecd" (teacher Heun step with
    re-injected noise), "cd" (deterministic teacher step) or "ct" (an independent draw of the
    marginal at t', no teacher). Every mode draws the same random numbers, so the modes differ only
    in how x_t' is made.

    Shape: x0, y [B, T, F, 2] -> ConsistencyPair
    """
    if mode not in MODES:
        raise ValueError(f"unknown consistency mode {mode!r}; choose from {', '.join(MODES)}")
    if mode != "ct" and teacher is None:
        raise ValueError(f"mode {mode!r} needs a teacher")
    ts = sde.times(grid, x0.device)
    n = torch.randint(0, grid - 1, (x0.shape[0],), generator=generator, device=x0.device)  # [B]
    t, t_next = ts[n], ts[n + 1]
    x_t = sde.mean(x0, y, t) + _per_example(sde.std(t), x0) * complex_noise(x0, generator)
    z = complex_noise(x0, generator)
    with torch.no_grad():
        if mode == "ct":
            x_next = sde.mean(x0, y, t_next) + _per_example(sde.std(t_next), x0) * z
        else:
            x_next = heun_step(teacher, x_t, y, t, t_next, sde, z if mode == "rosecd" else None)
    return ConsistencyPair(x_t, t, x_next, t_next)
