"""A student and its MeanFlow corrector exported as a two-stage bundle: the chain in its manifest,
parity of every fp32 set with the PyTorch chain, a runtime that streams both stages (or the
student alone) frame by frame, the eps generator a C port can reproduce, and tampered manifests
refused in one line."""
import json
import shutil

import numpy as np
import pytest
import torch

import export.__main__ as cli
import runtime.stream as stream
from distill import checkpoint, meco
from distill.dsp import enhance
from distill.models import build, cost
from export.build import Options
from export.calibration import frames
from export.chain import reference, run
from runtime import report
from runtime.backends import SESSIONS, open_runner
from runtime.bundle import Bundle, BundleError, seal
from runtime.engine import Engine
from runtime.noise import GAMMA, gaussian
from tests.conftest import level_jumps

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
