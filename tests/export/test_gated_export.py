"""A gated model exported as separate part graphs: the protocol in its manifest, parity with
PyTorch's hard-gated step under every gate mode, and a runtime that never calls a closed branch."""
import json
import shutil

import numpy as np
import pytest

import runtime.stream as stream
from distill import checkpoint
from distill.models import cost, gated_cost
from export import firmware
from export.build import Options
from export.calibration import frames
from export.gated import integer_runner, reference
from export.verify import stream as stream_masks
from runtime import report
from runtime.backends import SESSIONS, GatedRunner, band_energies, bounded_mask, compressed_features, dequantize, open_runner, quantize, requantizer
from runtime.bundle import Bundle, BundleError, seal
from runtime.engine import Engine
from tests.conftest import level_jumps


@pytest.fixture(scope="module")
def model(gated_checkpoint):
    return checkpoint.load_model(gated_checkpoint).eval()


def test_manifest_describes_every_part_and_state(gated_bundle, model):
    m = json.loads((gated_bundle / "manifest.json").read_text())
    g = m["gating"]
    assert g["version"] == 2 and g["order"] == ["trunk", "branch0"]
    trunk = g["parts"]["trunk"]  # the trunk runs the policy too: one call decides the gates
    assert trunk["inputs"][:2] == ["features", "energies"] and trunk["outputs"][:2] == ["z_trunk", "logits"] and "policy_h" in trunk["states"]
    sets = {(f["format"], f["precision"]) for f in m["files"].values() if f["kind"] == "part"}
    assert sets == {("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"), ("tflite", "int8"), ("tflite", "int8io")}
    owners = [s["part"] for s in m["states"]]
    assert [s["name"] for s in m["states"]] == list(model.state_names()) and set(owners) == set(g["order"])
    for name, part in g["parts"].items():  # every input is computed outside, a state, or produced earlier this frame
        earlier = {"features", "energies"} | {s["name"] for s in m["states"]}
        earlier |= {o for p in g["order"][: g["order"].index(name)] for o in g["parts"][p]["outputs"]}
        assert set(part["inputs"]) <= earlier, name
    macs = gated_cost(model)
    assert g["parts"]["branch0"]["macs_per_frame"] == macs["branches"][0]
    assert trunk["macs_per_frame"] == macs["trunk"] + macs["policy"] and trunk["policy_macs_per_frame"] == macs["policy"]
    assert sum(p["macs_per_frame"] for p in g["parts"].values()) == m["model"]["macs_per_frame"] == cost(model).macs_per_frame
    assert g["parts"]["branch0"]["held_when_skipped"] == ["b0_gru_h"]
    assert m["verification"]["passed"]
    assert (gated_bundle / "branch0_int8_tflite.cc").is_file()


def test_int8_trunk_keeps_the_policy_in_float_and_int8io_quantises_it(gated_bundle):
    files = json.loads((gated_bundle / "manifest.json").read_text())["files"]
    tflite, onnx = files["trunk.int8.tflite"], files["trunk.int8.onnx"]
    assert tflite["ops"]["FULLY_CONNECTED"] == 5, "the policy's two input projections, GRU input and hidden layers and output stay float"
    assert tflite["ops"]["FULLY_CONNECTED(INT8)"] > 0 and "policy" in tflite["quantization"]
    assert onnx["quantization"]["kept_float"]["nodes"] >= 17 and "policy" in onnx["quantization"]["kept_float"]["submodules"]
    assert "FULLY_CONNECTED" not in files["trunk.int8io.tflite"]["ops"], "a microcontroller runs the policy in integers too"


def test_integer_chaining_helpers_are_exactly_the_protocols_formulas():
    """The runner's table requantisation is quantise(dequantise(q)) for every integer; the band
    energies are the manifest's formula with numpy's mean, bit for bit."""
    rng = np.random.default_rng(8)
    for dtype in ("int8", "int16"):
        info = np.iinfo(dtype)
        q = np.arange(info.min, info.max + 1).astype(dtype).reshape(1, -1, 1, 1)
        for _ in range(20):
            src = {"scale": float(10 ** rng.uniform(-3, 0)), "zero_point": int(rng.integers(-20, 20)), "dtype": dtype}
            dst = {"scale": float(10 ** rng.uniform(-3, 0)), "zero_point": int(rng.integers(-20, 20)), "dtype": "int8"}
            assert np.array_equal(requantizer(src, dst)(q), quantize(dequantize(q, src), dst))
    for _ in range(200):
        frame = (rng.standard_normal((161, 2)) * 10 ** rng.uniform(-4, 1)).astype(np.float32)
        formula = np.log10(np.square(frame).sum(-1)[:160].reshape(16, 10).mean(-1) + np.float32(1e-8))
        assert np.array_equal(band_energies(frame, 16, 10).view(np.int32), formula.astype(np.float32).view(np.int32))


@pytest.mark.parametrize("backend", ["onnxruntime", "litert"])
@pytest.mark.parametrize("gates", ["on", "off", "policy"])
def test_parts_match_the_pytorch_step(gated_bundle, model, backend, gates):
    spec = frames(model, level_jumps(np.random.default_rng(5), 16000)).numpy()
    expected, used = reference(model, spec, gates)
    runner = open_runner(Bundle(gated_bundle), backend, "fp32", gates=gates)
    assert np.abs(stream_masks(runner, spec) - expected).max() <= 1e-4
    assert runner.usage()["branch_usage"] == [pytest.approx(used.mean(), abs=1e-4)]
    if gates == "policy":
        assert 0.1 < used.mean() < 0.9, "the test policy should switch its branch"


def test_a_closed_branch_is_never_called(gated_bundle, model):
    runner = open_runner(Bundle(gated_bundle), "onnxruntime", "int8")
    calls = {name: 0 for name in runner.parts}
    for name, (session, _) in runner.parts.items():
        def counted(values, run=session.run, name=name):
            calls[name] += 1
            return run(values)

        session.run = counted
    spec = frames(model, level_jumps(np.random.default_rng(6), 16000)).numpy()
    stream_masks(runner, spec)
    u = runner.usage()
    assert calls["trunk"] == u["frames"] == len(spec)
    assert calls["branch0"] == round(u["branch_usage"][0] * len(spec)) and 0 < calls["branch0"] < len(spec)
    g = Bundle(gated_bundle).gating["parts"]
    fixed = g["trunk"]["macs_per_frame"]
    assert u["macs_per_frame"] == pytest.approx(fixed + calls["branch0"] / len(spec) * g["branch0"]["macs_per_frame"])


def test_engine_report_counts_executed_macs(gated_bundle):
    bundle = Bundle(gated_bundle)
    g = bundle.gating["parts"]
    engine = Engine(bundle, open_runner(bundle, "litert", "int8", gates="off"))
    engine.run(level_jumps(np.random.default_rng(7), 8000))
    r = report.build(engine, "litert", "int8", 1, 0.5)
    assert r["gating"]["branch_usage"] == [0.0] and r["gating"]["frames"] == engine.frames
    assert r["macs_per_frame"] == g["trunk"]["macs_per_frame"]
    assert "gates off" in report.summary(r)


def test_gated_runner_refuses_pytorch_and_unknown_modes(gated_bundle):
    bundle = Bundle(gated_bundle)
    with pytest.raises(BundleError, match="gated bundles run on"):
        open_runner(bundle, "pytorch", "fp32")
    with pytest.raises(BundleError, match="unknown gate mode"):
        GatedRunner.open(bundle, "onnxruntime", "fp32", gates="half")
    with pytest.raises(BundleError, match=r"no onnx parts at precision int8io \(this gated bundle has onnx/fp32, onnx/int8, tflite/fp32, tflite/int8, tflite/int8io\)"):
        open_runner(bundle, "onnxruntime", "int8io")


def test_damaged_gated_bundles_are_refused(gated_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(gated_bundle, copy)
    (copy / "branch0.int8.onnx").write_bytes(b"\0" * 10)
    with pytest.raises(BundleError, match="branch0.int8.onnx does not match its sha256"):
        Bundle(copy)
    shutil.rmtree(copy)
    shutil.copytree(gated_bundle, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["gating"]["order"] = ["branch0", "trunk"]
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="changed since export"):
        Bundle(copy)
    (copy / "manifest.json").write_text(json.dumps(seal(m)))  # behind the checksum, the protocol is checked too
    with pytest.raises(BundleError, match="gating.order"):
        Bundle(copy)


def test_gates_flag_needs_a_gated_bundle(small_bundle, tmp_path, capsys):
    import soundfile as sf

    wav = tmp_path / "in.wav"
    sf.write(wav, level_jumps(np.random.default_rng(8), 8000), 16000)
    code = stream.main(["--model", str(small_bundle), "--input", str(wav), "--output", str(tmp_path / "out.wav"), "--gates", "on"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not a gated bundle" in err[0]


def test_stream_cli_runs_a_gated_bundle(gated_bundle, tmp_path, capsys):
    import soundfile as sf

    wav = tmp_path / "in.wav"
    sf.write(wav, level_jumps(np.random.default_rng(9), 16000), 16000)
    code = stream.main(["--model", str(gated_bundle), "--input", str(wav), "--output", str(tmp_path / "out.wav"), "--precision", "int8",
                        "--report", str(tmp_path / "r.json")])  # fmt: skip
    assert code == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert 0 < r["gating"]["mac_ratio"] < 1 and "branch usage" in capsys.readouterr().out


def _drop_branch_file(m):
    for name in ("branch0.onnx", "branch0.tflite"):  # whichever backend runs fp32
        del m["files"][name]


TAMPERED = {
    "state-without-part": (lambda m: m["gating"]["parts"]["trunk"]["states"].remove("gru_h"), "states without a part"),
    "trunk-state-zeroed": (lambda m: m["gating"]["parts"]["branch0"]["zeroed_when_skipped"].append("enc0_prev"), "must split its states"),
    "zero-band-width": (lambda m: m["gating"]["energies"].update(width=0), "gating.energies"),
    "string-band-width": (lambda m: m["gating"]["energies"].update(width="4"), "gating.energies"),
    "no-skip-rule": (lambda m: m["gating"]["parts"]["branch0"].pop("zeroed_when_skipped"), "zeroed_when_skipped"),
    "string-macs": (lambda m: m["gating"]["parts"]["trunk"].update(macs_per_frame="10"), "macs_per_frame"),
    "version-1": (lambda m: m["gating"].pop("version"), "is not trunk, policy, branch0..branch0 (gating version 1)"),
    "version-0": (lambda m: m["gating"].update(version=0), "gating.version 0 is not one of 1, 2"),
    "version-3": (lambda m: m["gating"].update(version=3), "gating protocol version 3 is newer than this runtime follows (2); update tiny-denoise"),
    "no-logits": (lambda m: m["gating"]["parts"]["trunk"]["outputs"].remove("logits"), "gating part trunk must give z_trunk and part trunk logits"),
    "renamed-tensor": (lambda m: m["files"]["trunk.onnx"]["io"]["outputs"][0].update(name="z"), "not those of gating part trunk"),
    "missing-part": (_drop_branch_file, "lacks part(s) branch0"),
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_tampered_gating_gives_one_clear_line(case, gated_bundle, tmp_path, capsys):
    import soundfile as sf

    copy = tmp_path / "b"
    shutil.copytree(gated_bundle, copy)
    m = json.loads((copy / "manifest.json").read_text())
    edit, message = TAMPERED[case]
    edit(m)
    (copy / "manifest.json").write_text(json.dumps(seal(m)))  # re-sealed: the checks behind the checksum
    sf.write(tmp_path / "in.wav", level_jumps(np.random.default_rng(3), 4000), 16000)
    code = stream.main(["--model", str(copy), "--input", str(tmp_path / "in.wav"), "--output", str(tmp_path / "out.wav")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    assert not (tmp_path / "out.wav").exists()


def test_golden_vectors_replay_on_the_int8_parts(gated_bundle):
    """Each part's recorded inputs reproduce its recorded outputs; a branch ran on exactly the
    frames its gate was open, and the masks are the protocol's on the golden frames."""
    bundle = Bundle(gated_bundle)
    g = {n: np.load(gated_bundle / "golden" / f"{n}.npy") for n in ("frames_fp32", "gates", "masks_int8_parts")}
    parts = bundle.parts("tflite", "int8")
    for name, spec in bundle.gating["parts"].items():
        rec = np.load(gated_bundle / "golden" / f"{name}.npz")
        session = SESSIONS["litert"](parts[name].path, spec["inputs"], spec["outputs"], 1)
        for i in (0, len(rec["frames"]) - 1):
            out = session.run([rec[n][i] for n in spec["inputs"]])
            for n, o in zip(spec["outputs"], out):
                assert np.array_equal(o, rec[n][i]), (name, n)
        if name.startswith("branch"):
            assert rec["frames"].tolist() == np.flatnonzero(g["gates"][:, int(name[len("branch") :])]).tolist()
        else:
            assert rec["frames"].tolist() == list(range(len(g["frames_fp32"])))
    assert 0 < g["gates"].mean() < 1, "the golden frames should show the branch both open and closed"
    runner = open_runner(bundle, "litert", "int8")
    assert np.array_equal(stream_masks(runner, g["frames_fp32"]), g["masks_int8_parts"])
    header = (gated_bundle / "golden" / "golden_gated.h").read_text()
    assert f"golden_gates[{g['gates'].size}]" in header


def _requantise(q: np.ndarray, scale: float, zero: int, to_scale: float, to_zero: int) -> np.ndarray:
    """The manifest's requantisation, written out: float32 throughout, rint half to even."""
    v = (q.astype(np.float32) - np.float32(zero)) * np.float32(scale)
    return np.clip(np.rint(v / np.float32(to_scale)) + to_zero, -128, 127).astype(q.dtype)


def _golden_int8io(bundle: Bundle) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for name in bundle.gating["order"]:
        with np.load(bundle.root / bundle.files[f"{name}.int8io.tflite"]["golden"]["file"]) as f:
            out[name] = {k: f[k] for k in f.files}
    return out


def test_integer_set_has_every_part_with_c_array_and_golden_calls(gated_bundle):
    bundle = Bundle(gated_bundle)  # checks every listed file's sha256
    for name, part in bundle.gating["parts"].items():
        entry = bundle.files[f"{name}.int8io.tflite"]
        tensors = {t["name"]: t for t in [*entry["io"]["inputs"], *entry["io"]["outputs"]]}
        assert all(t["dtype"] == "int8" and t["scale"] > 0 and isinstance(t["zero_point"], int) for t in tensors.values()), name
        for st in part["states"]:  # fed back as they are
            assert (tensors[st]["scale"], tensors[st]["zero_point"]) == (tensors[f"{st}_out"]["scale"], tensors[f"{st}_out"]["zero_point"])
        assert entry["quantization"]["io"] == "integer" and not any(op.startswith("DEQUANTIZE") for op in entry["ops"])
        source = gated_bundle / f"{name}_int8io_tflite.cc"
        assert bundle.files[source.name]["embeds"] == f"{name}.int8io.tflite" and f"{name}_int8io_tflite.h" in bundle.files
        assert firmware.parse_c_bytes(source, f"{name}_int8io_tflite") == (gated_bundle / f"{name}.int8io.tflite").read_bytes()
        assert entry["golden"] == {"format": "npz", "file": f"golden/{name}.int8io.npz"} and entry["golden"]["file"] in bundle.files
        calls = _golden_int8io(bundle)[name]
        assert set(calls) == {"frames", *tensors}
        for n, t in tensors.items():
            assert calls[n].dtype == np.int8 and list(calls[n].shape) == [len(calls["frames"]), *t["shape"]], (name, n)


def test_integer_golden_calls_replay_bit_exactly(gated_bundle):
    """Every recorded call of every int8io part gives its recorded outputs under LiteRT, and the
    chain run again on the golden frames gives the recorded gates and masks."""
    bundle = Bundle(gated_bundle)
    golden = _golden_int8io(bundle)
    for name, part in bundle.gating["parts"].items():
        session = SESSIONS["litert"](gated_bundle / f"{name}.int8io.tflite", part["inputs"], part["outputs"], 1)
        rec = golden[name]
        for i in range(len(rec["frames"])):
            for n, o in zip(part["outputs"], session.run([rec[n][i] for n in part["inputs"]])):
                assert np.array_equal(o, rec[n][i]), (name, n, i)
    frames_fp32 = np.load(gated_bundle / "golden" / "frames_fp32.npy")
    gates = np.load(gated_bundle / "golden" / "gates_int8io.npy")
    assert 0 < gates.mean() < 1, "the golden frames should show the branch both open and closed"
    assert golden["branch0"]["frames"].tolist() == np.flatnonzero(gates[:, 0]).tolist()
    assert np.array_equal(stream_masks(integer_runner(bundle), frames_fp32), np.load(gated_bundle / "golden" / "masks_int8io_parts.npy"))


def test_integer_chain_follows_the_requantisation_convention(gated_bundle):
    """Frame by frame, the golden calls are what the manifest's integer protocol says a firmware
    loop computes: quantised features, every cross-part input requantised from its source, a
    skipped branch's zeroed states at their zero point and its held state kept, gates from the
    integer logits, and the mask from the dequantised z terms."""
    bundle = Bundle(gated_bundle)
    g, golden = bundle.gating, _golden_int8io(bundle)
    io = {n: {t["name"]: t for t in [*bundle.files[f"{n}.int8io.tflite"]["io"]["inputs"], *bundle.files[f"{n}.int8io.tflite"]["io"]["outputs"]]}
          for n in g["order"]}  # fmt: skip
    row = {n: {int(t): i for i, t in enumerate(golden[n]["frames"])} for n in g["order"]}
    frames_fp32 = np.load(gated_bundle / "golden" / "frames_fp32.npy")
    T = len(frames_fp32)
    assert golden["trunk"]["frames"].tolist() == list(range(T))

    f = io["trunk"]["features"]
    features = np.stack([compressed_features(x, bundle.manifest["transforms"]["features"]["power"])[:, None, :][None] for x in frames_fp32])
    assert np.array_equal(golden["trunk"]["features"], np.clip(np.rint(features / np.float32(f["scale"])) + f["zero_point"], -128, 127).astype(np.int8))

    edges = [e for e in g["integer_io"]["edges"] if "from_scale" in e]
    assert {(e["part"], e["input"]) for e in edges} >= {("branch0", "enc1_prev"), ("branch0", "enc1_prev_out")}
    assert not any(e["part"] == "trunk" for e in edges), "the trunk reads only its own states and the float transforms"
    e = io["trunk"]["energies"]
    energies = np.stack([band_energies(x, g["energies"]["bands"], g["energies"]["width"])[None] for x in frames_fp32])
    assert np.array_equal(golden["trunk"]["energies"], np.clip(np.rint(energies / np.float32(e["scale"])) + e["zero_point"], -128, 127).astype(np.int8))
    assert any(not e["copy"] for e in edges), "the test bundle should need requantisation somewhere"
    for e in edges:
        src, tensor = e["from"].split(".")
        assert e["input"] == tensor and (e["from_scale"], e["from_zero_point"]) == (io[src][tensor]["scale"], io[src][tensor]["zero_point"])
        consumer = golden[e["part"]]
        rows = [row[src][int(t)] for t in consumer["frames"]]
        expected = _requantise(golden[src][tensor][rows], e["from_scale"], e["from_zero_point"], e["scale"], e["zero_point"])
        assert np.array_equal(consumer[e["input"]], expected), (e["part"], e["input"])

    branch, spec = golden["branch0"], g["parts"]["branch0"]
    skipped = 0
    for i, t in enumerate(branch["frames"].tolist()):
        ran_before = t > 0 and (t - 1) in row["branch0"]
        for st in spec["states"]:
            fed = branch[st][i]
            if ran_before:
                assert np.array_equal(fed, branch[f"{st}_out"][i - 1]), (t, st)
            elif st in spec["zeroed_when_skipped"]:
                assert (fed == io["branch0"][st]["zero_point"]).all(), (t, st)
        if not ran_before and t > 0:
            skipped += 1
            held = spec["held_when_skipped"][0]
            assert np.array_equal(branch[held][i], branch[f"{held}_out"][i - 1] if i else np.full_like(branch[held][i], io["branch0"][held]["zero_point"]))
    assert skipped > 0, "the golden frames should resume the branch after a skip"

    logits, lq = golden["trunk"]["logits"], io["trunk"]["logits"]
    gates = np.load(gated_bundle / "golden" / "gates_int8io.npy")
    assert np.array_equal(gates[:, 0].astype(bool), logits[:, 0, 0] > lq["zero_point"])

    def deq(q, t):
        return (q.astype(np.float32) - np.float32(t["zero_point"])) * np.float32(t["scale"])

    z = deq(golden["trunk"]["z_trunk"], io["trunk"]["z_trunk"])  # [T, 1, 2, 1, F]
    z[branch["frames"]] += deq(branch["z_branch0"], io["branch0"]["z_branch0"])
    masks = np.stack([bounded_mask(zt[0, :, 0, :]) for zt in z])
    assert np.array_equal(masks, np.load(gated_bundle / "golden" / "masks_int8io_parts.npy"))


def test_integer_chain_quality_is_judged_and_within_budget(gated_bundle):
    """The export judged the integer chain like the int8 one, parity and quality (the test's model
    is untrained, so its budget was loosened: the chain meets the default budget anyway), with
    fp32's polarity."""
    ver = json.loads((gated_bundle / "manifest.json").read_text())["verification"]
    q = ver["quality"]["results"]["tflite/int8io"]
    budget = Options()
    assert q["passed"] and q["pesq_drop"] <= budget.pesq_budget and q["si_sdr_drop"] <= budget.sisdr_budget
    assert q["correlation"] > 0 and ver["quality"]["reference"]["correlation"] > 0
    assert any(a["setting"] == q["setting"] and "tflite/int8io" in a["results"] for a in ver["quality"]["attempts"])
    parity = ver["parity"]["tflite/int8io"]
    assert set(parity["gates"]) == {"on", "off", "policy"} and parity["gates"]["on"]["mask_snr_db"] > 20


def test_tflm_replays_every_integer_part(gated_bundle):
    m = json.loads((gated_bundle / "manifest.json").read_text())
    tflm = m["verification"]["tflm"]
    if "skipped" in tflm:
        pytest.skip(tflm["skipped"])
    names = {f"{n}.int8io.tflite" for n in m["gating"]["order"]}
    assert set(tflm["files"]) == names and tflm["passed"]
    for name in names:
        assert tflm["files"][name]["frames"] == m["files"][f"golden/{name.replace('.tflite', '.npz')}"]["calls"]
        assert m["files"][name]["tflm"]["arena"]["minimum_bytes"] > 0
    logits = tflm["files"]["trunk.int8io.tflite"]["closed_loop"]["tensors"]["logits"]  # judged by the gates it opens
    assert logits["passed"] and logits["gates"] == m["files"]["golden/trunk.int8io.npz"]["calls"] * m["gating"]["branches"] and logits["gate_flips"] <= 0.02 * logits["gates"]


def test_a_corrupted_golden_npz_is_refused_in_one_line(gated_bundle, tmp_path, capsys):
    import soundfile as sf

    copy = tmp_path / "b"
    shutil.copytree(gated_bundle, copy)
    golden = copy / "golden" / "branch0.int8io.npz"
    golden.write_bytes(golden.read_bytes()[:-100])
    sf.write(tmp_path / "in.wav", level_jumps(np.random.default_rng(4), 4000), 16000)
    code = stream.main(["--model", str(copy), "--input", str(tmp_path / "in.wav"), "--output", str(tmp_path / "out.wav")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and "golden/branch0.int8io.npz does not match its sha256" in err[0], err
    assert not (tmp_path / "out.wav").exists()
