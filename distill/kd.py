"""Knowledge distillation losses: output KD, DISPatch (patch selection by Knowledge Gap Score) on
plain magnitude KD, DFKD-style frequency-dependent KD with multi-scale patches (MSSP), and
intra-activation Gram KD for the two-step schedule.

What comes from the authors' code and what is inferred is listed in docs/training.md ("Distillation");
every inferred choice is a field of :class:`KDConfig`.

Waveforms are ``[B, L]``; the KD losses of DISPatch/DFKD run on their own STFT (512-point Hann,
hop 128, centred, at 16 kHz: 257 bins), independent of the model's front-end.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from distill.losses import spectral_loss

METHODS = ("none", "output", "dispatch", "dfkd", "dispatch-mssp", "gram", "two-step")


@dataclass(frozen=True)
class KDConfig:
    method: str = "none"
    weight: float = 1.0  # on the KD term, added to the supervised loss
    topk: float = 0.8  # DISPatch: fraction of patches kept per utterance, by rank of KGS
    positive_only: bool = False  # DISPatch: also require KGS > 0 (the authors' code does not)
    sb: int = 20  # DISPatch-L2: patch width in bins (x 1 frame)
    sb_low: int | None = None  # DFKD: low-band patch width; None: 10 with MSSP, 20 without
    sb_high: int | None = None  # DFKD: high-band patch width; None: 40 with MSSP, 20 without
    beta: float = 0.5  # DFKD: weight of the cosine term in the high band
    n_fft: int = 512  # KD STFT
    hop: int = 128
    gram_layers: tuple[str, ...] = ("enc0", "enc1", "enc2", "enc3", "enc4", "rnn", "dec1", "dec2", "dec3", "dec4")
    gram_mode: str = "f"  # "f": per-frame F x F, "t": T x T, "tf": (T x F)^2 within blocks of gram_chunk frames
    gram_chunk: int = 8
    split: float = 0.3  # two-step: fraction of the steps spent in step 1 (KD only)
    step1_output_kd: float = 0.0  # two-step: weight of output KD added to the Gram loss in step 1

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown KD method {self.method!r}; choose from {', '.join(METHODS)}")
        if not 0 < self.topk <= 1:
            raise ValueError("topk must be in (0, 1]")
        if self.gram_mode not in ("f", "t", "tf"):
            raise ValueError("gram_mode must be f, t or tf")

    @property
    def patches(self) -> tuple[int, int]:
        """(low, high) DFKD patch widths."""
        mssp = self.method == "dispatch-mssp"
        return self.sb_low or (10 if mssp else 20), self.sb_high or (40 if mssp else 20)

    @property
    def needs_activations(self) -> bool:
        return self.method in ("gram", "two-step")


def kd_stft(wav: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """Shape: [B, L] -> complex [B, F, T]"""
    window = torch.hann_window(n_fft, device=wav.device, dtype=wav.dtype)
    return torch.stft(wav, n_fft, hop, window=window, center=True, return_complex=True)


def magnitude(x: torch.Tensor) -> torch.Tensor:
    """|x| with a finite gradient at zero (torch's complex abs has none there)."""
    return (x.real.square() + x.imag.square() + 1e-12).sqrt()


def patches(x: torch.Tensor, sb: int) -> torch.Tensor:
    """Frequency axis cut into patches of ``sb`` bins (zero-padded). Shape: [B, F, T, ...] -> [B, nb, sb, T, ...]"""
    B, F = x.shape[:2]
    nb = -(-F // sb)
    pad = torch.zeros(B, nb * sb - F, *x.shape[2:], dtype=x.dtype, device=x.device)
    return torch.cat([x, pad], dim=1).reshape(B, nb, sb, *x.shape[2:])


def topk_mask(kgs: torch.Tensor, valid: torch.Tensor, k: float, positive_only: bool = False) -> torch.Tensor:
    """Per row, keep the ``max(floor(n_valid * k), 1)`` valid entries with the largest score (ties
    at the threshold included), optionally only those with a positive score.

    Shape: kgs, valid [B, N] -> bool [B, N]
    """
    scores = kgs.masked_fill(~valid, float("-inf"))
    count = (valid.sum(1).float() * k).floor().clamp(min=1).long()  # [B]
    ordered = scores.sort(dim=1, descending=True).values  # [B, N]
    threshold = ordered.gather(1, (count - 1).unsqueeze(1))  # [B, 1]
    mask = valid & (scores >= threshold)
    return mask & (kgs > 0) if positive_only else mask


def magnitude_kd(s_wav, t_wav, n_fft: int = 512, hop: int = 128) -> torch.Tensor:
    """Plain magnitude KD: mean squared difference of student and teacher magnitudes."""
    return (magnitude(kd_stft(s_wav, n_fft, hop)) - magnitude(kd_stft(t_wav, n_fft, hop))).square().mean()


def dispatch_l2(s_wav, t_wav, y_wav, cfg: KDConfig) -> torch.Tensor:
    """DISPatch on magnitude KD: KGS = student patch error - teacher patch error (against the
    clean reference); the KD loss covers only the top-k patches per utterance, as the mean over
    their bins (equal to plain magnitude KD when k = 1)."""
    S, T, Y = (magnitude(kd_stft(w, cfg.n_fft, cfg.hop)) for w in (s_wav, t_wav, y_wav))  # [B, F, T']
    B, F, _ = S.shape
    valid_bins = patches(torch.ones(B, F, 1, device=S.device), cfg.sb)[..., 0].sum(2)  # [B, nb]: bins per patch
    err_s = patches((S - Y).square(), cfg.sb).sum(2)  # [B, nb, T']
    err_t = patches((T - Y).square(), cfg.sb).sum(2).detach()
    kd = patches((S - T.detach()).square(), cfg.sb).sum(2)  # [B, nb, T']
    n = valid_bins.unsqueeze(-1).expand_as(kd)  # [B, nb, T']
    kgs = (err_s.detach() - err_t) / n
    mask = topk_mask(kgs.flatten(1), torch.ones_like(kgs, dtype=torch.bool).flatten(1), cfg.topk, cfg.positive_only)
    mask = mask.view_as(kd).float()
    return (mask * kd).sum() / (mask * n).sum().clamp(min=1)


def split_bins(t_mag: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """DFKD's per-frame low/high boundary from the teacher magnitude: the bin where the running
    maximum over frequency makes its largest relative jump.

    Shape: t_mag [B, F, T] -> long [B, T]
    """
    fo = t_mag.cummax(dim=1).values  # [B, F, T]
    jump = (fo[:, 1:] - fo[:, :-1]) / (fo[:, :-1] + eps)  # [B, F-1, T]
    return jump.argmax(dim=1)


def _cos_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """1 - Re<a, b> / (|a||b|) over each patch's complex bins. Shape: [B, nb, sb, T] complex -> [B, nb, T]"""
    dot = (a.real * b.real + a.imag * b.imag).sum(2)
    return 1 - dot / (_patch_norm(a, eps) * _patch_norm(b, eps) + eps)


def _patch_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """L2 norm over a patch's complex bins, with a finite gradient for an all-zero patch."""
    return (x.real.square() + x.imag.square()).sum(2).add(eps * eps).sqrt()


def dfkd(s_wav, t_wav, y_wav, cfg: KDConfig) -> torch.Tensor:
    """Frequency-dependent KD with DISPatch selection per band (MSSP: different patch widths).

    Low band (bins <= the per-frame split): complex cosine distance. High band (bins >= split):
    beta * cosine + (1 - beta) * magnitude MSE. In each band KGS = d(Y, S) - d(Y, T) and the KD
    term is d(T, S); the top-k patches of each band are kept per utterance, and each band's loss
    is the mean over its kept patches. Vectorised over the batch.
    """
    S, T, Y = (kd_stft(w, cfg.n_fft, cfg.hop) for w in (s_wav, t_wav, y_wav))  # complex [B, F, T']
    T = T.detach()
    B, F, n = S.shape
    split = split_bins(magnitude(T))  # [B, T']
    f = torch.arange(F, device=S.device).view(1, F, 1)
    bands = {"low": f <= split.unsqueeze(1), "high": f >= split.unsqueeze(1)}  # [B, F, T'] each
    total = S.real.new_zeros(())
    for band, sb in zip(("low", "high"), cfg.patches):
        m = bands[band]
        pS, pT, pY = (patches(X * m, sb) for X in (S, T, Y))  # [B, nb, sb, T']
        pm = patches(m.float(), sb)  # [B, nb, sb, T']
        inside = pm.sum(2)  # [B, nb, T'] bins of the band in each patch

        def distance(a, b):
            d = _cos_distance(a, b)
            if band == "high":
                mse = (magnitude(a) - magnitude(b)).square().sum(2) / inside.clamp(min=1)
                d = cfg.beta * d + (1 - cfg.beta) * mse
            return d

        valid = inside > 0
        kgs = (distance(pY, pS) - distance(pY, pT)).detach()
        mask = topk_mask(kgs.flatten(1), valid.flatten(1), cfg.topk, cfg.positive_only).view_as(kgs).float()
        total = total + (mask * distance(pT, pS)).sum() / mask.sum().clamp(min=1)
    return total


def _normalised_gram(q: torch.Tensor) -> torch.Tensor:
    """Gram matrix of row vectors with L2-normalised rows. Shape: [..., N, C] -> [..., N, N]"""
    g = q @ q.transpose(-1, -2)
    return g / g.norm(dim=-1, keepdim=True).clamp(min=1e-8)


def gram(a: torch.Tensor, mode: str, chunk: int = 8) -> torch.Tensor:
    """Intra-activation Gram matrices of one feature map.

    Shape: a [B, C, T, F] -> "f": [B, T, F, F]; "t": [B, T, T]; "tf": [B, T/chunk, chunk*F, chunk*F]
    """
    B, C, T, F = a.shape
    if mode == "f":
        return _normalised_gram(a.permute(0, 2, 3, 1))  # per frame: rows are bins, C-dim vectors
    if mode == "t":
        return _normalised_gram(a.permute(0, 2, 1, 3).reshape(B, T, C * F))
    n = T // chunk
    q = a[:, :, : n * chunk].reshape(B, C, n, chunk, F).permute(0, 2, 3, 4, 1).reshape(B, n, chunk * F, C)
    return _normalised_gram(q)


def gram_loss(student: dict, teacher: dict, cfg: KDConfig) -> torch.Tensor:
    """Sum over layers of the mean squared difference of student and teacher Gram matrices.
    Channel counts may differ; the time-frequency grids must match."""
    total = None
    for name in cfg.gram_layers:
        if name not in student or name not in teacher:
            raise ValueError(f"Gram KD layer {name!r} is not an activation of both models; they have {sorted(student)}")
        s, t = student[name], teacher[name]
        if s.shape[0] != t.shape[0] or s.shape[2:] != t.shape[2:]:
            raise ValueError(
                f"Gram KD needs matching time-frequency grids, but layer {name} is T x F = {s.shape[2]} x {s.shape[3]} in the "
                f"student and {t.shape[2]} x {t.shape[3]} in the teacher; use models with the same depth and strides"
            )
        d = (gram(s, cfg.gram_mode, cfg.gram_chunk) - gram(t.detach(), cfg.gram_mode, cfg.gram_chunk)).square()
        term = d.sum((-1, -2)).mean() / d.shape[-1] ** 2
        total = term if total is None else total + term
    return total


def output_kd(s_spec: torch.Tensor, t_spec: torch.Tensor) -> torch.Tensor:
    """Student's enhanced spectrum against the teacher's (compressed complex + magnitude MSE)."""
    return spectral_loss(s_spec, t_spec.detach())
