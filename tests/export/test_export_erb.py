"""Export a student on the ERB band grid (band merging and its synthesis inside the graph) and check
that the bundle keeps the all-bin contract and streams what PyTorch computes."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch

import export.__main__ as cli
from distill import checkpoint
from distill.models import build, cost
from runtime.bundle import Bundle


@pytest.fixture(scope="module")
def erb_checkpoint(tmp_path_factory):
    """An untrained student-erb with subband features: every layer the band grid adds is exported."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("erbck") / "erb.pt"
    checkpoint.save(path, build("student-erb", subband=3), step=0)
    return path


@pytest.fixture(scope="module")
def erb_bundle(erb_checkpoint, small_devset, tmp_path_factory):
    out = tmp_path_factory.mktemp("erbb") / "bundle"
    args = ["--checkpoint", str(erb_checkpoint), "--out", str(out), "--devset", str(small_devset)]
    assert cli.main([*args, "--pesq-budget", "5", "--sisdr-budget", "50", "--calibration-frames", "60", "--golden-frames", "20", "--allow-bad-model"]) == 0
    return out


def test_erb_bundle_keeps_the_all_bin_contract(erb_bundle, erb_checkpoint):
    m = json.loads((erb_bundle / "manifest.json").read_text())
    model = checkpoint.load_model(erb_checkpoint)
    assert m["model"]["config"]["erb_low"] == 41 and m["model"]["config"]["erb_bands"] == 40
    assert m["model"]["macs_per_frame"] == cost(model).macs_per_frame
    files = m["files"]
    assert files["model.onnx"]["io"]["input"]["shape"] == [1, 161, 2]
    for name in ("model.int8.tflite", "model.int8io.tflite"):
        io = files[name]["io"]
        assert io["input"]["shape"] == [1, 3, 1, 161] and io["output"]["shape"] == [1, 2, 1, 161]
    assert m["verification"]["passed"]
    for name in ("model.pt2", "model.onnx", "model.tflite"):
        assert m["verification"]["parity"][name]["mask_max_abs_error"] <= 1e-4, name


def test_erb_bundle_streams_what_pytorch_computes(erb_bundle, erb_checkpoint):
    from export.calibration import trace
    from export.verify import parity
    from runtime.backends import open_runner

    model = checkpoint.load_model(erb_checkpoint)
    x, _ = sf.read(cli.SAMPLE, dtype="float32")
    ref = trace(model, x[:16000])
    b = Bundle(erb_bundle)
    for backend in ("pytorch", "onnxruntime", "litert"):
        assert parity(open_runner(b, backend, "fp32"), ref)["mask_max_abs_error"] <= 1e-4, backend
    for backend, precision in (("onnxruntime", "int8"), ("litert", "int8"), ("litert", "int8io")):
        err = parity(open_runner(b, backend, precision), ref)["mask_max_abs_error"]
        assert np.isfinite(err) and err < 0.5, (backend, precision, err)
