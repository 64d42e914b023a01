"""The shipped bundles: intact, verified by their export, built from the shipped checkpoints, and
streaming what those checkpoints compute offline."""
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from distill import checkpoint
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
