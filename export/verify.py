"""Checks every export runs before it may ship: the PyTorch model itself against its input and the
clean speech (model check: it must enhance, with the right polarity), exported models streamed
through the runtime's own backends against PyTorch (parity), and the quantised models against fp32
(quality), on verification pairs of noisy and clean speech."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from distill import metrics
from distill.dsp import apply_mask, istft, predict_mask
from export.calibration import Trace, frames
from runtime.backends import Runner


def stream(runner: Runner, spec: np.ndarray) -> np.ndarray:
    """Masks of a whole signal (enhanced spectra where the runner ``returns`` them), one frame at
    a time with the runner's states fed back. Shape: spec [T, F, 2] -> [T, F, 2]"""
    states = runner.initial_state()
    masks = np.empty_like(spec)
    for t in range(len(spec)):
        masks[t], states = runner(spec[t], states)
    return masks


def snr_db(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Energy of ``reference`` over that of the difference, in dB (inf where they are equal)."""
    err = float(np.sum((estimate.astype(np.float64) - reference) ** 2))
    return float(10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / err)) if err > 0 else float("inf")


def parity(runner: Runner, reference: Trace) -> dict:
    """Largest absolute difference of the streamed mask from PyTorch's, and the mask's SNR against it."""
    masks = stream(runner, reference.frames)
    return {"frames": len(masks), "mask_max_abs_error": float(np.abs(masks - reference.masks).max()), "mask_snr_db": snr_db(masks, reference.masks)}


def correlation(estimate: np.ndarray, clean: np.ndarray) -> float:
    """Pearson correlation of an enhanced signal with the clean speech: near +1 for a good model,
    negative for one with inverted polarity (which SI-SDR and PESQ cannot see); NaN for silence."""
    n = min(len(estimate), len(clean))
    a, b = estimate[:n] - estimate[:n].mean(), clean[:n] - clean[:n].mean()
    denom = float(np.sqrt((a @ a) * (b @ b)))
    return float(a @ b) / denom if denom > 0 else float("nan")


def enhance(model: nn.Module, spec: np.ndarray, out: np.ndarray, length: int, returns: str = "mask") -> np.ndarray:
    """The waveform of a model's (or runner's) output per frame: a mask applied to ``spec``, or the
    enhanced spectrum itself (``returns="spectrum"``: a two-stage chain)."""
    s, o = torch.from_numpy(spec)[None], torch.from_numpy(out)[None]
    return istft(apply_mask(s, o) if returns == "mask" else o, model.config.stft, length)[0].numpy()


def quality(model: nn.Module, runners: dict[str, Runner], pairs: list[tuple[np.ndarray, np.ndarray]], reference: dict | None = None) -> dict:
    """Mean PESQ, SI-SDR and correlation with the clean speech over ``pairs`` of (noisy, clean) for
    every runner, and for PyTorch fp32 (offline ``forward``) unless its ``reference`` scores are given."""
    scores: dict[str, list[tuple[float, float, float]]] = {n: [] for n in runners}
    if reference is None:
        scores["pytorch"] = []
    for noisy, clean in tqdm(pairs, desc="quality", leave=False, dynamic_ncols=True, disable=None):
        spec = frames(model, noisy).numpy()
        outs = {n: stream(r, spec) for n, r in runners.items()}
        if reference is None:
            with torch.no_grad():
                outs["pytorch"] = predict_mask(model, torch.from_numpy(spec)[None])[0].numpy()
        for name, masks in outs.items():
            est = enhance(model, spec, masks, len(noisy), getattr(runners.get(name, model), "returns", "mask"))
            scores[name].append((metrics.pesq_wb(est, clean), metrics.si_sdr(est, clean), correlation(est, clean)))
    out = {n: {"pesq": float(np.nanmean([p for p, _, _ in v])), "si_sdr": float(np.mean([s for _, s, _ in v])), "correlation": float(np.mean([c for _, _, c in v]))}
           for n, v in scores.items()}  # fmt: skip
    return {**out, "pytorch": reference} if reference is not None else out


def model_check(model: nn.Module, pairs: list[tuple[np.ndarray, np.ndarray]], source: str) -> dict:
    """Whether the PyTorch model enhances the verification pairs at all: its mean SI-SDR must not be
    below the noisy input's, and its output must correlate positively with the clean speech (SI-SDR
    is blind to the sign, so a model fine-tuned on it can learn an inverted output). The scores
    (PESQ, SI-SDR, correlation) are the fp32 reference of the quality check."""
    scores = quality(model, {}, pairs)["pytorch"]
    noisy = float(np.mean([metrics.si_sdr(n, c) for n, c in pairs]))
    problems = []
    if not scores["correlation"] > 0:
        problems.append(f"its output is anti-correlated with the clean speech (mean correlation {scores['correlation']:+.2f}): "
                        "inverted polarity (repair: python -m distill.checkpoint flip-polarity)")  # fmt: skip
    if not scores["si_sdr"] >= noisy:
        problems.append(f"its output's SI-SDR ({scores['si_sdr']:.2f} dB) is below its noisy input's ({noisy:.2f} dB)")
    return {
        "pairs": source,
        "files": len(pairs),
        "reference": scores,
        "input_si_sdr": noisy,
        "si_sdr_gain": scores["si_sdr"] - noisy,
        "polarity": "positive" if scores["correlation"] > 0 else "inverted",
        "problems": problems,
        "passed": not problems,
        "overridden": False,
    }


def quality_record(opt, reference: dict) -> dict:
    """The manifest's ``quality`` section before any attempt: the pairs, the budget and the fp32
    reference every quantised model is judged against."""
    return {"devset": opt.pairs_name, "files": len(opt.pairs), "budget": {"pesq_drop": opt.pesq_budget, "si_sdr_drop": opt.sisdr_budget},
            "reference": reference, "attempts": [], "results": {}}  # fmt: skip


def judge(results: dict, pesq_budget: float, sisdr_budget: float) -> dict:
    """Drops of every quantised model against PyTorch fp32, and whether each is within budget and
    keeps fp32's polarity."""
    ref = results["pytorch"]
    verdicts = {}
    for name, r in results.items():
        if name == "pytorch":
            continue
        drop_p, drop_s = ref["pesq"] - r["pesq"], ref["si_sdr"] - r["si_sdr"]
        same_sign = bool(r["correlation"] * ref["correlation"] > 0)
        verdicts[name] = {**r, "pesq_drop": drop_p, "si_sdr_drop": drop_s, "passed": bool(drop_p <= pesq_budget and drop_s <= sisdr_budget and same_sign)}
    return verdicts


def load_pairs(devset: Path, limit: int | None, sample_rate: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from distill.evaluate import read_set

    return [(noisy, clean) for _, noisy, clean in read_set(devset / "noisy", devset / "clean", limit, sample_rate)]


def load_sample(noisy: Path, clean: Path, sample_rate: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """One verification pair from two files (the shipped sample), cut to the shorter length."""
    from runtime.audio import load

    x, y = load(noisy, sample_rate), load(clean, sample_rate)
    n = min(len(x), len(y))
    return [(x[:n], y[:n])]
