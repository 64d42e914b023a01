"""Real frames and the states they produce: what quantisers calibrate on and what exported graphs
are checked against. Everything here streams audio through the PyTorch step, frame by frame."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from distill.dsp import stft


def frames(model: nn.Module, signal: np.ndarray) -> torch.Tensor:
    """Spectral frames of a 16 kHz signal under the model's signal contract. Shape: [L] -> [T, F, 2]"""
    return stft(torch.from_numpy(np.ascontiguousarray(signal, dtype=np.float32))[None], model.config.stft)[0]


@dataclass
class Trace:
    """Per frame of one streamed signal: the step inputs (frame, states) and outputs (mask, states),
    plus the core graph's input features and output z."""

    frames: np.ndarray  # [T, F, 2]
    states_in: list[list[np.ndarray]]  # T lists of state arrays
    features: np.ndarray  # [T, 3, F]
    z: np.ndarray  # [T, 2, F]
    masks: np.ndarray  # [T, F, 2]
    states_out: list[list[np.ndarray]]


@torch.no_grad()
def trace(model: nn.Module, signal: np.ndarray) -> Trace:
    spec = frames(model, signal)
    state = model.initial_state(1)
    states_in, feats, zs, masks, states_out = [], [], [], [], []
    for t in range(spec.shape[0]):
        frame = spec[t : t + 1]  # [1, F, 2]
        x = model.features(frame.unsqueeze(1))  # [1, 3, 1, F]
        states_in.append([s.numpy() for s in state])
        z, state = model.core_step(x, state)  # [1, 2, 1, F]
        mask = model.bound(z)[:, 0]  # [1, F, 2]
        feats.append(x[0, :, 0].numpy())
        zs.append(z[0, :, 0].numpy())
        masks.append(mask[0].numpy())
        states_out.append([s.numpy() for s in state])
    return Trace(spec.numpy(), states_in, np.stack(feats), np.stack(zs), np.stack(masks), states_out)


def samples(traces: list[Trace], names: list[str], core: bool, limit: int) -> list[dict[str, np.ndarray]]:
    """Graph inputs by name for up to ``limit`` frames spread evenly over all traces."""
    pairs = [(tr, t) for tr in traces for t in range(len(tr.frames))]
    pick = np.linspace(0, len(pairs) - 1, min(limit, len(pairs))).round().astype(int)
    out = []
    for i in pick:
        tr, t = pairs[i]
        first = tr.features[t][None, :, None, :] if core else tr.frames[t][None]
        out.append(dict(zip(names, [np.ascontiguousarray(first, np.float32), *tr.states_in[t]])))
    return out
