"""The user-facing commands of distill/: evaluate, enhance and the dev-set renderer."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from distill import checkpoint, devset, enhance, evaluate
from distill.data import synth_noise, synth_speech
from distill.models import build


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "tiny.pt"
    checkpoint.save(path, build("student-30k"))
    return path


@pytest.fixture(scope="module")
def devdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("dev")
    rng = np.random.default_rng(0)
    (root / "clean").mkdir()
    (root / "noise").mkdir()
    for i in range(2):
        sf.write(root / "clean" / f"libri_{i}-1-0000.flac", synth_speech(rng, 75000), 16000)
    sf.write(root / "noise" / "hum.wav", synth_noise(rng, 30000), 16000)
    rows = devset.render(root / "clean", root / "noise", root / "set", ["libri_0-1-0000.flac", "libri_1-1-0000.flac"], ["hum.wav"], 4.6, seed=1)
    assert len(rows) == 2 * len(devset.SNRS)
    return root


def test_render_is_deterministic(devdir, tmp_path):
    devset.render(devdir / "clean", devdir / "noise", tmp_path, ["libri_0-1-0000.flac"], ["hum.wav"], 4.6, seed=1)
    a, _ = sf.read(tmp_path / "noisy" / "libri_0-1-0000_snr+05.wav")
    b, _ = sf.read(devdir / "set" / "noisy" / "libri_0-1-0000_snr+05.wav")
    assert np.array_equal(a, b)


@pytest.fixture(scope="module")
def ooddir(devdir):
    """The same sources rendered as dev-ood renders them: dry or in a room, named in meta.csv."""
    rng = np.random.default_rng(2)
    rir = (rng.standard_normal(1600) * np.exp(-np.arange(1600) / 300)).astype(np.float32)
    rir[0] = 1.0  # the direct path
    rows = devset.render(devdir / "clean", devdir / "noise", devdir / "ood", ["libri_0-1-0000.flac", "libri_1-1-0000.flac"], ["hum.wav"], 4.6,
                         seed=3, rooms={"sim": [("sim1001_00", rir, rir)]})  # fmt: skip
    assert {r["room"] for r in rows} == {"dry", "sim1001_00"}, "the test needs both kinds of row"
    return devdir / "ood"


def test_evaluate_reports_noisy_and_model_per_snr(devdir, ckpt, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert evaluate.main(["--data", str(devdir / "set"), "--checkpoint", str(ckpt), "--json", str(out), "--save-enhanced", str(tmp_path / "enh")]) == 0
    res = json.loads(out.read_text())["sets"]["set"]  # --data DIR: one set named after the folder
    assert res["files"] == 10 and set(res["systems"]) == {"noisy", "tiny"}
    for system in res["systems"].values():
        assert set(system["mean"]) == set(evaluate.METRICS)
        assert sorted(system["by_snr"], key=float) == [str(s) for s in devset.SNRS]
        assert "by_room" not in system, "the in-domain set names no rooms"
    # files enhanced elsewhere score the same as the checkpoint that made them
    assert evaluate.main(["--data", str(devdir / "set"), "--enhanced", f"saved={tmp_path / 'enh' / 'tiny'}", "--json", str(out), "--no-dnsmos"]) == 0
    again = json.loads(out.read_text())["sets"]["set"]["systems"]["saved"]["mean"]
    assert again["si_sdr"] == pytest.approx(res["systems"]["tiny"]["mean"]["si_sdr"], abs=0.05)
    assert "| noisy |" in capsys.readouterr().out


def test_evaluate_scores_every_set_and_splits_rooms(devdir, ooddir, ckpt, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["--set", f"dev={devdir / 'set'}", "--set", f"dev-ood={ooddir}", "--checkpoint", str(ckpt), "--json", str(out), "--no-dnsmos"]
    assert evaluate.main(argv) == 0
    stdout = capsys.readouterr().out
    sets = json.loads(out.read_text())["sets"]
    assert list(sets) == ["dev", "dev-ood"]
    for name, root in (("dev", devdir / "set"), ("dev-ood", ooddir)):
        assert f"## {name}: 10 files from {root / 'noisy'}" in stdout
        assert set(sets[name]["systems"]) == {"noisy", "tiny"} and sets[name]["files"] == 10
    # the split follows meta.csv's room column: the means of exactly its dry and its room rows
    with (ooddir / "meta.csv").open() as f:
        wet = {Path(r["file"]).stem: r["room"] != "dry" for r in csv.DictReader(f)}
    for system in sets["dev-ood"]["systems"].values():
        for kind, is_wet in (("dry", False), ("reverberant", True)):
            sisdr = [m["si_sdr"] for k, m in system["per_file"].items() if wet[k] == is_wet]
            assert system["by_room"][kind]["si_sdr"] == pytest.approx(np.mean(sisdr))
    assert f"\ndry ({list(wet.values()).count(False)} files)\n" in stdout and f"\nreverberant ({list(wet.values()).count(True)} files)\n" in stdout
    assert stdout.count("\ndry (") == 1, "only dev-ood has rooms"


@pytest.mark.parametrize(
    "sets, message",
    [
        (["--set", "dev="], "takes NAME=DIR or DIR"),
        (["--set", "={set}"], "takes NAME=DIR or DIR"),
        (["--set", "a={set}", "--set", "a={ood}"], "two sets are named 'a'"),
        (["--data", "{set}", "--set", "set={ood}"], "two sets are named 'set'"),
        (["--set", "a={root}"], "no noisy/ and clean/ folders"),
        (["--set", "a={set}", "--set", "b={ood}", "--save-enhanced", "{tmp}"], "both have a file"),
    ],
)
def test_evaluate_bad_sets_are_one_clear_line(devdir, ooddir, tmp_path, capsys, sets, message):
    argv = [a.format(set=devdir / "set", ood=ooddir, root=devdir, tmp=tmp_path / "enh") for a in sets]
    assert evaluate.main([*argv, "--no-dnsmos"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]
    assert not (tmp_path / "enh").exists()


def test_enhance_any_rate_and_channels(ckpt, tmp_path, capsys):
    rng = np.random.default_rng(3)
    x = synth_speech(rng, 44100, 44100) + 0.1 * synth_noise(rng, 44100, 44100)
    x[1000] = np.nan
    sf.write(tmp_path / "in.wav", np.stack([x, 0.5 * x], 1), 44100, subtype="FLOAT")
    assert enhance.main(["--input", str(tmp_path / "in.wav"), "--output", str(tmp_path / "out.wav"), "--checkpoint", str(ckpt)]) == 0
    y, sr = sf.read(tmp_path / "out.wav")
    assert sr == 44100 and y.ndim == 1 and len(y) == len(x) and np.isfinite(y).all()
    assert "2 NaN/Inf samples replaced" in capsys.readouterr().out


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty", "holds no samples"),
        ("text", "cannot decode audio"),
        ("missing", "no such file"),
        ("unwritable", "does not exist"),
        ("bad-checkpoint", "not a readable checkpoint"),
        ("same-file", "also an input file"),
        ("short-reference", "not a reference"),
    ],
)
def test_enhance_bad_input_is_one_clear_line(case, message, ckpt, tmp_path, capsys):
    src, out, ck, extra = tmp_path / "in.wav", tmp_path / "out.wav", ckpt, []
    sf.write(src, np.zeros(1600, np.float32), 16000)
    if case == "empty":
        sf.write(src, np.zeros(0, np.float32), 16000)
    elif case == "text":
        src.write_text("hello")
    elif case == "missing":
        src = tmp_path / "nope.wav"
    elif case == "unwritable":
        out = tmp_path / "no" / "such" / "out.wav"
    elif case == "same-file":
        out = src
    elif case == "short-reference":
        sf.write(tmp_path / "ref.wav", np.zeros(10, np.float32), 16000)
        extra = ["--reference", str(tmp_path / "ref.wav")]
    else:
        ck = tmp_path / "bad.pt"
        ck.write_bytes(b"junk")
    assert enhance.main(["--input", str(src), "--output", str(out), "--checkpoint", str(ck), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]
    if case == "same-file":
        assert sf.read(src)[0].shape == (1600,)
    else:
        assert not out.exists()


def test_evaluate_without_pairs_is_one_clear_line(tmp_path, capsys):
    for sub in ("noisy", "clean"):  # matching names, but nothing decodes
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "a.wav").write_text("not audio")
    assert evaluate.main(["--data", str(tmp_path), "--no-dnsmos"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no readable noisy/clean pairs" in err[0]
