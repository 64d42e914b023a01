"""``tiny-denoise`` (``python -m runtime.stream``) on files, folders and pipes: formats kept, damaged
input refused, clipping counted, models by name, quiet on a closed pipe."""
import io
import json
import os
import subprocess
import sys
import tomllib
from importlib import import_module
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from runtime import stream
from runtime.backends import LITERT_CHATTER, stderr_without
from runtime.models import SHIPPED

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "assets" / "sample" / "noisy.wav"


def _run(*args):
    return stream.main([str(a) for a in args])


def _speech(seconds=1.0, rate=16000):
    import soxr

    x, _ = sf.read(SAMPLE, dtype="float32")
    x = x[: int(seconds * 16000)]
    return x if rate == 16000 else soxr.resample(x, 16000, rate).astype(np.float32)


def _subprocess(*args, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "runtime.stream", *map(str, args)], env=env, capture_output=True, timeout=120, **kw)


def _one_error(capsys, message):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err


def test_a_cut_wav_is_refused(small_bundle, tmp_path, capsys):
    sf.write(tmp_path / "full.wav", _speech(), 16000)
    data = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    assert _run("--model", small_bundle, "--input", tmp_path / "cut.wav", "--output", tmp_path / "out.wav") == 2
    _one_error(capsys, "truncated: its header promises 1.00 s (16000 frames) but the file holds only 0.50 s")
    assert not (tmp_path / "out.wav").exists()
    # what is there can still be asked for
    assert _run("--model", small_bundle, "--input", tmp_path / "cut.wav", "--output", tmp_path / "out.wav", "--seconds", "0.25") == 0
    assert sf.info(tmp_path / "out.wav").frames == 4000


@pytest.mark.parametrize("suffix, subtype, clipped", [(".flac", "PCM_24", True), (".wav", "FLOAT", False)])
def test_clipping_is_counted_and_warned(suffix, subtype, clipped, small_bundle, tmp_path, capsys):
    """A float input beyond full scale through a model that keeps everything (0 dB limit): an
    integer output clips, and says how much; a float output keeps the values."""
    x = np.tile(np.r_[np.full(100, 1.5), np.full(100, -0.5)], 40).astype(np.float32)
    sf.write(tmp_path / "in.wav", x, 16000, subtype="FLOAT")
    out = tmp_path / f"out{suffix}"
    args = ["--model", small_bundle, "--input", tmp_path / "in.wav", "--output", out, "--atten-limit-db", "0", "--report", tmp_path / "r.json"]
    assert _run(*args) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert sf.info(out).subtype == subtype
    err = capsys.readouterr().err
    if clipped:
        assert r["clipped_samples"] == int((np.abs(x) > 1).sum()) == 4000
        assert "warning:" in err and "4000 output samples (50.00%) were beyond full scale and clipped" in err
    else:
        assert r["clipped_samples"] == 0 and "clipped" not in err
        assert np.abs(sf.read(out)[0] - x).max() < 1e-5


@pytest.mark.parametrize("rate, subtype, suffix", [(48000, "PCM_16", ".wav"), (44100, "FLOAT", ".wav"), (22050, "PCM_24", ".flac"), (8000, "PCM_16", ".flac")])
def test_rate_and_sample_format_are_kept(rate, subtype, suffix, small_bundle, tmp_path):
    src, out = tmp_path / f"in{suffix}", tmp_path / f"out{suffix}"
    sf.write(src, _speech(0.5, rate), rate, subtype=subtype)
    assert _run("--model", small_bundle, "--input", src, "--output", out) == 0
    info = sf.info(out)
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (rate, 1, subtype, sf.info(src).frames)


def test_high_band_is_kept_or_dropped(small_bundle, tmp_path):
    x = _speech(1.0, 48000) + 0.05 * np.sin(2 * np.pi * 12000 * np.arange(48000) / 48000).astype(np.float32)
    sf.write(tmp_path / "in.wav", np.stack([x, x], 1), 48000, subtype="FLOAT")

    def tone(path):
        y = sf.read(path)[0][:, 0]
        return float((np.abs(np.fft.rfft(y)) ** 2)[11990:12010].sum())  # 1 Hz bins: 12 kHz +- 10 Hz

    assert _run("--model", small_bundle, "--input", tmp_path / "in.wav", "--output", tmp_path / "keep.wav", "--report", tmp_path / "r.json") == 0
    assert _run("--model", small_bundle, "--input", tmp_path / "in.wav", "--output", tmp_path / "drop.wav", "--drop-high-band") == 0
    assert tone(tmp_path / "keep.wav") > 0.01 * tone(tmp_path / "in.wav")
    assert tone(tmp_path / "drop.wav") < 1e-4 * tone(tmp_path / "in.wav")
    assert json.loads((tmp_path / "r.json").read_text())["high_band"].startswith("kept")


def test_seconds_limits_the_file(small_bundle, tmp_path):
    sf.write(tmp_path / "in.wav", _speech(1.0, 44100), 44100)
    assert _run("--model", small_bundle, "--input", tmp_path / "in.wav", "--output", tmp_path / "out.wav", "--seconds", "0.3") == 0
    assert sf.info(tmp_path / "out.wav").frames == round(0.3 * 44100)


def test_non_finite_input(small_bundle, tmp_path, capsys):
    sf.write(tmp_path / "nan.wav", np.full(1600, np.nan, np.float32), 16000, subtype="FLOAT")
    assert _run("--model", small_bundle, "--input", tmp_path / "nan.wav", "--output", tmp_path / "out.wav") == 2
    _one_error(capsys, "all 1600 samples are NaN or infinite")
    assert not (tmp_path / "out.wav").exists()
    x = _speech(0.5)
    x[[3, 30]] = [np.nan, -np.inf]
    sf.write(tmp_path / "some.wav", x, 16000, subtype="FLOAT")
    assert _run("--model", small_bundle, "--input", tmp_path / "some.wav", "--output", tmp_path / "out.wav") == 0
    assert "warning: " in capsys.readouterr().err and np.isfinite(sf.read(tmp_path / "out.wav")[0]).all()


def test_a_folder_keeps_its_tree_and_survives_bad_files(small_bundle, tmp_path, capsys):
    src, dst = tmp_path / "in", tmp_path / "out"
    (src / "a" / "b").mkdir(parents=True)
    sf.write(src / "one.wav", _speech(0.5), 16000)
    sf.write(src / "a" / "b" / "two.flac", np.stack([_speech(0.5, 48000)] * 2, 1), 48000, subtype="PCM_24")
    (src / "a" / "bad.wav").write_text("not audio")
    (src / "notes.txt").write_text("skipped: not audio by its name")
    assert _run("--model", small_bundle, "--input", src, "--output", dst, "--report", tmp_path / "r.json") == 1
    assert sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file()) == ["a/b/two.flac", "one.wav"]
    assert sf.info(dst / "a" / "b" / "two.flac").channels == 2 and sf.info(dst / "a" / "b" / "two.flac").samplerate == 48000
    out, err = capsys.readouterr()
    assert "2 of 3 files denoised" in out and "real-time factor" in out
    assert err.strip().splitlines()[-2:] == [f"failed: {src / 'a' / 'bad.wav'}: cannot decode audio (Format not recognised.); is it a WAV/FLAC/OGG file?",
                                             "error: 1 of 3 files failed (listed above); the others were written"]  # fmt: skip
    r = json.loads((tmp_path / "r.json").read_text())
    assert len(r["done"]) == 2 and r["failed"][0]["input"].endswith("bad.wav") and r["audio_seconds"] == 1.0


@pytest.mark.parametrize("where", ["same", "inside"])
def test_a_folder_is_never_written_into_itself(where, small_bundle, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "one.wav", _speech(0.2), 16000)
    dst = src if where == "same" else src / "clean"
    assert _run("--model", small_bundle, "--input", src, "--output", dst) == 2
    _one_error(capsys, "or inside it; write to a folder outside the input")
    assert sorted(p.name for p in src.rglob("*")) == ["one.wav"]


def test_stdin_to_stdout_is_the_file_result(small_bundle, tmp_path):
    sf.write(tmp_path / "in.wav", np.stack([_speech(1.0, 44100)] * 2, 1), 44100)
    assert _run("--model", small_bundle, "--input", tmp_path / "in.wav", "--output", tmp_path / "file.wav") == 0
    with open(tmp_path / "in.wav", "rb") as f:
        done = _subprocess("--model", small_bundle, "--input", "-", "--output", "-", stdin=f)
    assert done.returncode == 0, done.stderr
    y, rate = sf.read(io.BytesIO(done.stdout))  # stdout holds the WAV and nothing else
    assert rate == 44100 and np.array_equal(y, sf.read(tmp_path / "file.wav")[0])
    assert b"real-time factor" in done.stderr


def test_a_closed_pipe_ends_quietly(small_bundle):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = f"set -o pipefail; {sys.executable} -m runtime.stream --model {small_bundle} --input {SAMPLE} --output - | head -c 100 > /dev/null"
    done = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 141 and "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


def test_model_file_messages(small_checkpoint, small_bundle, tmp_path, capsys):
    sf.write(tmp_path / "in.wav", _speech(0.2), 16000)
    renamed = tmp_path / "weights.bin"
    renamed.write_bytes(small_checkpoint.read_bytes())
    (tmp_path / "x.onnx").write_bytes(b"\0" * 10)
    for model, message in [
        (small_checkpoint, f"is a PyTorch checkpoint, not a bundle; the runtime runs exported bundles: python -m export --checkpoint {small_checkpoint} --out DIR"),
        (renamed, "is a PyTorch checkpoint"),
        (tmp_path / "x.onnx", "is a file, neither a bundle folder nor a checkpoint"),
        (small_bundle / "manifest.json", f"give the bundle's folder ({small_bundle})"),
        ("nonesuch", "no such bundle folder or shipped model (shipped: default, gated"),
    ]:
        assert _run("--model", model, "--input", tmp_path / "in.wav", "--output", tmp_path / "o.wav") == 2
        _one_error(capsys, message)


def test_litert_chatter_is_gone_but_other_stderr_stays(small_bundle, tmp_path, capfd):
    sf.write(tmp_path / "in.wav", _speech(0.2), 16000)
    done = _subprocess("--model", small_bundle, "--backend", "litert", "--input", tmp_path / "in.wav", "--output", tmp_path / "o.wav")
    assert done.returncode == 0 and done.stderr == b"", done.stderr
    with stderr_without(LITERT_CHATTER):
        os.write(2, (LITERT_CHATTER[0] + "\nE: a real error\n").encode())
    assert capfd.readouterr().err == "E: a real error\n"


def test_shipped_models_by_name_and_their_list(tmp_path, capsys):
    assert _run("--list-models") == 0
    rows = {line.split("|")[1].strip(): line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line}
    assert {"default", "gated"} <= set(rows)
    for name in ("default", "gated"):
        m = json.loads((SHIPPED / name / "manifest.json").read_text())
        row = rows[name]
        assert f"{m['model']['params'] / 1e3:.1f} k" in row and f"{m['model']['macs_per_frame'] / 1e3:.1f} k" in row
        assert f"{m['model']['mmacs_per_second']:.1f}" in row
        for key, value in m["verification"]["quality"]["reference"].items():
            assert f"{key} {value:.2f}" in row
    sf.write(tmp_path / "in.wav", _speech(0.3), 16000)
    assert _run("--model", "gated", "--input", tmp_path / "in.wav", "--output", tmp_path / "o.wav", "--report", tmp_path / "r.json") == 0
    assert "gating" in json.loads((tmp_path / "r.json").read_text())


def test_console_script_is_the_cli():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, name = scripts["tiny-denoise"].partition(":")
    assert getattr(import_module(module), name) is stream.cli
