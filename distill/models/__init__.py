"""Model registry, named presets and the cost report (parameters, MACs per frame)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn

from distill.dsp import StftConfig
from distill.models.corrector import Corrector, CorrectorConfig
from distill.models.crn import CRN, CRNConfig
from distill.models.gated_crn import GatedCRN, GatedCRNConfig
from distill.models.layers import BandMatrix
from distill.models.score_unet import ScoreUNet, ScoreUNetConfig

MODELS: dict[str, tuple[type, type]] = {"crn": (CRNConfig, CRN), "gated_crn": (GatedCRNConfig, GatedCRN)}
MODELS["score_unet"] = (ScoreUNetConfig, ScoreUNet)  # a whole-utterance generative teacher (distill.rosecd)
MODELS["corrector"] = (CorrectorConfig, Corrector)  # a second stage after a student (distill.meco)

# Named sizes of the CRN family. All share depth and frequency strides (161 -> 6 bins over five
# layers), so teacher and student feature maps lie on the same time-frequency grid (Gram KD needs
# that). The teacher spends most parameters in its GRUs, which cost one MAC per parameter per frame,
# so it trains in hours on a CPU.
# The -erb pair runs on a band grid of its own: bins 0-40 (0-2 kHz, 50 Hz apart) as they are, bins
# 41-160 (2.05-8 kHz) merged into 40 ERB-spaced triangular bands by a fixed matrix, so the encoder
# sees 81 points (81 -> 41 -> 21 -> 11 -> 6 -> 3); the decoder's 81 points are interpolated back to
# 161 bins before the mask bound. student-erb and teacher-erb share that grid (Gram KD between them
# works; across grids only output-level KD does). student-erb: 600-step pilots put encoder width
# ahead of a second GRU layer at equal MACs (docs/models.md). student-erb-30k: the ~30 k
# size of the KD papers on that grid (student-30k's is the uniform one), for the KD ablation.
PRESETS: dict[str, tuple[str, dict]] = {
    "teacher": ("crn", dict(channels=(16, 32, 48, 64, 96), rnn_groups=4, rnn_layers=2)),
    "student": ("crn", dict(channels=(8, 16, 24, 32, 32), rnn_groups=4, rnn_layers=1)),
    "student-30k": ("crn", dict(channels=(4, 8, 12, 16, 16), rnn_groups=2, rnn_layers=1)),
    "student-erb": ("crn", dict(channels=(9, 18, 27, 36, 48), rnn_groups=4, rnn_layers=1, erb_low=41, erb_bands=40)),
    "student-erb-30k": ("crn", dict(channels=(6, 12, 18, 24, 24), rnn_groups=2, rnn_layers=1, erb_low=41, erb_bands=40)),
    "teacher-erb": ("crn", dict(channels=(16, 32, 48, 64, 96), rnn_groups=4, rnn_layers=2, rnn_size=512, erb_low=41, erb_bands=40)),
    "gated-student": ("gated_crn", dict(channels=(5, 8, 12, 16, 20), branch_channels=(3, 5, 8, 10, 10), branches=2, trunk_groups=4)),
}


def config_to_dict(config) -> dict:
    return dataclasses.asdict(config)


def config_from_dict(name: str, d: dict):
    cls = MODELS[name][0]
    kwargs = dict(d)
    if "stft" in kwargs and isinstance(kwargs["stft"], dict):
        kwargs["stft"] = StftConfig(**kwargs["stft"])
    for f in dataclasses.fields(cls):
        if f.name in kwargs and isinstance(kwargs[f.name], list):
            kwargs[f.name] = tuple(kwargs[f.name])
    unknown = set(kwargs) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown {name} config fields: {sorted(unknown)}")
    return cls(**kwargs)


def build(name: str, config=None, **overrides) -> nn.Module:
    """Build a model by registry name (``crn``) or preset (``teacher``, ``student``, ...)."""
    if name in PRESETS:
        name, base = PRESETS[name]
        config = MODELS[name][0](**{**base, **overrides})
    elif name in MODELS:
        config = config if config is not None else MODELS[name][0](**overrides)
    else:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS) + sorted(PRESETS)}")
    return MODELS[name][1](config)


def model_name(model: nn.Module) -> str:
    for name, (_, cls) in MODELS.items():
        if type(model) is cls:
            return name
    raise ValueError(f"{type(model).__name__} is not a registered model")


@dataclass(frozen=True)
class Cost:
    params: int
    macs_per_frame: int  # multiply-accumulates of conv and linear layers in one streaming step
    frames_per_second: float

    @property
    def mmacs_per_second(self) -> float:
        return self.macs_per_frame * self.frames_per_second / 1e6

    def __str__(self) -> str:
        return f"{self.params / 1e3:.1f} k params, {self.macs_per_frame / 1e3:.1f} k MACs/frame, {self.mmacs_per_second:.2f} MMAC/s"


def _count_macs(modules, run) -> int:
    """MACs of conv, linear and fixed band layers among ``modules`` while ``run()`` executes (a band
    matrix counts as the dense matrix product the exported graph runs)."""
    macs = 0

    def hook(m, inp, out):
        nonlocal macs
        x = inp[0]
        if isinstance(m, nn.Linear):
            macs += out.numel() * m.in_features
        elif isinstance(m, nn.ConvTranspose2d):
            macs += x.numel() * (m.out_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Conv2d):
            macs += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, BandMatrix):
            macs += out[..., m.keep :].numel() * m.weight.shape[1]

    handles = [m.register_forward_hook(hook) for m in modules if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, BandMatrix))]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return macs


def gated_cost(model: nn.Module) -> dict:
    """MACs per frame of a gated model's parts: the trunk (without the policy), the policy and
    each branch; what a frame executes is trunk + policy + the enabled branches."""
    was_training = model.training
    model.eval()
    try:
        return _gated_parts(model)
    finally:
        model.train(was_training)


def _gated_parts(model: nn.Module) -> dict:
    x = torch.zeros(1, 3, 1, model.config.stft.bins)
    old = model.trunk_state(1)[:-1]  # without policy_h
    _, new = model.trunk_step(x, old)
    e = torch.zeros(1, model.config.policy_bands)
    trunk_modules = [m for name, m in model.named_modules() if not name.startswith(("branches", "policy"))]
    parts = {
        "trunk": _count_macs(trunk_modules, lambda: model.trunk_step(x, old)),
        "policy": _count_macs(list(model.policy.modules()), lambda: model.policy.step(e, new[-1], model.policy.gru.initial_state(1))),
        "branches": [
            _count_macs(list(b.modules()), lambda k=k: model.branch_step(k, old, new, model.branch_state(k, 1))) for k, b in enumerate(model.branches)
        ],
    }
    return parts


def cost(model: nn.Module) -> Cost:
    """Parameters and MACs per frame, counted by running one streaming step with hooks on every
    conv, linear and band layer, so the numbers follow the layer shapes actually executed (for a gated
    model: every branch, i.e. full width). Element-wise ops (activations, gates, mask) are not
    counted."""
    was_training = model.training
    model.eval()
    try:
        if hasattr(model, "frame_macs"):  # a whole-utterance model (no step): per frame of one network evaluation
            macs = model.frame_macs()
        else:
            macs = _count_macs(list(model.modules()), lambda: model.step(torch.zeros(1, model.config.stft.bins, getattr(model, "frame_width", 2)), model.initial_state(1)))
    finally:
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return Cost(params, macs, model.config.stft.frames_per_second)
