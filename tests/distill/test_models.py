import dataclasses

import pytest
import torch
import torch.nn as nn

from distill.dsp import stft
from distill.models import PRESETS, build, config_from_dict, config_to_dict, cost
from distill.models.crn import CRNConfig
from distill.models.layers import erb_weights


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


@pytest.mark.parametrize("name", ["student-erb-30k", "student-erb", "teacher-erb", "student", "gated-student"])
def test_a_new_model_starts_as_a_positive_pass_through(name):
    """Every seed starts on the right side of the inverted output (a saddle training stays on):
    the first masks are a real gain near tanh(1), so the output correlates with the input."""
    for seed in range(3):
        torch.manual_seed(seed)
        model = build(name).train()
        x = torch.randn(2, 16000)
        with torch.no_grad():
            out = model(stft(x, model.config.stft))
        mask = out[0] if isinstance(out, tuple) else out  # [B, T, F, 2]
        assert mask[..., 0].mean() == pytest.approx(0.76, abs=0.05) and mask[..., 1].abs().mean() < 0.1, (name, seed)
        assert mask[..., 0].min() > 0, (name, seed)


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


# ---------------------------------------------------------------- ERB band grid


def _erb(**kw):
    torch.manual_seed(0)
    return build("crn", CRNConfig(channels=(4, 6, 8, 8, 8), rnn_groups=2, erb_low=41, erb_bands=40, **kw)).eval()


@pytest.mark.parametrize("name", ["student-erb", "teacher-erb"])
def test_erb_presets_stream_exactly_over_10s(name):
    model = _randomised(name)
    spec = stft(torch.randn(1, 160000) * 0.1, model.config.stft)
    with torch.no_grad():
        full = model(spec)
        streamed = _stream(model, spec)
    assert full.shape == streamed.shape == spec.shape
    assert (full - streamed).abs().max() <= 1e-5


@pytest.mark.parametrize("subband", [1, 3, 5])
def test_band_merging_and_subbands_stream_exactly(subband):
    model = _erb(subband=subband, rnn_layers=2, rnn_size=32)
    spec = stft(torch.randn(2, 16000) * 0.1, model.config.stft)
    with torch.no_grad():
        assert (model(spec) - _stream(model, spec)).abs().max() <= 1e-5
        assert (model(spec) - _stream(model.fold_batchnorm(), spec)).abs().max() <= 1e-5


def test_erb_weights_interpolate_between_band_centres():
    w = erb_weights(161, 41, 40, 16000)  # [40, 120]
    assert w.shape == (40, 120) and w.min() >= 0
    assert torch.allclose(w.sum(0), torch.ones(120))  # every bin's weights sum to one
    assert w[0, 0] == 1 and w[-1, -1] == 1  # first and last band centred on the first merged and the last bin
    widths = (w > 0).sum(1)
    assert widths[-1] > widths[1] >= 2  # bands widen with frequency (ERB scale)
    with pytest.raises(ValueError, match="narrower than one bin"):
        erb_weights(161, 10, 140, 16000)


def test_band_matrices_are_fixed_and_carried_by_the_state_dict():
    model = _erb()
    assert "merge.weight" in model.state_dict() and "split.weight" in model.state_dict()
    assert not any(n.startswith(("merge", "split")) for n, _ in model.named_parameters())
    # analysis: weighted mean per band (a flat spectrum stays flat); synthesis: interpolation (a flat band grid stays flat)
    ones = torch.ones(1, 3, 1, 161)
    assert torch.allclose(model.merge(ones), torch.ones(1, 3, 1, 81))
    assert torch.allclose(model.split(torch.ones(1, 2, 1, 81)), torch.ones(1, 2, 1, 161))
    low = torch.randn(1, 3, 1, 161)
    assert torch.equal(model.merge(low)[..., :41], low[..., :41])  # bins below erb_low pass unchanged


def test_default_config_keeps_the_all_bin_layout():
    """Checkpoints of the shipped presets keep loading: no band layers, no new state dict keys."""
    model = build("student")
    assert model.merge is None and model.split is None and model.unfold is None
    assert not [k for k in model.state_dict() if k.startswith(("merge", "split", "unfold"))]
    assert model.bins == [161, 81, 41, 21, 11, 6] and model.initial_state()[0].shape == (1, 3, 1, 161)


def test_erb_model_keeps_the_bundle_contract():
    """Features and z on every bin: the runtime computes features and bound as before."""
    model = _erb(subband=3)
    state = model.initial_state()
    assert state[0].shape == (1, 9, 1, 81)  # the first conv's previous input: unfolded bands
    with torch.no_grad():
        z, new = model.core_step(torch.randn(1, 3, 1, 161), state)
    assert z.shape == (1, 2, 1, 161) and [s.shape for s in new] == [s.shape for s in state]


def test_cost_counts_the_band_matrices_as_dense_products():
    cfg = CRNConfig(channels=(2, 4), rnn_groups=2, rnn_layers=1, erb_low=41, erb_bands=40, subband=3)
    c = cost(build("crn", cfg))
    bands = 3 * 40 * 120 + 2 * 120 * 40  # merge of 3 feature channels, split of 2 output channels
    enc = 2 * 18 * 3 * 41 + 4 * 4 * 3 * 21  # first conv: 3 features x 3 subbands, stacked with the previous frame
    skip = 2 * 2 * 41 + 4 * 4 * 21
    h = 4 * 21 // 2
    gru = 2 * (3 * h * h + 3 * h * h)
    dec = 8 * 2 * 3 * 21 + 4 * 2 * 3 * 41
    assert c.macs_per_frame == bands + enc + skip + gru + dec


def test_erb_preset_budget_and_shared_grid_with_its_teacher():
    student, teacher = build("student-erb"), build("teacher-erb")
    assert cost(student).mmacs_per_second <= 35
    assert 1_000_000 <= cost(teacher).params <= 2_000_000
    spec = stft(torch.randn(1, 4000) * 0.1, student.config.stft)
    with torch.no_grad():
        _, s_acts = student(spec, taps=True)
        _, t_acts = teacher(spec, taps=True)
    for name in ("enc0", "enc1", "enc2", "enc3", "enc4", "rnn", "dec1", "dec2", "dec3", "dec4"):  # Gram KD's default layers
        assert s_acts[name].shape[2:] == t_acts[name].shape[2:], name


def test_erb_config_validation():
    with pytest.raises(ValueError, match="erb_bands"):
        CRNConfig(erb_low=41, erb_bands=120)
    with pytest.raises(ValueError, match="erb_low"):
        CRNConfig(erb_low=0)
    with pytest.raises(ValueError, match="subband"):
        CRNConfig(subband=2)
