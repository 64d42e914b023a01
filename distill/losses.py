"""Supervised losses on the enhanced signal. Each returns a scalar to minimise.

Spectra carry re/im in the last axis: ``[B, T, F, 2]``; waveforms are ``[B, L]``.
"""
from __future__ import annotations

import torch


def si_sdr(est: torch.Tensor, ref: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant SDR in dB per utterance (zero-mean signals).

    Shape: est, ref [B, L] -> [B]
    """
    est = est - est.mean(-1, keepdim=True)
    ref = ref - ref.mean(-1, keepdim=True)
    scale = (est * ref).sum(-1, keepdim=True) / (ref.square().sum(-1, keepdim=True) + eps)
    target = scale * ref  # [B, L]
    return 10 * torch.log10(target.square().sum(-1) / ((est - target).square().sum(-1) + eps) + eps)


def correlation(est: torch.Tensor, ref: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation per utterance: the output's polarity. Near +1 for a faithful estimate,
    near -1 for an inverted one, which SI-SDR scores exactly as high.

    Shape: est, ref [B, L] -> [B]
    """
    est = est - est.mean(-1, keepdim=True)
    ref = ref - ref.mean(-1, keepdim=True)
    return (est * ref).sum(-1) / (est.norm(dim=-1) * ref.norm(dim=-1) + eps)


def si_sdr_loss(est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return -si_sdr(est, ref).mean()


def snr_loss(est: torch.Tensor, ref: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Negative SNR in dB: like SI-SDR, but the estimate is not rescaled, so a sign flip or a level
    error costs as much as noise (SI-SDR is blind to both; a model trained on it alone can learn an
    inverted output).

    Shape: est, ref [B, L] -> scalar
    """
    return -(10 * torch.log10(ref.square().sum(-1) / ((est - ref).square().sum(-1) + eps) + eps)).mean()


def _compress(spec: torch.Tensor, c: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Magnitude**c and the spectrum rescaled to it. Shape: [B, T, F, 2] -> ([B, T, F], [B, T, F, 2])"""
    mag = spec.square().sum(-1).add(1e-12).sqrt()  # [B, T, F]
    cmag = mag.pow(c)
    return cmag, spec * (cmag / mag).unsqueeze(-1)


def spectral_loss(est: torch.Tensor, ref: torch.Tensor, c: float = 0.3, alpha: float = 0.3) -> torch.Tensor:
    """Compressed complex + magnitude MSE (Braun & Tashev): ``alpha`` on the complex term.

    Shape: est, ref [B, T, F, 2] -> scalar
    """
    em, ec = _compress(est, c)
    rm, rc = _compress(ref, c)
    return alpha * (ec - rc).square().sum(-1).mean() + (1 - alpha) * (em - rm).square().mean()


def psa_loss(est: torch.Tensor, ref: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """Phase-sensitive spectrum approximation: the estimate's magnitude against the clean
    magnitude projected on the noisy phase, truncated to [0, |noisy|].

    Shape: est, ref, noisy [B, T, F, 2] -> scalar
    """
    est_mag = est.square().sum(-1).add(1e-12).sqrt()  # [B, T, F]
    noisy_mag = noisy.square().sum(-1).add(1e-12).sqrt()
    proj = (ref * noisy).sum(-1) / noisy_mag  # |S| cos(angle S - angle Y)
    target = torch.minimum(proj.clamp(min=0), noisy_mag)
    return (est_mag - target).square().mean() / noisy_mag.square().mean().clamp(min=1e-12)


LOSSES = ("sisdr", "snr", "spec", "psa")
SIGN_AWARE = ("snr", "spec")  # sisdr rescales the estimate (by a negative factor too) and psa compares magnitudes


def parse_weights(text: str) -> dict[str, float]:
    """``"spec=1,sisdr=0.01"`` -> ``{"spec": 1.0, "sisdr": 0.01}``."""
    weights = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in LOSSES:
            raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")
        try:
            weights[name] = float(value) if value else 1.0
        except ValueError:
            raise ValueError(f"loss weight for {name!r} is not a number: {value!r}") from None
    if not weights:
        raise ValueError("no loss given")
    return weights


def sign_blind(weights: dict[str, float]) -> bool:
    """True when no term with a weight sees the sign of the output: such a loss is as low for an
    inverted output as for the right one."""
    return not any(weights.get(name, 0.0) for name in SIGN_AWARE)


def supervised(weights: dict[str, float], est_wav, ref_wav, est_spec, ref_spec, noisy_spec) -> dict[str, torch.Tensor]:
    """The weighted terms by name; their sum is the loss."""
    terms = {}
    if "sisdr" in weights:
        terms["sisdr"] = weights["sisdr"] * si_sdr_loss(est_wav, ref_wav)
    if "snr" in weights:
        terms["snr"] = weights["snr"] * snr_loss(est_wav, ref_wav)
    if "spec" in weights:
        terms["spec"] = weights["spec"] * spectral_loss(est_spec, ref_spec)
    if "psa" in weights:
        terms["psa"] = weights["psa"] * psa_loss(est_spec, ref_spec, noisy_spec)
    return terms
