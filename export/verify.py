"""Checks every export runs before it may ship: exported models streamed through the runtime's own
backends against PyTorch (parity), and the quantised models against fp32 on a dev set (quality)."""
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
    """Masks of a whole signal, one frame at a time with the runner's states fed back.
    Shape: spec [T, F, 2] -> [T, F, 2]"""
    states = runner.initial_state()
    masks = np.empty_like(spec)
    for t in range(len(spec)):
        masks[t], states = runner(spec[t], states)
    return masks


def parity(runner: Runner, reference: Trace) -> dict:
    """Largest absolute difference of the streamed mask from PyTorch's."""
    masks = stream(runner, reference.frames)
    return {"frames": len(masks), "mask_max_abs_error": float(np.abs(masks - reference.masks).max())}


def enhance(model: nn.Module, spec: np.ndarray, masks: np.ndarray, length: int) -> np.ndarray:
    s, m = torch.from_numpy(spec)[None], torch.from_numpy(masks)[None]
    return istft(apply_mask(s, m), model.config.stft, length)[0].numpy()


def quality(model: nn.Module, runners: dict[str, Runner], pairs: list[tuple[np.ndarray, np.ndarray]], reference: dict | None = None) -> dict:
    """Mean PESQ and SI-SDR over ``pairs`` of (noisy, clean) for every runner, and for PyTorch fp32
    (offline ``forward``) unless its ``reference`` scores are given."""
    scores: dict[str, list[tuple[float, float]]] = {n: [] for n in runners}
    if reference is None:
        scores["pytorch"] = []
    for noisy, clean in tqdm(pairs, desc="quality", leave=False, dynamic_ncols=True):
        spec = frames(model, noisy).numpy()
        outs = {n: stream(r, spec) for n, r in runners.items()}
        if reference is None:
            with torch.no_grad():
                outs["pytorch"] = predict_mask(model, torch.from_numpy(spec)[None])[0].numpy()
        for name, masks in outs.items():
            est = enhance(model, spec, masks, len(noisy))
            scores[name].append((metrics.pesq_wb(est, clean), metrics.si_sdr(est, clean)))
    out = {n: {"pesq": float(np.nanmean([p for p, _ in v])), "si_sdr": float(np.mean([s for _, s in v]))} for n, v in scores.items()}
    return {**out, "pytorch": reference} if reference is not None else out


def judge(results: dict, pesq_budget: float, sisdr_budget: float) -> dict:
    """Drops of every quantised model against PyTorch fp32, and whether each is within budget."""
    ref = results["pytorch"]
    verdicts = {}
    for name, r in results.items():
        if name == "pytorch":
            continue
        drop_p, drop_s = ref["pesq"] - r["pesq"], ref["si_sdr"] - r["si_sdr"]
        verdicts[name] = {**r, "pesq_drop": drop_p, "si_sdr_drop": drop_s, "passed": bool(drop_p <= pesq_budget and drop_s <= sisdr_budget)}
    return verdicts


def load_pairs(devset: Path, limit: int | None, sample_rate: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from distill.evaluate import read_set

    return [(noisy, clean) for _, noisy, clean in read_set(devset / "noisy", devset / "clean", limit, sample_rate)]
