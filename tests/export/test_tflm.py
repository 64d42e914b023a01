"""Bundles on TensorFlow Lite Micro: the golden replay, the firmware facts, and what the check catches."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from export import tflm, verify_tflm
from export.verify_tflm import main
from runtime.bundle import MANIFEST, BundleError, seal, sha256

DEFAULT = Path(__file__).resolve().parents[2] / "runtime" / "bundles" / "default"
MODEL = "model.int8io.tflite"


@pytest.fixture(scope="module")
def runtime_tflm():
    return pytest.importorskip("tflite_micro.python.tflite_micro.runtime")


@pytest.fixture(scope="module")
def default_result(runtime_tflm):
    return verify_tflm.check(DEFAULT)


@pytest.fixture
def copy(tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(DEFAULT, dst)
    return dst


def flip_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_default_bundle_replays_under_tflm(default_result, runtime_tflm):
    r = default_result["files"][MODEL]
    assert default_result["passed"] and r["passed"]
    rep, facts = r["replay"], r["facts"]
    assert rep["frames"] == 200 and rep["inputs"][0] == "features" and rep["outputs"][0] == "z"
    opened, closed = rep["open_loop"], rep["closed_loop"]
    assert set(opened["tensors"]) == set(closed["tensors"]) == set(rep["outputs"])
    assert all(v["judged"] for v in opened["tensors"].values())
    assert [n for n, v in closed["tensors"].items() if v["judged"]] == ["z"], "closed loop judges the output; the states drift"
    assert closed["golden_states_used"] == 0, "the plain golden vectors feed every state back"
    # The arena claim holds: TFLM runs the model in the minimum and fails one byte below it.
    data = (DEFAULT / MODEL).read_bytes()
    a = facts["arena"]
    assert tflm._fits(data, a["minimum_bytes"]) and not tflm._fits(data, a["minimum_bytes"] - 1)
    assert a["minimum_bytes"] >= a["in_use_bytes"] == a["persistent_bytes"] + a["planned_bytes"]
    assert a["recommended_bytes"] >= 1.1 * a["minimum_bytes"] and a["recommended_bytes"] % 1024 == 0
    assert facts["flash_bytes"] == len(data)
    assert {"AddConv2D", "AddFullyConnected", "AddTanh", "AddLogistic"} <= set(facts["resolver"])
    assert facts["resolver_size"] == len(facts["operators"]) == len(facts["resolver"])
    # The operator table the resolver is built from agrees with LiteRT's own reading of the file.
    from collections import Counter

    from ai_edge_litert.interpreter import Interpreter

    assert facts["operators"] == dict(Counter(d["op_name"] for d in Interpreter(model_content=data)._get_ops_details()))
    assert 0 < facts["invoke_ms"]["median"] <= facts["invoke_ms"]["max"]


def test_gated_bundle_replays_every_integer_part_under_tflm(runtime_tflm):
    gated = DEFAULT.parent / "gated"
    result = verify_tflm.check(gated)
    parts = json.loads((gated / MANIFEST).read_text())["gating"]["order"]
    assert result["passed"] and sorted(result["files"]) == sorted(f"{p}.int8io.tflite" for p in parts)
    for name, r in result["files"].items():
        assert r["passed"] and r["facts"]["flash_bytes"] == (gated / name).stat().st_size, name
        calls = np.load(gated / "golden" / name.replace(".tflite", ".npz"))["frames"]  # the frames a branch ran in
        assert r["facts"]["arena"]["minimum_bytes"] > 0 and r["replay"]["frames"] == len(calls) > 0, name


def test_closed_loop_judges_logits_by_the_gates_they_open():
    """Logits that drift by many LSB but open the same gates pass; beyond the share of differing
    gates they fail, however small the drift in LSB."""
    want = np.tile(np.array([[-60, 40]], np.int8), (100, 1))  # [frames, K], zero point -10
    drift = (want + np.int8(30)).astype(np.int8)  # 30 LSB on every frame, no gate changes
    assert tflm._gates(drift, want, -10, tflm.TOLERANCE)["passed"]
    flipped = want.copy()
    flipped[:5, 0] = -9  # just above the zero point: 5 of 200 gates open that were closed
    r = tflm._gates(flipped, want, -10, tflm.TOLERANCE)
    assert r["gate_flips"] == 5 and r["gates"] == 200 and not r["passed"] and r["max_lsb"] == 51


def test_unknown_operator_is_named(runtime_tflm):
    with pytest.raises(tflm.TflmError, match="POW"):
        tflm.resolver({"CONV_2D": 1, "POW": 1})
    with pytest.raises(tflm.TflmError, match="POW"):  # the fp32 step graph: TFLM has no POW kernel
        tflm.details((DEFAULT / "model.tflite").read_bytes())


@pytest.mark.parametrize("name", ["golden/int8io_output.npy", MODEL])
def test_one_byte_change_is_caught_naming_the_file(runtime_tflm, copy, name, capsys):
    flip_byte(copy / name, (copy / name).stat().st_size - 7)
    with pytest.raises(BundleError, match=f"{name} does not match its sha256"):
        verify_tflm.check(copy)
    assert main([str(copy)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and name in err[0]


def test_resealed_golden_change_is_caught_by_the_replay(runtime_tflm, copy, capsys):
    """Checksums kept valid (the manifest re-sealed): only the replay itself can see the change."""
    path = copy / "golden/int8io_output.npy"
    z = np.load(path)
    v = int(z[57, 0, 1, 0, 40])
    z[57, 0, 1, 0, 40] = v - 100 if v >= 0 else v + 100  # one element of one frame, 100 LSB off
    np.save(path, z)
    m = json.loads((copy / MANIFEST).read_text())
    m["files"]["golden/int8io_output.npy"].update(sha256=sha256(path), bytes=path.stat().st_size)
    (copy / MANIFEST).write_text(json.dumps(seal(m), indent=1))
    res = verify_tflm.check(copy)
    rep = res["files"][MODEL]["replay"]
    assert not res["passed"]
    for loop in ("open_loop", "closed_loop"):
        t = rep[loop]["tensors"]["z"]
        assert not t["passed"] and t["max_lsb"] >= 90 and t["worst_frames"] == [57]
    assert main([str(copy)]) == 1
    out, err = capsys.readouterr()
    assert "FAILED: z" in out and "[57]" in out and err.startswith("error:")


def test_io_mismatch_with_the_manifest_fails(runtime_tflm, copy):
    m = json.loads((copy / MANIFEST).read_text())
    m["files"][MODEL]["io"]["states"]["gru0_h"]["zero_point"] += 1
    (copy / MANIFEST).write_text(json.dumps(seal(m), indent=1))
    res = verify_tflm.check(copy)
    assert not res["passed"]
    err = res["files"][MODEL]["error"]
    assert "gru0_h" in err and "zero_point" in err


def test_export_records_the_tflm_section(runtime_tflm, small_bundle):
    m = json.loads((small_bundle / MANIFEST).read_text())
    tflm_ver = m["verification"]["tflm"]
    assert tflm_ver["passed"] and m["verification"]["passed"]
    assert tflm_ver["files"][MODEL]["open_loop"]["passed"] and tflm_ver["files"][MODEL]["closed_loop"]["passed"]
    facts = m["files"][MODEL]["tflm"]
    assert facts["arena"]["minimum_bytes"] > 0 and facts["flash_bytes"] == (small_bundle / MODEL).stat().st_size
    card = (small_bundle / "README.md").read_text()
    assert "## Firmware: TensorFlow Lite Micro" in card and f"MicroMutableOpResolver<{facts['resolver_size']}>" in card


def test_a_failed_replay_fails_the_export():
    from export.build import passed

    ok = {"passed": True}
    verification = {"model": {"passed": True, "overridden": False}, "parity": {"m": ok}, "quality": {"results": {"m": ok}}}
    assert passed(verification)
    assert passed({**verification, "tflm": {"skipped": "tflite-micro is not installed"}})
    assert not passed({**verification, "tflm": {"passed": False, "files": {}}})


def test_missing_package_is_recorded_as_skipped(monkeypatch, tmp_path):
    monkeypatch.setattr(tflm, "unavailable", lambda: "tflite-micro is not installed (test)")
    said, verification = [], {}
    verify_tflm.record(tmp_path, {}, verification, said.append)
    assert verification == {"tflm": {"skipped": "tflite-micro is not installed (test)"}}
    assert said == ["TFLM check skipped: tflite-micro is not installed (test)"]


@pytest.mark.parametrize("case", ["missing", "not_a_bundle", "json_folder"])
def test_cli_bad_input_is_one_error_line(tmp_path, capsys, case):
    args = {
        "missing": [str(tmp_path / "nope")],
        "not_a_bundle": [str(tmp_path)],
        "json_folder": [str(DEFAULT), "--json", str(tmp_path / "no" / "out.json")],
    }[case]
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and err.startswith("error:")
