"""``python -m runtime.stream`` as users run it: files, live audio through PortAudio, bad input."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from runtime import stream
from runtime.bundle import Bundle, seal
from runtime.backends import open_runner
from runtime.engine import Engine

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "assets" / "sample" / "noisy.wav"


def _run(*args):
    return stream.main([str(a) for a in args])


def test_file_mode_keeps_rate_channels_and_sample_format(small_bundle, tmp_path, capsys):
    x, _ = sf.read(SAMPLE, dtype="float32")
    x = x[:32000]
    from runtime.audio import resample

    x44 = resample(x, 16000, 44100)
    sf.write(tmp_path / "in.wav", np.stack([x44, 0.5 * x44], 1), 44100, subtype="PCM_24")
    assert _run("--model", small_bundle, "--input", tmp_path / "in.wav", "--output", tmp_path / "out.wav", "--report", tmp_path / "r.json") == 0
    y, sr = sf.read(tmp_path / "out.wav")
    assert sr == 44100 and y.shape == (len(x44), 2) and sf.info(tmp_path / "out.wav").subtype == "PCM_24"
    r = json.loads((tmp_path / "r.json").read_text())
    for key in ("frame_compute_us", "real_time_factor", "algorithmic_latency_ms", "macs_per_frame", "mmacs_per_second", "frames", "machine"):
        assert key in r
    assert r["algorithmic_latency_ms"] == 20.0 and r["frames"] == 2 * 201, "one engine per channel, 201 frames each"
    assert r["backend"] == "litert" and r["backend_choice"] == "auto" and (r["channels"], r["sample_rate"]) == (2, 44100)
    assert {"p50", "p95", "p99", "max"} <= set(r["frame_compute_us"])
    assert "real-time factor" in capsys.readouterr().out


def test_file_mode_reports_replaced_nan(small_bundle, tmp_path):
    x = np.zeros(8000, np.float32)
    x[10] = np.nan
    sf.write(tmp_path / "in.wav", x, 16000, subtype="FLOAT")
    assert _run("--model", small_bundle, "--input", tmp_path / "in.wav", "--output", tmp_path / "o.wav", "--report", tmp_path / "r.json") == 0
    assert json.loads((tmp_path / "r.json").read_text())["nonfinite_samples_replaced"] == 1


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty", "holds no samples"),
        ("truncated", "cannot decode audio"),
        ("text", "cannot decode audio"),
        ("unwritable", "does not exist"),
        ("no-bundle", "no such bundle folder"),
        ("tampered", "does not match its sha256"),
        ("backend", "unknown backend"),
        ("precision", "no model at precision int4 for any backend"),
        ("no-device", "device"),
        ("manifest-field", "missing 'hop'"),
        ("manifest-value", "signal.hop must be a positive integer"),
        ("model-mismatch", "cannot run its"),
        ("same-file", "also an input file"),
        ("format", "name it .wav, .flac or .ogg"),
    ],
)
def test_bad_input_is_one_clear_line(case, message, small_bundle, tmp_path, capsys):
    src, out, model = tmp_path / "in.wav", tmp_path / "out.wav", small_bundle
    sf.write(src, np.zeros(1600, np.float32), 16000)
    extra = []
    if case == "empty":
        sf.write(src, np.zeros(0, np.float32), 16000)
    elif case == "truncated":
        sf.write(tmp_path / "full.flac", np.random.default_rng(0).standard_normal(48000).astype(np.float32) * 0.1, 16000)
        src = tmp_path / "in.flac"
        src.write_bytes((tmp_path / "full.flac").read_bytes()[:300])
    elif case == "text":
        src.write_text("RIFF? no, just text")
    elif case == "unwritable":
        out = tmp_path / "missing" / "out.wav"
    elif case == "no-bundle":
        model = tmp_path / "nowhere"
    elif case == "tampered":
        model = tmp_path / "b"
        shutil.copytree(small_bundle, model)
        (model / "model.onnx").write_bytes((model / "model.onnx").read_bytes()[:-10] + b"0123456789")
    elif case == "backend":
        extra = ["--backend", "tensorrt"]
    elif case == "precision":
        extra = ["--precision", "int4"]
    elif case.startswith("manifest") or case == "model-mismatch":
        model = tmp_path / "b"
        shutil.copytree(small_bundle, model)
        manifest = json.loads((model / "manifest.json").read_text())
        if case == "manifest-field":
            del manifest["signal"]["hop"]
        elif case == "manifest-value":
            manifest["signal"]["hop"] = 0
        else:  # a state shape that the model file does not take
            manifest["states"][0]["shape"][-1] += 1
        (model / "manifest.json").write_text(json.dumps(seal(manifest)))  # re-sealed: these cases test the checks behind the checksum
    elif case == "same-file":
        out = src
    elif case == "format":
        out = tmp_path / "out.mp3"
    if case == "no-device":
        code = _run("--model", model, "--mic", "--device", "999")
    else:
        code = _run("--model", model, "--input", src, "--output", out, *extra)
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    if case == "same-file":
        assert sf.read(src)[0].shape == (1600,) and not sf.read(src)[0].any(), "the input must be left as it was"
    else:
        assert not out.exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--atten-limit-db", "nan"], "--atten-limit-db"),
        (["--atten-limit-db", "-20"], "--atten-limit-db"),
        (["--threads", "0"], "--threads"),
        (["--report", "{src}"], "--report"),
    ],
)
def test_bad_options_are_refused_before_any_work(extra, message, small_bundle, tmp_path, capsys):
    src, out = tmp_path / "in.wav", tmp_path / "out.wav"
    sf.write(src, np.zeros(1600, np.float32), 16000)
    with pytest.raises(SystemExit) as e:
        _run("--model", small_bundle, "--input", src, "--output", out, *(a.format(src=src) for a in extra))
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists() and sf.read(src)[0].shape == (1600,)


def test_device_check_without_any_device():
    class NoDevices:
        @staticmethod
        def query_devices(*a):
            return []

    with pytest.raises(stream.DeviceError, match="no audio devices"):
        stream._device(NoDevices, None)


def test_runtime_needs_neither_torch_nor_distill(small_bundle, tmp_path):
    """Run the file mode in a fresh interpreter where importing torch or distill fails."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'distill', 'export'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from runtime import stream\n"
        "for backend, precision in [('onnxruntime', 'fp32'), ('onnxruntime', 'int8'), ('litert', 'fp32'), ('litert', 'int8io')]:\n"
        f"    assert stream.main(['--model', r'{small_bundle}', '--input', r'{SAMPLE}', '--output', r'{tmp_path / 'o.wav'}',\n"
        "                        '--backend', backend, '--precision', precision]) == 0\n"
        "assert 'torch' not in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=tmp_path, capture_output=True)


def _portaudio():
    try:
        import sounddevice  # noqa: F401
    except OSError:
        if os.environ.get("REQUIRE_PORTAUDIO"):
            raise
        pytest.skip("PortAudio is not installed (CI installs libportaudio2 and requires this test)")


ASOUNDRC = """
pcm.filemic {{
    type file
    slave.pcm "null"
    file "/dev/null"
    infile "{infile}"
    format "raw"
    hint {{ show on description "file-backed microphone" }}
}}
pcm.filespk {{
    type file
    slave.pcm "null"
    file "{outfile}"
    format "raw"
    hint {{ show on description "file-backed speaker" }}
}}
"""


@pytest.mark.parametrize("mode", ["inline", "worker"])
def test_mic_path_through_a_real_portaudio_stream(mode, small_bundle, tmp_path):
    """ALSA 'file' devices stand in for microphone and speaker: the real PortAudio callback path
    runs at free-run speed with a file as microphone, and what reaches the speaker is recorded."""
    _portaudio()
    x, _ = sf.read(SAMPLE, dtype="float32")
    x = x[: 2 * 16000]
    x.astype("<f4").tofile(tmp_path / "in.raw")
    (tmp_path / ".asoundrc").write_text(ASOUNDRC.format(infile=tmp_path / "in.raw", outfile=tmp_path / "out.raw"))
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "runtime.stream", "--mic", "--model", str(small_bundle), "--device", "filemic,filespk",
           "--mode", mode, "--seconds", "2.5", "--report", str(tmp_path / "r.json")]  # fmt: skip
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["mode"] == mode and r["frames"] > 0 and "input_overflows" in r and "output_underflows" in r
    played = np.fromfile(tmp_path / "out.raw", "<f4")
    assert np.isfinite(played).all()
    if mode == "worker":
        # at free-run speed the device outpaces any worker: the rings must overflow and underflow,
        # counted, not block the callback or crash
        assert r["input_overflows"] > 0 and r["output_underflows"] > 0
    else:
        # the callback ran the engine on every block, so what was played is the file-mode output
        b = Bundle(small_bundle)
        expected = Engine(b, open_runner(b, "onnxruntime", "fp32")).run(x)[16000 : 16000 + 8000]
        lag = next((k for k in range(0, 8000) if np.allclose(played[k + 16000 : k + 16000 + 100], expected[:100], atol=1e-5)), None)
        assert lag is not None, "denoised file-mode output not found in what was played"
        assert np.abs(played[lag + 16000 : lag + 24000] - expected).max() < 1e-5
