"""A student and its MeanFlow corrector exported as a two-stage bundle: the chain in its manifest,
parity of every fp32 set with the PyTorch chain, a runtime that streams both stages (or the
student alone) frame by frame, the eps generator a C port can reproduce, and tampered manifests
refused in one line.

The bundle's ``firmware/`` (the chain loop in C, ``denoise_chain.c``) compiled as firmware would
compile it (``cc -std=c99 -Wall -Wextra -Werror -O2``): ``denoise_chain_replay`` makes exactly the
golden stage calls with the golden inputs and gives the engine's audio under the same stand-in, its
eps generator is ``runtime.noise``'s, a wrong constant or a broken golden folder fails clearly, and
through ctypes with one interpreter per stage it makes the runtime's calls and gives its audio.
Skipped, with the reason, without a C compiler or LiteRT."""
import ctypes
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

import export.__main__ as cli
import runtime.stream as stream
from distill import checkpoint, meco
from distill.dsp import enhance
from distill.models import build, cost
from export import c_reference
from export.build import ExportError, Options
from export.calibration import frames
from export.chain import parts, reference, run, section, torch_runner
from runtime import report
from runtime.backends import SESSIONS, ChainRunner, IntegerSession, LiteRTSession, open_runner
from runtime.bundle import MANIFEST, Bundle, BundleError, seal
from runtime.engine import Engine
from runtime.noise import GAMMA, gaussian
from tests.conftest import level_jumps
from tests.export.test_c_reference import AUDIO_TOLERANCE, F32, FLIPS, INVOKE_GATED, FollowPart, TflmSession, _compile, cc  # noqa: F401 (cc: the fixture)

TINY = dict(channels=(4, 4, 4, 8, 8), rnn_groups=2, embed=8, features=4)
SEED = 3


@pytest.fixture(scope="module")
def chain_checkpoint(tmp_path_factory):
    """An untrained 30 k student and a tiny corrector whose weights are all perturbed (its output
    layer starts at zero otherwise, and the corrector's graph would contribute nothing)."""
    torch.manual_seed(0)
    student = build("student-30k").eval()
    corrector = build("corrector", **TINY).eval()
    with torch.no_grad():
        for p in corrector.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path_factory.mktemp("cck") / "corrector.pt"
    checkpoint.save(path, corrector, step=0, student=meco.student_record(student, "test"), meco={"noise": "seeded", "seed": SEED})
    return path


@pytest.fixture(scope="module")
def chain(chain_checkpoint):
    return meco.load_chain(chain_checkpoint)


@pytest.fixture(scope="module")
def chain_bundle(chain_checkpoint, small_devset, tmp_path_factory):
    """A full export of the chain (untrained, so past the model check with --allow-bad-model and
    with the int8 budget loosened; every check still runs)."""
    import soundfile as sf

    root = tmp_path_factory.mktemp("cb")
    parity = root / "jumps.wav"
    sf.write(parity, level_jumps(np.random.default_rng(2), 16000), 16000)
    args = ["--checkpoint", str(chain_checkpoint), "--out", str(root / "bundle"), "--devset", str(small_devset), "--parity-audio", str(parity),
            "--pesq-budget", "5", "--sisdr-budget", "50", "--calibration-frames", "60", "--golden-frames", "20", "--allow-bad-model"]  # fmt: skip
    assert cli.main(args) == 0
    return root / "bundle"


@pytest.mark.parametrize("predict", ["velocity", "clean"])
def test_stage_graphs_step_as_the_pytorch_chain(predict):
    """What every format is converted from: the stage modules, called frame by frame as the
    bundle's protocol calls them, against the offline chain, for both output parametrisations."""
    torch.manual_seed(1)
    corrector = build("corrector", **TINY, predict=predict).eval()
    with torch.no_grad():
        for p in corrector.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    chain = meco.Chain(build("student-30k").eval(), corrector, "seeded", SEED).eval()
    graphs = parts(chain)
    spec = (np.random.default_rng(4).standard_normal((40, 161, 2)) * 0.3).astype(np.float32)
    mine, ref = run(torch_runner(chain, section(chain, graphs), graphs), spec), reference(chain, spec)
    for k in ("mask", "corrected", "enhanced"):
        assert np.abs(mine[k] - ref[k]).max() < 1e-4, k


def test_stages_quantised_to_int16_export_without_the_c_loop(chain_checkpoint, small_devset, tmp_path, monkeypatch, capsys):
    """When the int8 budget holds only with int16 activations, the bundle is still written, with
    its int16 stages and golden vectors; the C loop, which takes int8 tensors only, is left out
    and the manifest says why."""
    import export.chain as chain_export

    monkeypatch.setitem(chain_export.ATTEMPTS, "tflite", [("int16 activations", 16, None)])
    out = tmp_path / "b16"
    args = ["--checkpoint", str(chain_checkpoint), "--out", str(out), "--devset", str(small_devset), "--formats", "tflite", "--pesq-budget", "5",
            "--sisdr-budget", "50", "--calibration-frames", "30", "--golden-frames", "10", "--allow-bad-model"]  # fmt: skip
    assert cli.main(args) == 0
    assert "firmware: no C loop (student.int8io.tflite: features is int16" in capsys.readouterr().out
    m = json.loads((out / MANIFEST).read_text())
    assert m["verification"]["c_loop"] == {"written": False, "why": "student.int8io.tflite: features is int16; the C loop (firmware/) takes quantised int8 tensors only"}
    assert not (out / "firmware").exists() and (out / "golden").is_dir()
    assert "denoise_chain_replay" not in (out / "README.md").read_text()
    Bundle(out)


def _signal(seed: int, n: int = 12000) -> np.ndarray:
    return level_jumps(np.random.default_rng(seed), n)


def test_manifest_describes_the_chain(chain_bundle, chain):
    m = json.loads((chain_bundle / "manifest.json").read_text())
    c = m["chain"]
    assert c["order"] == ["student", "corrector"]
    sets = {(f["format"], f["precision"]) for f in m["files"].values() if f["kind"] == "part"}
    assert sets == {("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"), ("tflite", "int8"), ("tflite", "int8io")}
    student, corrector = c["parts"]["student"], c["parts"]["corrector"]
    assert student["inputs"][0] == "features" and corrector["inputs"][:3] == ["estimate", "noisy", "eps"]
    assert [s["name"] for s in m["states"]] == student["states"] + corrector["states"]
    assert student["states"] == [f"student_{n}" for n in chain.student.state_names()]
    assert {s["part"] for s in m["states"]} == {"student", "corrector"}
    assert student["macs_per_frame"] == cost(chain.student).macs_per_frame
    # the time embedding is folded into constants: the exported corrector runs fewer MACs than its training step
    assert 0 < corrector["macs_per_frame"] < cost(chain.corrector).macs_per_frame
    assert m["model"]["macs_per_frame"] == student["macs_per_frame"] + corrector["macs_per_frame"]
    assert c["eps"]["generator"] == "splitmix64_box_muller" and c["eps"]["seed"] == SEED and c["eps"]["shape"] == [1, 2, 1, 161]
    assert corrector["sigma_max"] == chain.corrector.config.sigma_max and m["transforms"]["flow"]["power"] == chain.corrector.config.compress
    ver = m["verification"]
    assert ver["passed"]
    for name in ("onnx/fp32", "tflite/fp32"):
        p = ver["parity"][name]
        assert p["passed"] and max(p["mask_max_abs_error"], p["corrected_max_abs_error"]) <= Options().parity_tolerance
    for name in ("onnx/int8", "tflite/int8", "tflite/int8io"):
        assert ver["parity"][name]["corrected_snr_db"] > 20 and ver["quality"]["results"][name]["passed"]
    assert {"student", "chain_eps_seeded", "chain_eps_zero"} <= set(ver["stages"])
    card = (chain_bundle / "README.md").read_text()
    assert "two-stage" in card and "splitmix64_box_muller" in card


@pytest.mark.parametrize("backend", ["onnxruntime", "litert"])
def test_fp32_chain_streams_as_the_pytorch_chain(chain_bundle, chain, backend):
    """Frame by frame, both stages within 1e-4 of the PyTorch chain (student mask, corrector
    output), and the engine's waveform within 1e-4 of ``Chain.enhance``."""
    x = _signal(5)
    spec = frames(chain, x).numpy()
    bundle = Bundle(chain_bundle)
    runner = open_runner(bundle, backend, "fp32")
    got, ref = run(runner, spec), reference(chain, spec)
    for k in ("mask", "corrected"):
        assert np.abs(got[k] - ref[k]).max() <= 1e-4, k
    y = Engine(bundle, runner).run(x)
    with torch.no_grad():
        expected = chain.enhance(torch.from_numpy(x)[None])[0].numpy()
    assert np.abs(y - expected).max() <= 1e-4
    assert np.abs(y - Engine(bundle, open_runner(bundle, backend, "fp32", stages="student")).run(x)).max() > 1e-3, "the corrector changes the output"


def test_stages_student_is_the_student_alone(chain_bundle, chain):
    """``stages="student"`` gives the student's own enhancement and never calls the corrector."""
    x = _signal(6)
    bundle = Bundle(chain_bundle)
    runner = open_runner(bundle, "litert", "fp32", stages="student")
    assert list(runner.parts) == ["student"], "the corrector is not in the run"
    engine = Engine(bundle, runner)
    y = engine.run(x)
    with torch.no_grad():
        expected = enhance(chain.student, torch.from_numpy(x)[None])[0].numpy()
    assert np.abs(y - expected).max() <= 1e-4
    r = report.build(engine, "litert", "fp32", 1, len(x) / 16000)
    s = bundle.chain["parts"]
    assert r["macs_per_frame"] == s["student"]["macs_per_frame"]
    assert r["chain"]["per_stage"]["corrector"] == {"ran": False, "macs_per_frame": s["corrector"]["macs_per_frame"], "compute_us": None}
    assert "corrector bypassed" in report.summary(r)


def test_eps_zero_streams_as_the_pytorch_chain_with_eps_zero(chain_bundle, chain, tmp_path):
    """A manifest whose eps source is zero (re-sealed) runs the deterministic chain z_1 = estimate."""
    copy = tmp_path / "b"
    shutil.copytree(chain_bundle, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["chain"]["eps"] = {k: v for k, v in m["chain"]["eps"].items() if k not in ("seed", "golden")} | {"generator": "zero"}
    (copy / "manifest.json").write_text(json.dumps(seal(m)))
    spec = frames(chain, _signal(7)).numpy()
    got = run(open_runner(Bundle(copy), "onnxruntime", "fp32"), spec)["corrected"]
    assert np.abs(got - reference(meco.Chain(chain.student, chain.corrector, "zero"), spec)["corrected"]).max() <= 1e-4
    assert np.abs(got - reference(chain, spec)["corrected"]).max() > 1e-2, "eps matters"


def test_eps_is_splitmix64_with_box_muller(chain_bundle):
    """The generator the manifest describes, written out sequentially as a C port would; the
    golden eps are its first frames; frames drawn later in a stream continue the sequence."""
    state = SEED
    words = []
    for _ in range(4):
        state = (state + GAMMA) % 2**64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
        words.append(z ^ (z >> 31))
    expected = []
    for a, b in (words[:2], words[2:]):
        u1, u2 = ((a >> 11) + 1) * 2.0**-53, (b >> 11) * 2.0**-53
        r = np.sqrt(-2 * np.log(u1))
        expected.append([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)])
    eps = np.load(chain_bundle / "golden" / "eps.npy")
    assert np.array_equal(eps[0, :2], np.array(expected, np.float32))
    assert np.array_equal(eps, gaussian(SEED, 0, len(eps), 161))
    assert np.array_equal(gaussian(SEED, 7, 3, 161), eps[7:10])
    assert abs(float(gaussian(SEED, 0, 200, 161).std()) - 1) < 0.02


@pytest.mark.parametrize("precision", ["int8", "int8io"])
def test_int8_chains_run_from_the_command_line(chain_bundle, precision, tmp_path, capsys):
    import soundfile as sf

    wav = tmp_path / "in.wav"
    sf.write(wav, _signal(8), 16000)
    code = stream.main(["--model", str(chain_bundle), "--input", str(wav), "--output", str(tmp_path / "out.wav"), "--precision", precision,
                        "--report", str(tmp_path / "r.json")])  # fmt: skip
    assert code == 0 and "stages all: student" in capsys.readouterr().out
    r = json.loads((tmp_path / "r.json").read_text())
    per = r["chain"]["per_stage"]
    assert per["corrector"]["ran"] and per["corrector"]["compute_us"]["mean"] > 0
    assert r["macs_per_frame"] == per["student"]["macs_per_frame"] + per["corrector"]["macs_per_frame"]
    y, _ = sf.read(tmp_path / "out.wav", dtype="float32")
    assert np.isfinite(y).all() and np.abs(y).max() > 0


def test_golden_calls_replay_on_both_integer_stages(chain_bundle):
    """Each int8io stage's recorded integer calls give its recorded outputs under LiteRT, and TFLM
    replayed both stages (where tflite-micro is installed)."""
    bundle = Bundle(chain_bundle)
    for name, part in bundle.chain["parts"].items():
        entry = bundle.files[f"{name}.int8io.tflite"]
        with np.load(chain_bundle / entry["golden"]["file"]) as f:
            rec = {k: f[k] for k in f.files}
        assert rec["frames"].tolist() == list(range(20))
        session = SESSIONS["litert"](chain_bundle / f"{name}.int8io.tflite", part["inputs"], part["outputs"], 1)
        for i in (0, 19):
            for n, o in zip(part["outputs"], session.run([rec[n][i] for n in part["inputs"]])):
                assert np.array_equal(o, rec[n][i]), (name, n, i)
    tflm = bundle.manifest["verification"]["tflm"]
    if "skipped" in tflm:
        pytest.skip(tflm["skipped"])
    assert set(tflm["files"]) == {"student.int8io.tflite", "corrector.int8io.tflite"} and tflm["passed"]


def _swap_order(m):
    m["chain"]["order"] = ["corrector", "student"]


TAMPERED = {
    "order": (_swap_order, "chain.order"),
    "generator": (lambda m: m["chain"]["eps"].update(generator="mt19937"), "chain.eps.generator"),
    "seed": (lambda m: m["chain"]["eps"].update(seed=-1), "chain.eps.seed"),
    "flow-power": (lambda m: m["transforms"]["flow"].update(power=0), "transforms.flow.power"),
    "no-eps-input": (lambda m: m["chain"]["parts"]["corrector"]["inputs"].remove("eps"), "must take estimate, noisy and eps"),
    "state-without-part": (lambda m: m["chain"]["parts"]["corrector"]["states"].pop(), "states without a part"),
    "string-macs": (lambda m: m["chain"]["parts"]["corrector"].update(macs_per_frame="10"), "chain part corrector: macs_per_frame"),
    "renamed-tensor": (lambda m: m["files"]["corrector.onnx"]["io"]["outputs"][0].update(name="out"), "not those of chain part corrector"),
    "no-eps": (lambda m: m["chain"].pop("eps"), "missing 'eps'"),
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_tampered_chain_gives_one_clear_line(case, chain_bundle, tmp_path, capsys):
    import soundfile as sf

    copy = tmp_path / "b"
    shutil.copytree(chain_bundle, copy)
    m = json.loads((copy / "manifest.json").read_text())
    edit, message = TAMPERED[case]
    edit(m)
    (copy / "manifest.json").write_text(json.dumps(seal(m)))  # re-sealed: the checks behind the checksum
    sf.write(tmp_path / "in.wav", _signal(3, 4000), 16000)
    code = stream.main(["--model", str(copy), "--input", str(tmp_path / "in.wav"), "--output", str(tmp_path / "out.wav")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    assert not (tmp_path / "out.wav").exists()


def test_stages_needs_a_two_stage_bundle(tmp_path, capsys):
    import soundfile as sf

    sf.write(tmp_path / "in.wav", _signal(4, 4000), 16000)
    code = stream.main(["--model", "default", "--input", str(tmp_path / "in.wav"), "--output", str(tmp_path / "out.wav"), "--stages", "student"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not a two-stage bundle" in err[0], err


def test_chain_runner_refuses_pytorch(chain_bundle):
    with pytest.raises(BundleError, match="two-stage bundles run on"):
        open_runner(Bundle(chain_bundle), "pytorch", "fp32")


def test_a_corrector_without_its_student_is_refused_in_one_line(tmp_path, capsys):
    ck = tmp_path / "bare.pt"
    checkpoint.save(ck, build("corrector", **TINY))
    assert cli.main(["--checkpoint", str(ck), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "holds no student" in err[0], err
    assert not (tmp_path / "b").exists()


# The chain loop in C (firmware/denoise_chain.c) on the int8io stages.

COMPUTED = ("features", "estimate", "noisy")  # stage inputs computed from the spectrum: two FFTs may round them 1 LSB apart


def test_bundle_has_the_chain_loop_and_its_golden_audio(chain_bundle):
    b = Bundle(chain_bundle)
    listed = {n for n, f in b.files.items() if f["kind"] == "c_reference"}
    assert listed == {f"firmware/{n}" for n in (*c_reference.CHAIN_FILES, c_reference.CONFIG)}
    assert all(f"golden/{n}.npy" in b.files for n in ("audio_in", "audio_out", "audio_out_replay"))
    assert len(np.load(chain_bundle / "golden" / "audio_in.npy")) == 20 * b.signal["hop"]
    assert "`firmware/` is the whole streaming loop around the int8io stages" in (chain_bundle / "README.md").read_text()


def _replay(cc, root, tmp_path, firmware=None):
    firmware = firmware or root / "firmware"
    exe = _compile(cc, tmp_path / "denoise_chain_replay", [firmware / n for n in c_reference.CHAIN_REPLAY])
    dump = tmp_path / "dump"
    dump.mkdir(exist_ok=True)
    return subprocess.run([str(exe), str(root / "golden"), str(dump)], capture_output=True, text=True), dump


def _calls(root, stage: str) -> dict[str, np.ndarray]:
    with np.load(root / "golden" / f"{stage}.int8io.npz") as z:
        return dict(z)


def test_chain_replay_makes_the_golden_calls_with_the_golden_inputs_and_the_engine_audio(cc, chain_bundle, tmp_path):
    """From the replay's dumps: every stage's inputs on every frame against its golden call (states
    and eps exact; features, estimate and noisy within 1 LSB on at most 0.1 %), the generator's eps
    against golden/eps.npy, and the audio against the engine under the same stand-in."""
    run, dump = _replay(cc, chain_bundle, tmp_path)
    assert run.returncode == 0 and run.stdout.endswith("passed\n"), run.stdout + run.stderr
    b = Bundle(chain_bundle)
    for name, f in b.parts("tflite", "int8io").items():
        calls, sizes = _calls(chain_bundle, name), [int(np.prod(t["shape"])) for t in f.io["inputs"]]
        rows = np.fromfile(dump / f"{name}.i8", np.int8).reshape(-1, sum(sizes))
        assert len(rows) == len(calls["frames"]) == 20
        for t, v in zip(f.io["inputs"], np.split(rows, np.cumsum(sizes)[:-1], axis=1)):
            want = calls[t["name"]].reshape(len(v), -1)
            if t["name"] in COMPUTED:
                diff = np.abs(v.astype(int) - want)
                assert diff.max() <= 1 and (diff > 0).mean() <= FLIPS, f"{name}: {t['name']}"
            else:
                assert np.array_equal(v, want), f"{name}: {t['name']}"
    eps = np.load(chain_bundle / "golden" / "eps.npy")  # [T, F, 2]
    ours = np.fromfile(dump / "eps.f32", np.float32).reshape(len(eps), 2, -1).transpose(0, 2, 1)
    assert np.abs(ours - eps).max() <= 1e-6 * max(1.0, float(np.abs(eps).max()))
    audio, want = np.fromfile(dump / "audio_out.f32", np.float32), np.load(chain_bundle / "golden" / "audio_out_replay.npy")
    assert np.abs(audio - want).max() <= AUDIO_TOLERANCE * np.abs(want).max()


@pytest.fixture(scope="module")
def chain_lib(cc, chain_bundle, tmp_path_factory):
    """The bundle's chain loop as a shared library."""
    path = tmp_path_factory.mktemp("chainlib") / "libchain.so"
    lib = ctypes.CDLL(str(_compile(cc, path, [chain_bundle / "firmware" / n for n in c_reference.CHAIN_LOOP], shared=True)))
    lib.denoise_chain_create.restype = ctypes.c_void_p
    lib.denoise_chain_create.argtypes = [INVOKE_GATED, ctypes.c_void_p]  # the same signature: ctx, part, inputs, outputs
    lib.denoise_chain_process_frame.argtypes = [ctypes.c_void_p, F32, F32]
    lib.denoise_chain_destroy.argtypes = [ctypes.c_void_p]
    lib.denoise_chain_eps.argtypes = [ctypes.c_uint64, ctypes.c_uint64, F32]
    return lib


def test_eps_generator_in_c_is_runtime_noise(chain_lib):
    """Seeds and stream positions at the ends of their ranges too: uint64 arithmetic wraps alike."""
    for seed in (0, SEED, 0x0123456789ABCDEF, 2**64 - 1):
        for frame in (0, 1, 7, 10**6, 2**40):
            ours = np.zeros(2 * 161, np.float32)
            chain_lib.denoise_chain_eps(seed, frame, ours)
            want = gaussian(seed, frame, 1, 161)[0].T.ravel()  # [2 * F]: real parts, then imaginary
            assert np.abs(ours - want).max() <= 1e-6 * max(1.0, float(np.abs(want).max())), (seed, frame)


CONFIG_TAMPERS = {  # a hand-ported constant off: the replay line that catches it
    "eps zero point": (r'(\{"eps", \d+, \w+, \d+, [^,]+, )(-?\d+)', lambda m: f"{m[1]}{int(m[2]) + 1}", r"\neps: [1-9]\d* of"),
    "eps seed": (r"UINT64_C\((\d+)\)", lambda m: f"UINT64_C({int(m[1]) + 1})", r"eps generator: max difference [1-9]"),
    "flow power": (r"(DENOISE_FLOW_EXPONENT\s+)(-?[\d.]+)f", lambda m: f"{m[1]}{float(m[2]) * 1.01}f", r"estimate and noisy: [1-9]\d* of"),
    "unflow power": (r"(DENOISE_UNFLOW_EXPONENT\s+)(-?[\d.]+)f", lambda m: f"{m[1]}{float(m[2]) * 1.01}f", r"audio: max abs difference"),
    "state start": (r'(\{"corrector_gru0_h", "corrector_gru0_h_out", 1, \d+, \d+, )(-?\d+)', lambda m: f"{m[1]}{int(m[2]) + 1}", r"states: [1-9]\d* of"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_TAMPERS))
def test_chain_replay_fails_on_a_wrong_constant(cc, chain_bundle, tmp_path, case):
    pattern, change, line = CONFIG_TAMPERS[case]
    firmware = tmp_path / "firmware"
    shutil.copytree(chain_bundle / "firmware", firmware)
    config = firmware / c_reference.CONFIG
    text, n = re.subn(pattern, change, config.read_text(), count=1)
    assert n == 1
    config.write_text(text)
    run, _ = _replay(cc, chain_bundle, tmp_path, firmware)
    assert run.returncode == 1 and run.stdout.endswith("FAILED\n") and re.search(line, run.stdout), run.stdout


def test_chain_replay_says_what_is_wrong_with_the_golden_folder(cc, chain_bundle, tmp_path):
    exe = _compile(cc, tmp_path / "r", [chain_bundle / "firmware" / n for n in c_reference.CHAIN_REPLAY])
    golden = tmp_path / "golden"
    shutil.copytree(chain_bundle / "golden", golden)
    calls = _calls(tmp_path, "corrector")
    del calls["eps"]
    np.savez(golden / "corrector.int8io.npz", **calls)
    run = subprocess.run([str(exe), str(golden)], capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.strip().splitlines() == [f"error: {golden}/corrector.int8io.npz: has no array 'eps' (golden calls of another bundle?)"]
    np.save(golden / "eps.npy", gaussian(SEED + 1, 0, 20, 161))  # eps of another seed, with the golden calls of this one
    np.savez(golden / "corrector.int8io.npz", **_calls(chain_bundle, "corrector"))
    run = subprocess.run([str(exe), str(golden)], capture_output=True, text=True)
    assert run.returncode == 1 and run.stdout.endswith("FAILED\n") and re.search(r"eps generator: max difference [1-9]", run.stdout), run.stdout


def _tampered_manifest(chain_bundle, tmp_path, edit) -> Bundle:
    root = tmp_path / "bundle"
    shutil.copytree(chain_bundle, root)
    m = json.loads((root / MANIFEST).read_text())
    edit(m)
    (root / MANIFEST).write_text(json.dumps(seal(m)))
    return Bundle(root, verify=False)


def _float_eps(m):
    m["files"]["corrector.int8io.tflite"]["io"]["inputs"][2].update(dtype="float32")


HEADER_REFUSALS = {  # what the generated denoise_config.h cannot follow: one line from the export
    "float input": (_float_eps, r"^corrector\.int8io\.tflite: eps is float32; the C loop \(firmware/\) takes quantised int8 tensors only$"),
    "no integer_io": (lambda m: m["chain"].pop("integer_io"), r"^chain\.integer_io is missing: .*; re-export the bundle$"),
}


@pytest.mark.parametrize("case", sorted(HEADER_REFUSALS))
def test_chain_config_header_refuses_what_the_loop_cannot_follow(chain_bundle, tmp_path, case):
    edit, message = HEADER_REFUSALS[case]
    with pytest.raises(ExportError, match=message):
        c_reference.chain_config_header(_tampered_manifest(chain_bundle, tmp_path, edit))


def test_chain_export_refuses_golden_calls_the_protocol_does_not_make(chain_bundle, tmp_path):
    """Golden calls of the corrector moved to later frames: write_chain stops with one line."""
    root = tmp_path / "bundle"
    shutil.copytree(chain_bundle, root)
    calls = _calls(root, "corrector")
    calls["frames"] = calls["frames"] + 1
    np.savez(root / "golden" / "corrector.int8io.npz", **calls)
    runner = ChainRunner.open(Bundle(chain_bundle), "litert", "int8io")
    audio = np.load(chain_bundle / "golden" / "audio_in.npy")
    with pytest.raises(ExportError, match=r"^corrector is called on frame 0 but its golden call 0 was made on frame 1; the golden calls and the chain protocol disagree$"):
        c_reference.write_chain(root, runner, audio, lambda *a, **k: None)


@pytest.mark.parametrize("interpreter", ["litert", "tflm"])
def test_chain_c_loop_through_ctypes_matches_the_engine_on_the_same_interpreter(chain_lib, chain_bundle, interpreter):
    """The loop as a shared library, one interpreter per stage behind its invoke (as firmware wires
    TFLM), against the runtime chaining the same stages on the same interpreter: the same calls
    with the same inputs (eps and states exact, features, estimate and noisy within 1 LSB), the
    audio within float rounding."""
    if interpreter == "tflm":
        pytest.importorskip("tflite_micro", reason="tflite-micro has a cp311 x86-64 wheel only (pip install tflite-micro)")
    b = Bundle(chain_bundle)
    files, c = b.parts("tflite", "int8io"), b.chain
    order, session = c["order"], {"litert": LiteRTSession, "tflm": TflmSession}[interpreter]

    def sessions():
        return {n: session(f.path, c["parts"][n]["inputs"], c["parts"][n]["outputs"]) for n, f in files.items()}

    stages = sessions()
    shapes = {n: ([t["shape"] for t in f.io["inputs"]], [t["shape"] for t in f.io["outputs"]]) for n, f in files.items()}
    theirs, errors = {n: [] for n in order}, []

    def invoke(ctx, stage, inputs, outputs):
        try:  # an exception must not leave the C side running on garbage
            name = order[stage]
            ins, outs = shapes[name]
            values = [np.ctypeslib.as_array(inputs[i], (int(np.prod(s)),)).reshape(s).copy() for i, s in enumerate(ins)]
            for i, r in enumerate(stages[name].run(values)):
                np.ctypeslib.as_array(outputs[i], (int(np.prod(outs[i])),))[:] = np.asarray(r).ravel()
            theirs[name].append(values)
            return 0
        except Exception as e:
            errors.append(e)
            return 1

    callback = INVOKE_GATED(invoke)
    st = chain_lib.denoise_chain_create(callback, None)
    assert st
    audio, hop = np.load(chain_bundle / "golden" / "audio_in.npy"), b.signal["hop"]
    y = np.zeros_like(audio)
    try:
        for t in range(len(audio) // hop):
            out = np.zeros(hop, np.float32)
            assert chain_lib.denoise_chain_process_frame(st, out, np.ascontiguousarray(audio[t * hop : (t + 1) * hop])) == 0, errors
            y[t * hop : (t + 1) * hop] = out
    finally:
        chain_lib.denoise_chain_destroy(st)

    follow = {n: FollowPart(s, theirs[n], lambda: 0, COMPUTED) for n, s in sessions().items()}
    t = b.manifest["transforms"]
    runner = ChainRunner(c, b.states, (t["features"]["power"], t["flow"]["power"]), {n: IntegerSession(follow[n], files[n].io) for n in order})
    want = Engine(b, runner).process(audio)
    for n in order:
        assert len(follow[n].given) == len(theirs[n]) == len(audio) // hop, n
        assert all(np.array_equal(u, v) for a, w in zip(follow[n].given, theirs[n]) for u, v in zip(a, w)), n
        computed = [i for i, name in enumerate(c["parts"][n]["inputs"]) if name in COMPUTED]
        ours, others = np.concatenate([o.ravel() for o in follow[n].ours]), np.concatenate([v[i].ravel() for v in theirs[n] for i in computed])
        diff = np.abs(ours.astype(int) - others)
        assert diff.max() <= 1 and (diff > 0).mean() <= FLIPS, f"{n}: {(diff > 0).sum()} values differ"
    assert np.abs(y - want).max() <= AUDIO_TOLERANCE * np.abs(want).max()
