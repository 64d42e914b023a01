"""Smoke runs of the benchmark scripts on the small fixtures: they finish and write their tables."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from benchmarks import kd_ablation, latency
from distill.data import synth_noise, synth_speech


def test_latency_measures_every_backend_of_the_bundle(small_bundle, tmp_path):
    assert latency.main(["--model", str(small_bundle), "--seconds", "0.5", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "latency.json").read_text())
    names = {r["backend"] for r in result["rows"]}
    assert {"onnxruntime/fp32", "onnxruntime/int8", "litert/int8io"} <= names
    for r in result["rows"]:
        assert r["frames"] == 50 and 0 < r["bare_p50_us"] and r["p50_us"] <= r["p99_us"] <= r["max_us"]
    assert (tmp_path / "latency.md").is_file() and (tmp_path / "latency.png").is_file()


def test_latency_runs_on_a_runtime_only_install(small_bundle, tmp_path):
    """With torch and matplotlib unimportable, as after pip install '.[runtime]': real audio from
    the runtime package, no plot, and results in a fresh folder, not the committed ones."""
    from runtime.models import SAMPLE

    root = Path(__file__).resolve().parents[2]
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'matplotlib', 'distill', 'export'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from benchmarks import latency\n"
        f"sys.exit(latency.main(['--model', r'{small_bundle}', '--seconds', '0.5']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(root)}, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "out" / "latency" / "latency.json").read_text())
    names = {r["backend"] for r in result["rows"]}
    assert {"onnxruntime/fp32", "litert/fp32"} <= names and "pytorch/fp32" not in names
    import tomllib

    package_data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["runtime"]
    assert result["audio"] == str(SAMPLE) and SAMPLE.parent == root / "runtime" / "sample" and "sample/*" in package_data, "the clip ships in the package"
    assert "matplotlib is not installed" in done.stdout and not (tmp_path / "out" / "latency" / "latency.png").exists()


def one_file_copy(devset, dest):
    """A second test set: ``devset`` less all but its first pair."""
    shutil.copytree(devset, dest)
    for extra in sorted((dest / "noisy").iterdir())[1:]:
        extra.unlink()
    return dest


def test_kd_ablation_trains_scores_and_tabulates(small_checkpoint, small_devset, tmp_path):
    rng = np.random.default_rng(1)
    for kind, make in (("clean", synth_speech), ("noise", synth_noise)):
        (tmp_path / "data" / kind).mkdir(parents=True)
        for i in range(2):
            sf.write(tmp_path / "data" / kind / f"{i}.wav", make(rng, 48000), 16000)
    ood, out = one_file_copy(small_devset, tmp_path / "ood"), tmp_path / "out"
    args = ["--data", str(tmp_path / "data"), "--teacher", str(small_checkpoint), "--devset", str(small_devset), "--devset", f"other={ood}",
            "--out", str(out), "--sizes", "student-30k", "--methods", "none,dispatch,dispatch-bb", "--seeds", "0", "--steps", "2",
            "--batch", "2", "--pool", "4", "--pool-dir", str(tmp_path / "pools"), "--bb-teacher", f"mine={small_checkpoint}"]  # fmt: skip
    assert kd_ablation.main(args) == 0
    sets = json.loads((out / "results.json").read_text())["sets"]
    assert list(sets) == [small_devset.name, "other"], "a bare DIR is named after its folder"
    assert [s["files"] for s in sets.values()] == [2, 1]
    for s in sets.values():
        assert set(s["table"]) == {"student-30k/none", "student-30k/dispatch", "student-30k/dispatch-bb-mine"}
    md = (out / "results.md").read_text()
    assert f"## {small_devset.name}: {small_devset} (2 files)" in md and f"## other: {ood} (1 files)" in md
    commands = (out / "commands.md").read_text()
    assert f"--devset {small_devset} --devset other={ood} --sizes" in commands, "the driver line gives every set back as it was given"
    assert f"--val-dir {small_devset} " in commands and f"--val-dir {ood}" not in commands, "runs validate on the first set only"
    assert f"--val-ood {ood}" in commands, "and log the second as their out-of-domain curve"
    assert commands.count(f"--pool 4 --pool-dir {tmp_path / 'pools'}") == 3, "the baseline trains on the distilled runs' pool"
    assert f"--out {out / 'runs' / 'student-30k' / 'dispatch-bb-mine' / 'seed0'} " in commands and f"--teacher {small_checkpoint} --peers" in commands
    assert f"--bb-teacher mine={small_checkpoint} " in commands, "the driver line names the black-box teacher"
    assert len(list((tmp_path / "pools").iterdir())) == 1, "one pool for both methods of a seed"
    assert f"| (teacher {small_checkpoint}) |" in md, "the teacher's own scores are in the table"
    assert f"| (bb-teacher mine = {small_checkpoint}) |" in md, "and the black-box teacher's"
    assert (out / "scores" / "other" / "1-files" / "student-30k_dispatch_seed0.json").is_file()
    assert kd_ablation.main(args) == 0, "a second run reuses the finished runs and cached scores"


def test_kd_ablation_names_each_black_box_teachers_runs():
    bb = kd_ablation.bb_teachers(["ulunas", "runs/rosecd/last.pt", "big=runtime/bundles/default", "../peers/gtcrn/gtcrn_simple.onnx"])
    assert bb == {"ulunas": "ulunas", "rosecd": "runs/rosecd/last.pt", "big": "runtime/bundles/default", "gtcrn_simple": "../peers/gtcrn/gtcrn_simple.onnx"}
    assert kd_ablation.bb_teachers(None) == {"ulunas": "ulunas"}
    assert kd_ablation.expand_methods("none,dispatch-bb,dispatch-bb-big", bb) == [
        "none", "dispatch-bb-ulunas", "dispatch-bb-rosecd", "dispatch-bb-big", "dispatch-bb-gtcrn_simple"]
    for bad, message in [(["a=x", "a=y"], "given twice"), (["a b=x"], "must be letters")]:
        with pytest.raises(ValueError, match=message):
            kd_ablation.bb_teachers(bad)
    with pytest.raises(ValueError, match="unknown method dispatch-bb-dfn3"):
        kd_ablation.expand_methods("dispatch-bb-dfn3", bb)


def test_kd_ablation_refuses_a_bad_devset_before_training(small_checkpoint, small_devset, tmp_path, capsys):
    args = ["--data", str(tmp_path), "--teacher", str(small_checkpoint), "--devset", str(small_devset), "--devset", f"x={tmp_path}",
            "--out", str(tmp_path / "out")]  # fmt: skip
    assert kd_ablation.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --devset x=") and "no noisy/ and clean/ folders" in err[0]
    assert not (tmp_path / "out").exists()


def test_slimming_tabulates_quality_usage_and_time(gated_checkpoint, small_checkpoint, small_devset, gated_bundle, small_bundle, tmp_path):
    from benchmarks import slimming

    out, other = tmp_path / "slim", one_file_copy(small_devset, tmp_path / "other")
    args = ["--devset", str(small_devset), "--devset", f"other={other}", "--gated", f"g={gated_checkpoint}",
            "--static", f"s={small_checkpoint}", f"f={gated_checkpoint}@1", "--bundle", str(gated_bundle), "--reference", "f",
            "--static-bundle", str(small_bundle), "--files", "1", "--timing", "onnxruntime/int8", "--seconds", "1", "--rounds", "1",
            "--out", str(out)]  # fmt: skip
    assert slimming.main(args) == 0
    r = json.loads((out / "slimming.json").read_text())
    assert list(r["sets"]) == [small_devset.name, "other"] and r["sets"]["other"]["dir"] == str(other)
    g = json.loads((gated_bundle / "manifest.json").read_text())["gating"]["parts"]
    md = (out / "slimming.md").read_text()
    for name, result in r["sets"].items():
        systems = result["systems"]
        assert set(systems) == {"s", "f", "g", "g (all on)"} and set(result["usage"]) == {"g"}
        fixed = sum(g[k]["macs_per_frame"] for k in ("trunk", "policy") if k in g)  # every frame runs them (one part or two)
        off = fixed / systems["g"]["macs_all_on"]
        f = systems["f"]
        assert f["kind"] == "static" and f["macs_per_frame"] == fixed + g["branch0"]["macs_per_frame"]
        assert systems["g (all on)"]["mac_ratio"] == 1.0 and off <= systems["g"]["mac_ratio"] <= 1.0
        s = systems["s"]
        d = s["mean"]["pesq"] - f["mean"]["pesq"]
        section = md.split(f"## {name}: ")[1].split("\n## ")[0]  # this set's tables, up to the next set's heading
        assert "Every system against `f`" in section and f"| s | {s['macs_per_frame'] / f['macs_per_frame']:.0%} | {d:+.3f} |" in section
    rows = r["timing"]["rows"]
    assert set(rows) == {f"onnxruntime/int8/{g}" for g in ("on", "off", "policy", "static")}
    assert rows["onnxruntime/int8/off"]["mac_ratio"] == off and rows["onnxruntime/int8/on"]["mac_ratio"] == 1.0
    static = json.loads((small_bundle / "manifest.json").read_text())["model"]["macs_per_frame"]
    assert rows["onnxruntime/int8/static"]["macs_per_frame"] == static and "ratio_to_all_on" not in rows["onnxruntime/int8/static"]
    for name, row in rows.items():  # the model's call is part of the engine's frame
        assert 0 < row["model_p50_us"] < row["engine_p50_us"], name
    policy = rows["onnxruntime/int8/policy"]
    assert policy["model_ratio_to_static"] == pytest.approx(policy["model_p50_us"] / rows["onnxruntime/int8/static"]["model_p50_us"])
    assert md.count("Runtime per-frame time") == 1, "the timing is of the bundle, not of a set"
    assert md.count("|") > 20 and (out / "slimming.png").stat().st_size > 0


def test_slimming_reference_must_be_a_system(gated_checkpoint, small_devset, tmp_path, capsys):
    from benchmarks import slimming

    with pytest.raises(SystemExit):
        slimming.main(["--devset", str(small_devset), "--gated", f"g={gated_checkpoint}", "--reference", "nope", "--out", str(tmp_path)])
    assert "--reference nope is not one of" in capsys.readouterr().err


@pytest.mark.parametrize("spec, message", [("{g}", "static only with fixed gates"), ("{g}@2", "fixed gates are 0s and 1s"),
                                           ("{g}@1,0", "one fixed gate per branch"), ("{s}@1", "has no gates to fix")])  # fmt: skip
def test_slimming_static_gated_needs_a_valid_fixed_pattern(gated_checkpoint, small_checkpoint, small_devset, tmp_path, spec, message):
    from benchmarks import slimming

    with pytest.raises(SystemExit, match=message):
        slimming.main(["--devset", str(small_devset), "--static", "x=" + spec.format(g=gated_checkpoint, s=small_checkpoint), "--files", "1", "--out", str(tmp_path)])


def test_slimming_bad_devset_is_one_clear_line(gated_checkpoint, small_devset, tmp_path, capsys):
    from benchmarks import slimming

    args = ["--devset", f"a={small_devset}", "--devset", f"a={small_devset}", "--gated", f"g={gated_checkpoint}", "--out", str(tmp_path / "o")]
    assert slimming.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --devset: two sets are named 'a'")
    assert not (tmp_path / "o").exists()


def test_slimming_refuses_a_plain_bundle(small_bundle, small_devset, tmp_path, capsys):
    from benchmarks import slimming

    assert slimming.main(["--devset", str(small_devset), "--bundle", str(small_bundle), "--out", str(tmp_path)]) == 2
    assert "not a gated bundle" in capsys.readouterr().err


def test_slimming_static_bundle_must_be_plain_and_beside_a_gated_one(gated_bundle, tmp_path, capsys):
    from benchmarks import slimming

    assert slimming.main(["--bundle", str(gated_bundle), "--static-bundle", str(gated_bundle), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a plain bundle; --static-bundle takes a static student's bundle" in err[0]
    with pytest.raises(SystemExit):
        slimming.main(["--static-bundle", str(gated_bundle), "--out", str(tmp_path)])
    assert "--static-bundle is timed beside --bundle" in capsys.readouterr().err


def test_slimming_usage_table_groups_by_snr_and_ranks_with_ties():
    from benchmarks.slimming import usage_table

    ovrl = {"a": 1.0, "b": 1.5, "c": 2.0, "d": 2.5, "e": 3.0, "f": 3.5}
    snr = {"a": -5.0, "b": -5.0, "c": 5.0, "d": 5.0, "e": 15.0, "f": 15.0}
    macs = {"a": 100, "b": 100, "c": 60, "d": 60, "e": 40, "f": 40}  # worse input, more compute; ties in pairs
    systems = {"g": {"gates": "policy", "macs_all_on": 100}, "flat": {"gates": "policy", "macs_all_on": 100}}
    noisy = {"per_file": {k: {"dnsmos_ovrl": v} for k, v in ovrl.items()}}
    u = usage_table(systems, {"g": macs, "flat": dict.fromkeys(macs, 50)}, noisy, snr)
    assert u["g"]["by_snr"] == {"-5.0": 1.0, "5.0": 0.6, "15.0": 0.4}
    assert [t["mac_ratio"] for t in u["g"]["by_input_ovrl_tercile"]] == [1.0, 0.6, 0.4]
    assert -1.0 < u["g"]["spearman_vs_input_ovrl"] < -0.9  # average ranks for ties: not -1, which arbitrary tie order would give
    assert np.isnan(u["flat"]["spearman_vs_input_ovrl"])


def test_curves_from_val_logs(tmp_path):
    from benchmarks import curves

    run = tmp_path / "run"
    run.mkdir()
    (run / "val.csv").write_text(
        "step,time,val_sisdr,val_sisdri,ood_sisdr,ood_sisdri\n500,1,3.0,1,2.0,1\n1000,2,4.5,1,2.5,1\n1000,3,4.0,1,2.25,1\n"
    )  # a resumed run repeats step 1000: the last row wins
    assert curves.read_curve(run) == {"dev": [(500, 3.0), (1000, 4.0)], "dev-ood": [(500, 2.0), (1000, 2.25)]}
    assert curves.main([str(run), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "curves.md").read_text()
    assert "| 1000 | 4.00 | 2.25 |" in md and (tmp_path / "out" / "curves.png").stat().st_size > 0
    assert curves.main([str(tmp_path / "missing"), "--out", str(tmp_path / "o2")]) == 2


def test_curves_reference_lines_are_scored_on_the_runs_validation_files(small_checkpoint, small_devset, tmp_path, capsys):
    import torch

    from benchmarks import curves
    from distill.losses import si_sdr
    from runtime.audio import load

    run = tmp_path / "run"
    run.mkdir()
    (run / "val.csv").write_text("step,time,val_sisdr,val_sisdri\n500,1,3.0,1\n")
    (run / "args.json").write_text(json.dumps({"val_dir": str(small_devset), "val_ood": None, "val_files": 1}))
    assert curves.main([str(run), "--out", str(tmp_path / "out"), "--reference", str(small_checkpoint)]) == 0
    md = (tmp_path / "out" / "curves.md").read_text()
    first = sorted((small_devset / "noisy").iterdir())[0]  # one file taken evenly: the first
    noisy, clean = (torch.from_numpy(load(d / first.name, 16000))[None] for d in (small_devset / "noisy", small_devset / "clean"))
    assert f"| noisy input | {si_sdr(noisy, clean).item():.2f} |" in md
    assert f"| {small_checkpoint} | " in md
    assert curves.main([str(run), "--out", str(tmp_path / "o2"), "--reference", "gtcrnn"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: --reference gtcrnn") and not (tmp_path / "o2").exists()
