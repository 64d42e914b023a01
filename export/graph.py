"""The streaming step of a model as an exportable graph with named inputs and outputs."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn


class MaxLeakyReLU(nn.Module):
    """``max(x, slope * x)``: LeakyReLU for 0 < slope < 1 written with ops every int8 quantiser
    handles (ai-edge-quantizer leaves LEAKY_RELU in float)."""

    def __init__(self, slope: float):
        super().__init__()
        self.slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.maximum(x, x * self.slope)


class SplitTransposeConv(nn.Module):
    """A (1, 3) transposed convolution with stride 2 and padding 1 over frequency, written as two
    plain convolutions whose outputs are interleaved: even output bins 2j = W1 x[j], odd bins
    2j+1 = W2 x[j] + W0 x[j+1]. Same arithmetic and MACs; used for TFLite because litert-torch
    0.10 converts ConvTranspose2d with a wrong weight layout.

    Shape: x [B, C_in, T, F] -> [B, C_out, T, out_bins]
    """

    def __init__(self, conv: nn.ConvTranspose2d, out_bins: int):
        super().__init__()
        w, b = conv.weight.detach(), conv.bias.detach()  # [C_in, C_out, 1, 3], [C_out]
        cin, cout = w.shape[:2]
        self.even = nn.Conv2d(cin, cout, 1)
        self.odd = nn.Conv2d(cin, cout, (1, 2))
        with torch.no_grad():
            self.even.weight.copy_(w[:, :, :, 1:2].transpose(0, 1))
            self.even.bias.copy_(b)
            self.odd.weight.copy_(torch.cat([w[:, :, :, 2:3], w[:, :, :, 0:1]], dim=-1).transpose(0, 1))
            self.odd.bias.copy_(b)
        self.out_bins = out_bins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        even = self.even(x)  # [B, C_out, T, F]
        odd = self.odd(nn.functional.pad(x, (0, 1)))  # [B, C_out, T, F]
        y = torch.stack([even, odd], dim=-1)  # [B, C_out, T, F, 2]
        return y.flatten(-2)[..., : self.out_bins]  # [B, C_out, T, out_bins]


def prepare(model: nn.Module, tflite: bool = False) -> nn.Module:
    """An eval-mode copy for export with BatchNorm folded (a corrector has none). For TFLite also
    LeakyReLU as a maximum and transposed convolutions split into plain ones (see the classes above)."""
    m = model.fold_batchnorm() if hasattr(model, "fold_batchnorm") else copy.deepcopy(model).eval()
    if tflite:
        if isinstance(m.act, nn.LeakyReLU):
            m.act = MaxLeakyReLU(m.config.slope)
        for part in [m, *getattr(m, "branches", ())]:  # a gated model's branches have decoders too
            for layer in part.decoder:
                layer.conv = SplitTransposeConv(layer.conv, layer.out_bins)
    return m


class Step(nn.Module):
    """``frame, *states -> mask, *states``: one streaming step over the spectral frame.

    Shape: frame [1, F, 2] -> mask [1, F, 2]; states as ``model.initial_state(1)``.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, frame, *state):
        mask, new = self.model.step(frame, state)
        return (mask, *new)


class Core(nn.Module):
    """``features, *states -> z, *states``: the step without the float feature transform and mask
    bound, for integer-only graphs.

    Shape: features [1, 3, 1, F] -> z [1, 2, 1, F]
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, feats, *state):
        z, new = self.model.core_step(feats, state)
        return (z, *new)


class Named(nn.Module):
    """Keyword inputs and a dict output, so converters that take names from the Python signature
    (litert-torch) give the graph tensors the manifest's names."""

    def __init__(self, step: nn.Module, inputs: list[str], outputs: list[str]):
        super().__init__()
        self.step, self.in_names, self.out_names = step, inputs, outputs  # not "graph": fx owns that name

    def forward(self, **kwargs):
        out = self.step(*(kwargs[n] for n in self.in_names))
        return dict(zip(self.out_names, out))


def io_names(model: nn.Module, core: bool = False) -> tuple[list[str], list[str]]:
    """Graph input and output names: the frame (or features) and mask (or z), then the states."""
    states = list(model.state_names())
    first_in, first_out = ("features", "z") if core else ("frame", "mask")
    return [first_in, *states], [first_out, *(f"{s}_out" for s in states)]
