import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from distill import checkpoint, train
from distill.data import MixConfig, SyntheticSampler

ROOT = Path(__file__).resolve().parents[2]
TINY = json.dumps({"channels": [4, 4, 8], "rnn_groups": 2, "rnn_layers": 1})


def _args(out, steps, *extra):
    return [
        "--synthetic", "--model", "crn", "--config", TINY, "--steps", str(steps), "--batch", "2", "--seconds", "0.5",
        "--val-every", "1000", "--log-every", "5", "--threads", "1", "--no-progress", "--out", str(out), *extra,
    ]  # fmt: skip


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_short_run_lowers_the_loss_and_writes_logs(tmp_path):
    assert train.main(_args(tmp_path, 150, "--lr", "3e-3", "--warmup", "10", "--batch", "4")) == 0
    rows = _rows(tmp_path / "train.csv")
    losses = [float(r["loss"]) for r in rows]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:3])
    assert (tmp_path / "last.pt").is_file() and (tmp_path / "best.pt").is_file()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert checkpoint.read(tmp_path / "last.pt")["step"] == 150


def _cli(out, steps, *extra):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return [sys.executable, "-m", "distill.train", *_args(out, steps, "--ckpt-every", "10", *extra)], env


def test_resume_after_kill_continues_exactly(tmp_path):
    steps = 120
    cmd, env = _cli(tmp_path / "whole", steps)
    subprocess.run(cmd, env=env, check=True, capture_output=True)

    cmd, env = _cli(tmp_path / "killed", steps)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "killed" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # no chance to save: only the periodic checkpoint survives
    proc.wait()
    killed_at = checkpoint.read(last)["step"]
    assert 10 <= killed_at < steps

    cmd, env = _cli(tmp_path / "killed", steps, "--resume")
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    assert f"resuming {last} at step {killed_at}" in done.stdout

    a = checkpoint.read(tmp_path / "whole" / "last.pt")["state_dict"]
    b = checkpoint.read(last)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stop_at_then_resume_equals_one_run(tmp_path):
    assert train.main(_args(tmp_path / "whole", 30)) == 0
    assert train.main(_args(tmp_path / "split", 30, "--stop-at", "15")) == 0
    assert checkpoint.read(tmp_path / "split" / "last.pt")["step"] == 15
    assert train.main(_args(tmp_path / "split", 30, "--resume")) == 0
    a = checkpoint.read(tmp_path / "whole" / "last.pt")["state_dict"]
    b = checkpoint.read(tmp_path / "split" / "last.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_from_a_compact_state_rewarms_fresh_moments(tmp_path, capsys):
    """A resume state without optimiser moments (what recipes/state keeps) continues at its step and
    schedule, with the learning rate re-warmed from 1/REWARM of the schedule's value."""
    run = tmp_path / "run"
    assert train.main(_args(run, 40, "--stop-at", "20", "--warmup", "5", "--log-every", "1")) == 0
    full = checkpoint.read(run / "last.pt")
    kept = checkpoint.compact(run / "last.pt", run / "last.pt")
    assert "optimizer" not in kept and kept["moments_reset_at"] == 20 and kept["step"] == 20
    capsys.readouterr()
    assert train.main(_args(run, 40, "--resume", "--warmup", "5", "--log-every", "1")) == 0
    assert "fresh ones from step 20" in capsys.readouterr().out
    rows = {int(r["step"]): float(r["lr"]) for r in _rows(run / "train.csv")}
    assert sorted(rows) == list(range(1, 41)), "one row per step, none lost or repeated"
    args = train.parse_args(_args(run, 40, "--warmup", "5"))
    expected = [1e-3 * train.lr_factor(s, args) * min(1.0, (s - 20 + 1) / train.REWARM) for s in range(21, 41)]
    np.testing.assert_allclose([rows[s] for s in range(21, 41)], expected, rtol=1e-6)  # the row of step s logs the rate step s + 1 uses
    assert rows[21] < 0.05 * rows[20]
    after = checkpoint.read(run / "last.pt")
    assert after["step"] == 40 and after["moments_reset_at"] == 20 and "optimizer" in after
    assert not all(torch.equal(after["state_dict"][k], full["state_dict"][k]) for k in full["state_dict"]), "it trained on"


def test_a_stripped_checkpoint_is_not_a_resume_state(tmp_path, capsys):
    run = tmp_path / "run"
    assert train.main(_args(run, 10)) == 0
    checkpoint.strip(run / "last.pt", run / "last.pt")
    capsys.readouterr()
    assert train.main(_args(run, 20, "--resume")) == 2
    assert "no training state to resume" in _one_error_line(capsys)
    with pytest.raises(checkpoint.CheckpointError, match="no training state"):
        checkpoint.compact(run / "last.pt", tmp_path / "c.pt")


class _PoisonedSampler(SyntheticSampler):
    def batch(self, step, size, stream=0):
        noisy, clean = super().batch(step, size, stream)
        if stream == 0 and step == 2:
            noisy[0, 100] = np.nan
        return noisy, clean


def test_non_finite_loss_skips_the_step_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train, "make_sampler", lambda args, seed: _PoisonedSampler(MixConfig(seconds=0.5), seed))
    assert train.main(_args(tmp_path, 6)) == 0
    out = capsys.readouterr()
    assert "step 2: non-finite loss or gradient, update skipped" in out.out + out.err
    state = checkpoint.read(tmp_path / "last.pt")
    assert state["skipped"] == 1
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())


def test_bad_data_source_is_one_clear_line(tmp_path, capsys):
    assert train.main(["--clean", str(tmp_path), "--noise", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "no usable audio" in err[0]
    assert not (tmp_path / "o").exists(), "a run that could not start leaves no run folder"
    with pytest.raises(SystemExit):
        train.main(["--out", str(tmp_path)])  # no data source: argparse usage error


@pytest.fixture
def mix_folders(tmp_path):
    from distill.data import synth_noise, synth_speech
    import soundfile as sf

    rng = np.random.default_rng(0)
    for d in ("clean", "noise"):
        (tmp_path / d).mkdir()
    for i in range(2):
        sf.write(tmp_path / "clean" / f"u{i}.wav", synth_speech(rng, 24000), 16000)
        sf.write(tmp_path / "noise" / f"n{i}.wav", synth_noise(rng, 24000), 16000)
    return tmp_path


@pytest.mark.parametrize("extra, message", [
    (["--rir", "missing"], "not a folder"),
    (["--eq", "1.5"], "probability"),
])  # fmt: skip
def test_bad_augmentation_options_are_one_clear_line(mix_folders, capsys, extra, message):
    base = ["--clean", str(mix_folders / "clean"), "--noise", str(mix_folders / "noise"), "--out", str(mix_folders / "o"), "--rooms", "0"]
    assert train.main([*base, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]


def test_augmented_training_runs_and_logs_the_ood_set(mix_folders, small_devset):
    out = mix_folders / "run"
    args = ["--clean", str(mix_folders / "clean"), "--noise", str(mix_folders / "noise"), "--rooms", "2", "--room-cache", str(mix_folders / "rc"),
            "--model", "crn", "--config", TINY, "--steps", "4", "--batch", "2", "--seconds", "0.5", "--val-every", "2", "--threads", "1",
            "--no-progress", "--val-dir", str(small_devset), "--val-ood", str(small_devset), "--out", str(out)]  # fmt: skip
    assert train.main(args) == 0
    rows = _rows(out / "val.csv")
    assert [r["step"] for r in rows] == ["2", "4"] and all(np.isfinite(float(r["ood_sisdr"])) for r in rows)
    assert list((mix_folders / "rc").glob("rooms_*.npz"))


def _fails(argv) -> int:
    """The exit status of a run that must stop before training: returned, or raised by argparse."""
    try:
        return train.main(argv)
    except SystemExit as e:
        return e.code


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    return err[0]


def test_an_existing_run_is_refused_without_resume_or_force(tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(_args(out, 10)) == 0
    (out / "notes.txt").write_text("mine")
    before = {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()}
    capsys.readouterr()
    assert train.main(_args(out, 6, "--seed", "1")) == 2
    line = _one_error_line(capsys)
    assert "already holds a training run" in line and "--resume" in line and "--force" in line
    assert {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()} == before, "a refused run must not touch the old one"

    assert train.main(_args(out, 6, "--seed", "1", "--force")) == 0
    assert [r["step"] for r in _rows(out / "train.csv")] == ["5"], "only the new run's rows"
    assert checkpoint.read(out / "last.pt")["step"] == 6
    assert not (out / "best.pt").exists() or checkpoint.read(out / "best.pt")["step"] == 6, "the old best.pt (step 10) is gone"
    assert len(list((out / "tb").glob("events.out.tfevents.*"))) == 1
    assert (out / "notes.txt").read_text() == "mine", "--force deletes the run's files only"
    capsys.readouterr()
    assert _fails(_args(out, 6, "--force", "--resume")) == 2
    assert "give one" in _one_error_line(capsys)


@pytest.mark.parametrize("extra, message", [
    (["--model", "studnet"], "did you mean 'student'?"),
    (["--config", "{channels: [4]}"], "not valid JSON"),
    (["--config", "[4, 8]"], "must be a JSON object"),
    (["--config", '{"chanels": [4, 4, 8]}'], "did you mean 'channels'?"),
    (["--config", '{"channels": "wide"}'], "--config"),
    (["--batch", "0"], "argument --batch: must be above 0"),
    (["--steps", "0"], "argument --steps: must be above 0"),
    (["--steps", "-5"], "argument --steps: must be above 0"),
    (["--lr", "0"], "argument --lr: must be above 0"),
    (["--lr", "nan"], "argument --lr: must be above 0"),
    (["--seconds", "x"], "argument --seconds: expected a number"),
    (["--warmup", "-1"], "argument --warmup: must be at least 0"),
    (["--final-lr", "2"], "at most 1"),
    (["--val-every", "0"], "argument --val-every: must be above 0"),
])  # fmt: skip
def test_bad_options_are_one_clear_line_and_leave_no_out(tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    argv = _args(out, 4)
    if extra[0] == "--model":
        argv = argv[: argv.index("--config")] + argv[argv.index("--config") + 2 :]  # a preset and no config
    assert _fails([*argv, *extra]) == 2
    assert message in _one_error_line(capsys)
    assert not out.exists()


def test_warmup_longer_than_the_run_and_sign_blind_losses_warn():
    def warned(*extra):
        args = train.parse_args(["--synthetic", "--out", "x", *extra])
        return " | ".join(train.setting_warnings(args, train.parse_weights(args.loss)))

    assert warned("--steps", "20000") == ""
    assert "--warmup 500 is not shorter than --steps 100" in warned("--steps", "100")
    for loss in ("sisdr=1", "sisdr=1,psa=0.5", "spec=0,sisdr=1"):
        assert "SI-SDR and PSA cannot" in warned("--loss", loss) and "snr or spec" in warned("--loss", loss)
    for loss in ("snr=1", "sisdr=1,snr=0.1", "spec=1,sisdr=0.01"):
        assert warned("--loss", loss) == ""


def test_help_shows_the_defaults():
    text = subprocess.run([sys.executable, "-m", "distill.train", "--help"], env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, check=True).stdout  # fmt: skip
    flat = " ".join(text.split())
    for option, default in [("--batch", "16"), ("--steps", "20000"), ("--lr", "0.001"), ("--warmup", "500"), ("--seed", "0")]:
        assert f"(default: {default})" in flat.split(option, 2)[2].split(" --", 1)[0], option
    assert "(default: None)" not in flat


@pytest.mark.parametrize("inverted", [False, True])
def test_validation_logs_polarity_and_best_skips_an_inverted_model(tmp_path, capsys, inverted):
    """The shipped student with its output negated: SI-SDR the same, polarity negative."""
    init = ROOT / "assets" / "checkpoints" / "student.pt"
    if inverted:
        checkpoint.flip_polarity(init, tmp_path / "flipped.pt")
        init = tmp_path / "flipped.pt"
    out = tmp_path / "run"
    argv = ["--synthetic", "--init", str(init), "--steps", "2", "--lr", "1e-9", "--warmup", "0", "--batch", "2", "--seconds", "0.5",
            "--val-every", "1", "--threads", "1", "--no-progress", "--out", str(out)]  # fmt: skip
    assert train.main(argv) == 0
    rows = _rows(out / "val.csv")
    polarity = [float(r["val_polarity"]) for r in rows]
    err = capsys.readouterr().err
    if inverted:
        assert all(p < -0.9 for p in polarity)
        assert err.count("warning: step") == 2 and "the output is inverted" in err
        assert not (out / "best.pt").exists()
    else:
        assert all(p > 0.9 for p in polarity) and "inverted" not in err
        assert (out / "best.pt").is_file()
    assert [float(r["val_sisdr"]) > 10 for r in rows] == [True, True]


def test_logs_of_an_earlier_version_gain_the_new_columns(tmp_path):
    from benchmarks.curves import read_curve

    old = "step,time,val_sisdr,val_sisdri,ood_sisdr,ood_sisdri\n500,940.7,6.5,1.7,2.6,1.1\n1000,2026.8,7.5,2.6,1.9,0.4\n"
    (tmp_path / "val.csv").write_text(old)
    log = train.CsvLog(tmp_path / "val.csv", ["step", "time", "val_sisdr", "val_sisdri", "val_polarity", "ood_sisdr", "ood_sisdri", "ood_polarity"])
    log.write({"step": 1500, "time": 1.0, "val_sisdr": 8.0, "val_sisdri": 3.0, "val_polarity": 0.9, "ood_sisdr": 3.0, "ood_sisdri": 1.5, "ood_polarity": 0.8})
    rows = _rows(tmp_path / "val.csv")
    assert [r["step"] for r in rows] == ["500", "1000", "1500"] and all(None not in r for r in rows)
    assert [r["val_polarity"] for r in rows] == ["", "", "0.9"] and rows[0]["ood_sisdri"] == "1.1"
    assert read_curve(tmp_path) == {"dev": [(500, 6.5), (1000, 7.5), (1500, 8.0)], "dev-ood": [(500, 2.6), (1000, 1.9), (1500, 3.0)]}


def test_a_stop_before_the_end_says_so(tmp_path, capsys):
    assert train.main(_args(tmp_path, 20, "--stop-at", "5")) == 0
    out = capsys.readouterr().out
    assert "stopped at step 5 of 20" in out and "--resume" in out and "-inf" not in out


def test_default_recipe_fine_tunes_with_a_sign_aware_loss():
    from distill.losses import sign_blind

    losses = [w.split()[0] for w in (ROOT / "recipes" / "default.sh").read_text().split("--loss")[1:]]
    assert losses and not any(sign_blind(train.parse_weights(loss)) for loss in losses)


@pytest.mark.parametrize("model,command", [("corrector", "distill.meco"), ("score_unet", "distill.rosecd")])
def test_models_with_a_training_loop_of_their_own_are_refused(tmp_path, capsys, model, command):
    with pytest.raises(SystemExit) as e:
        train.parse_args(["--synthetic", "--model", model, "--out", str(tmp_path / "run")])
    assert e.value.code == 2 and command in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
