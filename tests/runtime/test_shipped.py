"""The shipped bundles: intact, verified by their export, built from the shipped checkpoints, and
streaming what those checkpoints compute offline."""
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from distill import checkpoint, metrics
from distill.dsp import enhance
from runtime.backends import open_runner
from runtime.bundle import Bundle, sha256
from runtime.engine import Engine

ROOT = Path(__file__).resolve().parents[2]
BUNDLES = {"default": "student.pt", "gated": "gated.pt"}


@pytest.mark.parametrize("name", BUNDLES)
def test_shipped_bundle_is_intact_and_comes_from_the_shipped_checkpoint(name):
    b = Bundle(ROOT / "runtime" / "bundles" / name)  # checks the sha256 of every file
    assert b.manifest["verification"]["passed"]
    ck = b.manifest["model"]["checkpoint"]
    assert ck["sha256"] == sha256(ROOT / "assets" / "checkpoints" / BUNDLES[name])


@pytest.mark.parametrize("name", BUNDLES)
def test_shipped_bundle_streams_what_its_checkpoint_computes_offline(name):
    x, _ = sf.read(ROOT / "assets" / "sample" / "noisy.wav", dtype="float32")
    x = x[: 3 * 16000]
    model = checkpoint.load_model(ROOT / "assets" / "checkpoints" / BUNDLES[name]).eval()
    with torch.no_grad():
        offline = enhance(model, torch.from_numpy(x)[None])[0].numpy()
    b = Bundle(ROOT / "runtime" / "bundles" / name)
    runner = open_runner(b, "onnxruntime", "fp32")
    streamed = Engine(b, runner).run(x, block=160)
    assert np.abs(streamed - offline).max() <= 1e-4
    if b.gating is not None:
        assert 0.05 < runner.usage()["mac_ratio"] < 0.95, "the shipped policy should skip some work on speech in noise, not all"


@pytest.mark.parametrize("name", ["student.pt", "teacher.pt", "gated.pt"])
def test_shipped_checkpoints_have_the_right_polarity(name):
    """SI-SDR cannot see a sign: the output must correlate positively with the clean speech."""
    x, _ = sf.read(ROOT / "assets" / "sample" / "noisy.wav", dtype="float32")
    clean, _ = sf.read(ROOT / "assets" / "sample" / "clean.wav", dtype="float32")
    model = checkpoint.load_model(ROOT / "assets" / "checkpoints" / name).eval()
    with torch.no_grad():
        y = enhance(model, torch.from_numpy(x)[None])[0].numpy()
    assert np.corrcoef(y, clean[: len(y)])[0, 1] > 0.9


def test_shipped_default_bundle_enhances_with_the_right_sign_and_honours_the_attenuation_limit():
    """What a user hears: output correlated with the clean speech, better SI-SDR than the input, and
    --atten-limit-db suppressing less the lower the limit (an inverted model did the opposite)."""
    x, _ = sf.read(ROOT / "assets" / "sample" / "noisy.wav", dtype="float32")
    clean, _ = sf.read(ROOT / "assets" / "sample" / "clean.wav", dtype="float32")
    b = Bundle(ROOT / "runtime" / "bundles" / "default")

    def frames(s):
        return s[: len(s) // 160 * 160].reshape(-1, 160)  # [frames, 160]

    energy = (frames(clean) ** 2).sum(1)
    quiet = energy < np.quantile(energy, 0.2)  # frames with (almost) no speech: what suppression removes

    def attenuation_db(limit):
        y = Engine(b, open_runner(b, "onnxruntime", "fp32"), limit).run(x, block=160)
        return y, 10 * np.log10((frames(y)[quiet] ** 2).sum() / (frames(x)[quiet] ** 2).sum())

    y, free = attenuation_db(None)
    assert np.corrcoef(y, clean[: len(y)])[0, 1] > 0.9
    assert metrics.si_sdr(y, clean) > metrics.si_sdr(x, clean) + 3
    _, at12 = attenuation_db(12.0)
    _, at6 = attenuation_db(6.0)
    assert free < at12 < at6 and at12 >= -12 and at6 >= -6


@pytest.mark.parametrize("name", BUNDLES)
def test_shipped_integer_models_run_in_the_runtime_close_to_fp32(name):
    """The fully integer set (what a microcontroller runs) streams through the runtime too, gated
    chains requantising between parts, and sounds like the fp32 model: same sign, within 1 dB SI-SDR."""
    x, _ = sf.read(ROOT / "assets" / "sample" / "noisy.wav", dtype="float32")
    clean, _ = sf.read(ROOT / "assets" / "sample" / "clean.wav", dtype="float32")
    x, clean = x[: 5 * 16000], clean[: 5 * 16000]
    b = Bundle(ROOT / "runtime" / "bundles" / name)
    fp32 = Engine(b, open_runner(b, "onnxruntime", "fp32")).run(x, block=160)
    int8io = Engine(b, open_runner(b, "litert", "int8io")).run(x, block=160)
    assert np.corrcoef(int8io, clean)[0, 1] > 0.85
    assert metrics.si_sdr(int8io, clean) > metrics.si_sdr(fp32, clean) - 1.0
