import dataclasses

import pytest
import torch
import torch.nn as nn

from distill.dsp import stft
from distill.models import PRESETS, build, config_from_dict, config_to_dict, cost
from distill.models.crn import CRNConfig


def _randomised(name):
    """A model in eval mode with non-trivial BatchNorm statistics, so every layer matters."""
    torch.manual_seed(0)
    model = build(name).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


def _stream(model, spec):
    state = model.initial_state(spec.shape[0])
    outs = []
    for t in range(spec.shape[1]):
        out, state = model.step(spec[:, t], state)
        outs.append(out)
    return torch.stack(outs, 1)


@pytest.mark.parametrize("name", ["teacher", "student"])
def test_streaming_equals_forward_over_10s(name):
    model = _randomised(name)
    x = torch.randn(1, 160000) * 0.1
    spec = stft(x, model.config.stft)
    with torch.no_grad():
        full = model(spec)
        streamed = _stream(model, spec)
    assert full.shape == streamed.shape == spec.shape
    assert (full - streamed).abs().max() <= 1e-5


def test_state_is_a_flat_tuple_of_tensors_and_step_keeps_its_layout():
    model = _randomised("student-30k")
    state = model.initial_state()
    assert isinstance(state, tuple) and all(isinstance(s, torch.Tensor) for s in state)
    assert len(model.state_names()) == len(state)
    with torch.no_grad():
        _, new = model.step(torch.randn(1, 161, 2), state)
    assert [s.shape for s in new] == [s.shape for s in state]


@pytest.mark.parametrize("name", ["teacher", "student-30k"])
def test_causal(name):
    model = _randomised(name)
    spec = stft(torch.randn(1, 16000) * 0.1, model.config.stft)
    changed = spec.clone()
    t = 40
    changed[:, t + 1 :] = torch.randn_like(changed[:, t + 1 :])
    with torch.no_grad():
        a, b = model(spec), model(changed)
    assert torch.equal(a[:, : t + 1], b[:, : t + 1])
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])


def test_mask_is_bounded():
    model = _randomised("student-30k")
    spec = stft(torch.randn(2, 8000), model.config.stft) * 1e3
    with torch.no_grad():
        mag = model(spec).square().sum(-1).sqrt()
    assert mag.max() <= 1.0 + 1e-6


def test_preset_sizes():
    teacher, student, small = (cost(build(n)) for n in ("teacher", "student", "student-30k"))
    assert 1_000_000 <= teacher.params <= 2_000_000
    assert 20_000 <= student.params <= 100_000 and student.mmacs_per_second <= 60
    assert 20_000 <= small.params <= 40_000
    assert teacher.macs_per_frame > student.macs_per_frame > small.macs_per_frame


def test_cost_counts_layer_shapes():
    cfg = CRNConfig(channels=(2, 4), rnn_groups=2, rnn_layers=1)
    c = cost(build("crn", cfg))
    # encoder (in x2 for the stacked previous frame) | 1x1 skips | GRU | decoder (transposed: per input bin)
    enc = 6 * 2 * 3 * 81 + 4 * 4 * 3 * 41
    skip = 2 * 2 * 81 + 4 * 4 * 41
    h = 4 * 41 // 2
    gru = 2 * (3 * h * h + 3 * h * h)
    dec = 8 * 2 * 3 * 41 + 4 * 2 * 3 * 81
    assert c.macs_per_frame == enc + skip + gru + dec
    assert c.params == sum(p.numel() for p in build("crn", cfg).parameters())
    assert c.mmacs_per_second == pytest.approx(c.macs_per_frame * 100 / 1e6)


def test_config_round_trip_and_validation():
    for name, (family, _) in PRESETS.items():
        model = build(name)
        d = config_to_dict(model.config)
        assert config_from_dict(family, d) == model.config
    with pytest.raises(ValueError, match="unknown"):
        config_from_dict("crn", {"chanels": (1, 2)})
    with pytest.raises(ValueError, match="divisible"):
        build("crn", channels=(4, 6), rnn_groups=4)
    with pytest.raises(ValueError, match="unknown model"):
        build("nope")
    assert dataclasses.is_dataclass(CRNConfig) and CRNConfig.__dataclass_params__.frozen


def test_folded_batchnorm_gives_the_same_outputs():
    model = _randomised("student")
    folded = model.fold_batchnorm()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    spec = stft(torch.randn(1, 8000) * 0.1, model.config.stft)
    with torch.no_grad():
        assert (model(spec) - folded(spec)).abs().max() < 1e-5
        assert (_stream(model, spec) - _stream(folded, spec)).abs().max() < 1e-5
