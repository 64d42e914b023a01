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
