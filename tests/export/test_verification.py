"""The checks an export runs on the model itself, what it does without --devset, and what it prints:
a model with inverted polarity is refused unless overridden (loudly), the shipped sample is the
verification pair when no dev set is given, and converter chatter goes to the export log."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import export.__main__ as cli
from distill import checkpoint
from export import verify

ROOT = Path(__file__).resolve().parents[2]
STUDENT = ROOT / "assets" / "checkpoints" / "student.pt"
FAST = ["--calibration-frames", "60", "--golden-frames", "20"]
CHATTER = ("torchvision", "torchao", "oneDNN", "absl", "XNNPACK", "LiteRT-Torch", "Warning", "W1", "I0000")


@pytest.fixture(scope="module")
def negated(tmp_path_factory):
    """The shipped student with its output negated: as good by SI-SDR, inverted polarity."""
    model = checkpoint.load_model(STUDENT)
    model.negate_output()
    path = tmp_path_factory.mktemp("neg") / "negated.pt"
    checkpoint.save(path, model, step=0)
    return path


@pytest.fixture(scope="module")
def plain_export(tmp_path_factory):
    """``python -m export --checkpoint assets/checkpoints/student.pt --out DIR`` as the README shows
    it (no --devset), in a fresh interpreter, so that everything it prints is seen."""
    out = tmp_path_factory.mktemp("plain") / "bundle"
    run = subprocess.run([sys.executable, "-m", "export", "--checkpoint", str(STUDENT), "--out", str(out), *FAST],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)  # fmt: skip
    return out, run


def test_inverted_polarity_is_refused_before_anything_is_converted(negated, tmp_path, capsys):
    out = tmp_path / "b"
    assert cli.main(["--checkpoint", str(negated), "--out", str(out), *FAST]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: verification failed") and "anti-correlated" in err[0] and "--allow-bad-model" in err[0]
    assert "polarity inverted" in captured.out
    assert not out.exists() and not list(tmp_path.iterdir()), "a refused model leaves nothing behind"


def test_override_exports_an_inverted_model_and_says_so(negated, tmp_path, capsys):
    out = tmp_path / "b"
    assert cli.main(["--checkpoint", str(negated), "--out", str(out), "--formats", "onnx", "--allow-bad-model", *FAST]) == 0
    captured = capsys.readouterr()
    assert [line for line in captured.err.splitlines() if line.startswith("warning:") and "--allow-bad-model" in line]
    assert "model check OVERRIDDEN" in captured.out
    ver = json.loads((out / "manifest.json").read_text())["verification"]
    check = ver["model"]
    assert check["overridden"] and not check["passed"] and check["polarity"] == "inverted"
    assert check["reference"]["correlation"] < -0.9 and check["si_sdr_gain"] > 0, "inverted, yet better than its input by SI-SDR"
    assert ver["passed"]
    assert ver["quality"]["results"]["model.int8.onnx"]["correlation"] < 0, "int8 keeps the polarity of fp32, so it passes"


def test_int8_of_the_other_polarity_fails_quality():
    ref = {"pesq": 2.0, "si_sdr": 10.0, "correlation": 0.9}
    verdicts = verify.judge({"pytorch": ref, "same": dict(ref), "flipped": {**ref, "correlation": -0.9}}, 0.1, 0.5)
    assert verdicts["same"]["passed"] and not verdicts["flipped"]["passed"]


def test_without_devset_the_sample_pair_verifies_the_shipped_student(plain_export):
    out, run = plain_export
    assert run.returncode == 0, run.stderr[-2000:]
    assert "no --devset: verifying on the shipped sample" in run.stdout
    m = json.loads((out / "manifest.json").read_text())
    check, quality = m["verification"]["model"], m["verification"]["quality"]
    assert check["passed"] and not check["overridden"] and check["files"] == 1 and "assets/sample" in check["pairs"]
    assert check["reference"]["correlation"] > 0.9 and check["si_sdr_gain"] > 3
    assert quality["files"] == 1 and set(quality["results"]) == {"model.int8.onnx", "model.int8.tflite", "model.int8io.tflite"}
    assert m["verification"]["passed"]


def test_export_prints_only_its_own_report(plain_export):
    """Converter warnings, C-level stderr and interpreter banners go to DIR.export.log; int8 parity
    rows give the SNR against fp32 and what judges them, not a bare error next to 'ok'."""
    out, run = plain_export
    assert run.stderr == ""
    for line in run.stdout.splitlines():
        assert not any(word in line for word in CHATTER), line
    log = out.parent / "bundle.export.log"
    assert f"go to {log}" in run.stdout
    text = log.read_text()
    assert text.startswith("# python -m export") and "LiteRT-Torch" in text, "the converters' chatter is kept, in the log"
    assert not (out / "bundle.export.log").exists()
    int8_rows = [line for line in run.stdout.splitlines() if line.strip().startswith("model.int8") and "SNR" in line]
    assert len(int8_rows) == 3 and all("int8 vs fp32 mask SNR" in r and "judged by its quality" in r and "max abs" not in r for r in int8_rows)
