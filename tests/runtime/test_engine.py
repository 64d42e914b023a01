"""The streaming engine against offline PyTorch, across block sizes and bad input."""
import numpy as np
import pytest
import soundfile as sf
import torch

from distill import checkpoint, metrics
from distill.dsp import enhance
from runtime.backends import open_runner
from runtime.bundle import Bundle
from runtime.engine import Engine

SAMPLE = "assets/sample/noisy.wav"


@pytest.fixture(scope="module")
def speech():
    x, _ = sf.read(SAMPLE, dtype="float32")
    return x[: 3 * 16000]


def _engine(bundle, backend="onnxruntime", precision="fp32", **kw):
    b = Bundle(bundle)
    return Engine(b, open_runner(b, backend, precision), **kw)


@pytest.mark.parametrize("backend", ["onnxruntime", "litert"])
def test_file_mode_equals_offline_pytorch(small_bundle, small_checkpoint, speech, backend):
    model = checkpoint.load_model(small_checkpoint)
    with torch.no_grad():
        offline = enhance(model, torch.from_numpy(speech)[None])[0].numpy()
    streamed = _engine(small_bundle, backend).run(speech, block=160)
    assert streamed.shape == offline.shape
    assert np.abs(streamed - offline).max() <= 1e-4


@pytest.mark.parametrize("backend, precision", [("onnxruntime", "int8"), ("litert", "int8"), ("litert", "int8io")])
def test_int8_file_mode_within_the_manifest_budget(small_bundle, small_checkpoint, small_devset, backend, precision):
    b = Bundle(small_bundle)
    budget = b.manifest["verification"]["quality"]["budget"]
    model = checkpoint.load_model(small_checkpoint)
    drops = []
    for i in range(2):
        noisy, _ = sf.read(small_devset / "noisy" / f"u{i}.wav", dtype="float32")
        clean, _ = sf.read(small_devset / "clean" / f"u{i}.wav", dtype="float32")
        with torch.no_grad():
            ref = enhance(model, torch.from_numpy(noisy)[None])[0].numpy()
        out = Engine(b, open_runner(b, backend, precision)).run(noisy)
        drops.append((metrics.pesq_wb(ref, clean) - metrics.pesq_wb(out, clean), metrics.si_sdr(ref, clean) - metrics.si_sdr(out, clean)))
    assert np.nanmean([d[0] for d in drops]) <= budget["pesq_drop"]
    assert np.mean([d[1] for d in drops]) <= budget["si_sdr_drop"]


def test_block_sizes_give_identical_output(small_bundle, speech):
    x = speech[:16000]
    outs = [_engine(small_bundle).run(x, block=n) for n in (1, 37, 160, 1000)]
    for o in outs[1:]:
        assert np.array_equal(o, outs[0])


def test_process_returns_every_completed_hop(small_bundle, speech):
    e = _engine(small_bundle)
    sizes = [len(e.process(speech[i : i + 37])) for i in range(0, 37 * 20, 37)]
    assert all(s % e.hop == 0 for s in sizes) and sum(sizes) == (37 * 20 // e.hop) * e.hop


def test_reset_starts_a_fresh_stream(small_bundle, speech):
    e = _engine(small_bundle)
    a = e.run(speech[:8000])
    e.reset()
    assert np.array_equal(e.run(speech[:8000]), a)


def test_nan_and_inf_are_replaced_and_counted(small_bundle, speech):
    x = speech[:16000].copy()
    x[[100, 5000, 9000]] = [np.nan, np.inf, -np.inf]
    e = _engine(small_bundle)
    y = e.run(x)
    assert np.isfinite(y).all() and e.nonfinite_samples == 3 and e.state_resets == 0
    clean = x.copy()
    clean[[100, 5000, 9000]] = 0
    assert np.array_equal(y, _engine(small_bundle).run(clean))


def test_non_finite_state_is_reset_and_counted(small_bundle, speech):
    b = Bundle(small_bundle)
    runner = open_runner(b, "onnxruntime", "fp32")
    calls = {"n": 0}
    real = runner.run

    def poisoned(x, states):
        calls["n"] += 1
        out = real(x, states)
        if calls["n"] == 10:
            out = [o * np.nan for o in out]
        return out

    runner.run = poisoned
    e = Engine(b, runner)
    y = e.run(speech[:16000])
    assert e.state_resets == 1 and np.isfinite(y).all()


def test_silence_and_full_scale_clipping_pass(small_bundle):
    e = _engine(small_bundle)
    silence = e.run(np.zeros(16000, np.float32))
    assert np.isfinite(silence).all() and np.abs(silence).max() < 1e-6
    square = np.sign(np.sin(np.arange(16000) * 2 * np.pi * 200 / 16000)).astype(np.float32)
    e.reset()
    assert np.isfinite(e.run(square)).all()


def test_attenuation_limit_keeps_part_of_the_input(small_bundle, speech):
    x = speech[:16000]
    plain = _engine(small_bundle).run(x)
    limited = _engine(small_bundle, atten_limit_db=6.0).run(x)
    g = 10 ** (-6 / 20)
    # the mask becomes g + (1 - g) * mask, which is linear in the mask: so is the output
    assert np.abs(limited - (g * _engine(small_bundle, atten_limit_db=0.0).run(x) + (1 - g) * plain)).max() < 1e-4
