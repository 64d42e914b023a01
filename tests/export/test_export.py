"""Export a small student end to end, as a user would, and check the bundle it writes."""
import json
import shutil

import numpy as np
import pytest
import soundfile as sf

import export.__main__ as cli
from distill import checkpoint
from export import firmware, to_tflite
from runtime.bundle import Bundle, BundleError, manifest_digest, sha256

FAST = ["--calibration-frames", "60", "--golden-frames", "20"]


@pytest.fixture
def bundle(small_bundle):
    return small_bundle


@pytest.fixture
def ckpt(small_checkpoint):
    return small_checkpoint


@pytest.fixture
def devset(small_devset):
    return small_devset


def test_manifest_lists_every_file_with_its_sha256(bundle, ckpt):
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["schema"] == "tiny-denoise-bundle" and m["schema_version"] == 2
    assert m["manifest_sha256"] == manifest_digest(m)
    on_disk = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()} - {"manifest.json"}
    assert on_disk == set(m["files"])
    for name, entry in m["files"].items():
        assert entry["sha256"] == sha256(bundle / name), name
    models = {(f["format"], f["precision"]) for f in m["files"].values() if f["kind"] == "model"}
    assert models == {("pytorch", "fp32"), ("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"), ("tflite", "int8"), ("tflite", "int8io")}
    assert m["signal"]["sample_rate"] == 16000 and m["signal"]["hop"] == 160 and m["signal"]["latency_ms"] == 20.0
    assert [s["name"] for s in m["states"]] == list(checkpoint.load_model(ckpt).state_names())
    assert m["model"]["params"] > 0 and m["model"]["macs_per_frame"] > 0
    assert all(f["ops"] for f in m["files"].values() if f["kind"] == "model")
    assert (bundle / "README.md").read_text().startswith("# small.pt")
    assert not list(bundle.parent.glob(".bundle.*")), "temporary folders left behind"


def test_fp32_parity_and_quality_recorded(bundle):
    ver = json.loads((bundle / "manifest.json").read_text())["verification"]
    assert ver["passed"]
    for name in ("model.pt2", "model.onnx", "model.tflite"):
        assert ver["parity"][name]["mask_max_abs_error"] <= 1e-4
    for name in ("model.int8.onnx", "model.int8.tflite", "model.int8io.tflite"):
        assert ver["parity"][name]["tolerance"] is None and 10 < ver["parity"][name]["mask_snr_db"] < 200
    assert set(ver["quality"]["results"]) == {"model.int8.onnx", "model.int8.tflite", "model.int8io.tflite"}
    assert all(r["correlation"] > 0 for r in ver["quality"]["results"].values())


def test_untrained_model_fails_the_model_check_and_the_override_is_recorded(bundle):
    """The fixture's model is untrained: it makes its input worse, so only --allow-bad-model ships it."""
    m = json.loads((bundle / "manifest.json").read_text())
    check = m["verification"]["model"]
    assert check["files"] == 2 and check["si_sdr_gain"] < 0 and check["polarity"] == "positive"
    assert not check["passed"] and check["overridden"] and "below its noisy input" in check["problems"][0]
    assert "**overridden** (`--allow-bad-model`)" in (bundle / "README.md").read_text()


def test_exported_models_match_pytorch_when_streamed(bundle, ckpt):
    """Independently of the export's own check: runtime backends against the PyTorch step."""
    from export.calibration import trace
    from export.verify import parity
    from runtime.backends import open_runner

    model = checkpoint.load_model(ckpt)
    x, _ = sf.read(cli.SAMPLE, dtype="float32")
    ref = trace(model, x[:16000])
    b = Bundle(bundle)
    for backend in ("pytorch", "onnxruntime", "litert"):
        assert parity(open_runner(b, backend, "fp32"), ref)["mask_max_abs_error"] <= 1e-4


def test_integer_model_states_keep_one_scale(bundle):
    io = to_tflite.io_details(bundle / "model.int8io.tflite")
    states = json.loads((bundle / "manifest.json").read_text())["states"]
    assert io["features"]["dtype"] == "int8" and io["z"]["dtype"] == "int8"
    for s in states:
        a, b = io[s["name"]], io[s["output"]]
        assert a["dtype"] == b["dtype"] == "int8"
        assert np.float32(a["scale"]) == np.float32(b["scale"]) and a["zero_point"] == b["zero_point"], s["name"]


def test_c_array_round_trips_to_the_flatbuffer(bundle):
    header = (bundle / "model_int8io_tflite.h").read_text()
    assert "extern const unsigned char model_int8io_tflite[];" in header
    source = bundle / "model_int8io_tflite.cc"
    assert "alignas(16) const unsigned char model_int8io_tflite[]" in source.read_text()
    assert firmware.parse_c_bytes(source, "model_int8io_tflite") == (bundle / "model.int8io.tflite").read_bytes()


def test_golden_vectors_replay_on_the_integer_model(bundle):
    """Feeding the golden int8 inputs and initial states reproduces the golden outputs."""
    g = {n: np.load(bundle / "golden" / f"{n}.npy") for n in ("int8io_input", "int8io_output", "int8io_states_in", "int8io_states_out")}
    b = Bundle(bundle)
    from runtime.backends import open_runner

    runner = open_runner(b, "litert", "int8io")
    states = [s.copy() for s in runner.initial_state()]
    assert np.array_equal(np.concatenate([s.ravel() for s in states]), g["int8io_states_in"][0])
    for t in range(len(g["int8io_input"])):
        out = runner.run(g["int8io_input"][t], states)
        states = out[1:]
        assert np.array_equal(out[0], g["int8io_output"][t])
    assert np.array_equal(np.concatenate([s.ravel() for s in states]), g["int8io_states_out"][-1])


def test_tampered_or_missing_file_is_refused(bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match its sha256"):
        Bundle(copy)
    (copy / "model.onnx").unlink()
    with pytest.raises(BundleError, match="missing"):
        Bundle(copy)
    (copy / "manifest.json").write_text("{ not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle(copy)
    with pytest.raises(BundleError, match="no such bundle"):
        Bundle(tmp_path / "nothing")


def test_failed_check_exits_nonzero_and_leaves_no_bundle(ckpt, devset, tmp_path, capsys):
    out = tmp_path / "b"
    """An int8 quality failure, after every file was written: the partial folder goes, the log stays."""
    args = ["--checkpoint", str(ckpt), "--out", str(out), "--formats", "onnx", "--devset", str(devset), "--sisdr-budget", "-100", "--allow-bad-model"]
    assert cli.main([*args, *FAST]) == 1 and not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".b.")]
    assert (tmp_path / "b.export.log").is_file()
    captured = capsys.readouterr()
    assert [line for line in captured.out.splitlines() if line.strip().startswith("model.int8.onnx") and line.endswith("] FAILED")]
    assert "verification failed" in captured.err


@pytest.mark.parametrize("case", ["corrupt-checkpoint", "missing-parent", "exists", "score-model"])
def test_bad_arguments_give_one_clear_line(case, ckpt, tmp_path, capsys):
    out, ck = tmp_path / "b", ckpt
    if case == "corrupt-checkpoint":
        ck = tmp_path / "bad.pt"
        ck.write_bytes(b"\x00" * 100)
    elif case == "score-model":  # a generative teacher: no mask graph to export
        from distill import checkpoint
        from distill.models import build

        ck = tmp_path / "score.pt"
        checkpoint.save(ck, build("score_unet"))
    elif case == "missing-parent":
        out = tmp_path / "no" / "such" / "b"
    else:
        out.mkdir()
    assert cli.main(["--checkpoint", str(ck), "--out", str(out), "--formats", "onnx", *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
