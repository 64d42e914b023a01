"""Training on two processes (gloo, loopback), started as torchrun starts them."""
import csv
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from distill import checkpoint, distributed, train
from distill.models import build

ROOT = Path(__file__).resolve().parents[2]
TINY = json.dumps({"channels": [4, 4, 8], "rnn_groups": 2, "rnn_layers": 1})
TINY_GATED = json.dumps({"channels": [4, 4, 8], "branch_channels": [2, 2, 2], "trunk_groups": 2, "policy_bands": 8, "policy_hidden": 4})
DRIVER = '''"""distill.train with a synthetic sampler that spoils chosen steps of stream 0: NaN in row 0 of
step $NAN_STEP, an unreadable file at step $BROKEN_STEP."""
import os
import sys

import numpy as np

from distill import train
from distill.data import MixConfig, SyntheticSampler
from runtime.audio import AudioError


class Spoiled(SyntheticSampler):
    def batch(self, step, size, stream=0):
        if stream == 0 and step == int(os.environ.get("BROKEN_STEP", -1)):
            raise AudioError("broken.wav: unreadable (truncated)")
        noisy, clean = super().batch(step, size, stream)
        if stream == 0 and step == int(os.environ.get("NAN_STEP", -1)):
            noisy[0, 100] = np.nan
        return noisy, clean


def sampler(args, seed):
    return Spoiled(MixConfig(seconds=args.seconds), seed)


if __name__ == "__main__":
    train.make_sampler = sampler
    sys.exit(train.main(sys.argv[1:]))
'''


def _args(out, steps, *extra):
    return ["--synthetic", "--steps", str(steps), "--batch", "4", "--seconds", "0.25", "--warmup", "0", "--lr", "3e-3", "--val-every", "1000",
            "--log-every", "2", "--threads", "1", "--no-progress", "--dist-timeout", "60", *extra, "--out", str(out)]  # fmt: skip


def _env(**extra):
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ranks(command, env=None) -> list[subprocess.Popen]:
    """Two processes with the environment torchrun gives its workers."""
    port = str(_free_port())
    return [subprocess.Popen(command, env={**_env(**(env or {})), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2", "RANK": str(r),
                                           "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for r in range(2)]  # fmt: skip


def _finish(procs, timeout=120) -> list[tuple[int, str, str]]:
    try:
        done = [p.communicate(timeout=timeout) for p in procs]
        return [(p.returncode, *d) for p, d in zip(procs, done)]
    finally:
        for p in procs:
            p.kill()


def _params(path) -> dict:
    """The parameters of a checkpoint's model (BatchNorm running statistics are buffers: without
    --sync-bn they are process 0's, not the whole batch's)."""
    state = checkpoint.read(path)
    model = build(state["model"]["name"], train.config_from_dict(state["model"]["name"], state["model"]["config"]))
    names = {n for n, _ in model.named_parameters()}
    return {k: v for k, v in state["state_dict"].items() if k in names}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture
def driver(tmp_path, monkeypatch):
    """The spoiling driver as a file (for the processes) and its sampler in this process."""
    path = tmp_path / "spoiled_train.py"
    path.write_text(DRIVER)
    spec = importlib.util.spec_from_file_location("spoiled_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(train, "make_sampler", module.sampler)
    return path


def test_two_processes_take_the_step_one_process_takes_over_both_shares(tmp_path, driver, monkeypatch):
    """KD with a teacher on each process, and a step whose loss is non-finite in one process only:
    both skip it. Process 0 alone logs, validates and saves. One process with --accum 2 cuts the
    batch where two processes do, so its BatchNorm sees the same shares: the parameters agree."""
    torch.manual_seed(1)
    teacher = tmp_path / "teacher.pt"
    checkpoint.save(teacher, build("crn", train.config_from_dict("crn", json.loads(TINY))), step=0)
    argv = _args(tmp_path / "two", 4, "--model", "crn", "--config", TINY, "--teacher", str(teacher), "--kd", "output", "--val-every", "2", "--ckpt-every", "2")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(driver), *argv],
                         env=_env(NAN_STEP="1"), capture_output=True, text=True, timeout=180)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    monkeypatch.setenv("NAN_STEP", "1")
    one = [*argv[:-1], str(tmp_path / "one"), "--accum", "2"]
    assert train.main(one) == 0

    assert _same(_params(tmp_path / "two" / "last.pt"), _params(tmp_path / "one" / "last.pt"))
    assert not _same(_params(tmp_path / "two" / "last.pt"), {k: v for k, v in checkpoint.read(teacher)["state_dict"].items() if "norm" not in k})
    assert checkpoint.read(tmp_path / "two" / "last.pt")["skipped"] == 1
    assert run.stdout.count("update skipped") == 1 and run.stdout.count(": validation SI-SDR") == 2 and run.stdout.count("done: 4 steps") == 1
    assert len(list((tmp_path / "two" / "tb").glob("events.out.tfevents.*"))) == 1
    assert [r["step"] for r in _rows(tmp_path / "two" / "val.csv")] == ["2", "4"]
    rows = _rows(tmp_path / "two" / "train.csv")
    assert [r["step"] for r in rows] == ["2", "4"] and all(float(r["steps_per_s"]) > 0 and float(r["audio_s_per_s"]) > 0 for r in rows)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["args.json", "best.pt", "last.pt", "tb", "train.csv", "val.csv"]


def test_a_killed_run_resumes_exactly_on_two_processes_or_one(tmp_path):
    """A gated model with fixed gates (the policy and one branch take no part: DDP must allow unused
    parameters). Killed, resumed on two processes or on one, it ends where one process without a
    kill does."""
    steps = 12
    argv = _args(tmp_path / "two", steps, "--model", "gated_crn", "--config", TINY_GATED, "--fixed-gates", "1,0", "--ckpt-every", "2")
    procs = _ranks([sys.executable, "-m", "distill.train", *argv])
    last = tmp_path / "two" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.02)
    for p in procs:
        p.send_signal(signal.SIGKILL)  # no chance to save: only the periodic checkpoint survives
    _finish(procs)
    killed_at = checkpoint.read(last)["step"]
    assert 2 <= killed_at < steps
    shutil.copytree(tmp_path / "two", tmp_path / "copy")

    (code0, out0, err0), (code1, _, _) = _finish(_ranks([sys.executable, "-m", "distill.train", *argv, "--resume"]))
    assert code0 == code1 == 0, err0[-3000:]
    assert f"resuming {last} at step {killed_at}" in out0

    one = [*argv[:-1], str(tmp_path / "one"), "--accum", "2"]
    assert train.main(one) == 0
    assert train.main([*argv[:-1], str(tmp_path / "copy"), "--accum", "2", "--resume"]) == 0
    reference = _params(tmp_path / "one" / "last.pt")
    assert _same(_params(last), reference)
    assert _same(_params(tmp_path / "copy" / "last.pt"), reference)


def test_a_failing_process_ends_the_run_with_one_line_each(tmp_path, driver):
    """Process 1 draws step 1 and cannot; process 0, waiting for its share, stops instead of hanging."""
    argv = _args(tmp_path / "run", 6, "--model", "crn", "--config", TINY, "--dist-timeout", "30")
    started = time.time()
    (code0, _, err0), (code1, _, err1) = _finish(_ranks([sys.executable, str(driver), *argv], env={"BROKEN_STEP": "1"}), timeout=90)
    assert time.time() - started < 80
    assert code0 != 0 and code1 != 0
    lines0 = [x for x in err0.splitlines() if x.startswith("error:")]
    lines1 = [x for x in err1.splitlines() if x.startswith("error:")]
    assert lines1 == ["error: rank 1: broken.wav: unreadable (truncated)"]
    assert len(lines0) == 1 and lines0[0].startswith("error: rank 0: lost touch with the other processes")
    assert "Traceback" not in err0 + err1


def test_worker_count_does_not_change_the_batches(tmp_path):
    from distill.data import synth_noise, synth_speech
    import soundfile as sf

    rng = np.random.default_rng(0)
    for d in ("clean", "noise"):
        (tmp_path / d).mkdir()
    for i in range(3):
        sf.write(tmp_path / "clean" / f"u{i}.wav", synth_speech(rng, 24000), 16000)
        sf.write(tmp_path / "noise" / f"n{i}.wav", synth_noise(rng, 24000), 16000)
    args = train.parse_args(["--clean", str(tmp_path / "clean"), "--noise", str(tmp_path / "noise"), "--rooms", "2", "--room-cache", str(tmp_path / "rc"),
                             "--seconds", "0.5", "--out", str(tmp_path / "o")])  # fmt: skip
    sampler = train.make_sampler(args, 0)
    drawn = {w: list(distributed.batches(sampler, 3, 8, 4, distributed.Context(), workers=w)) for w in (0, 2)}
    assert len(drawn[0]) == len(drawn[2]) == 5
    for a, b in zip(drawn[0], drawn[2]):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert torch.equal(drawn[0][0][0], torch.from_numpy(sampler.batch(3, 4)[0]))


def test_workers_and_bf16_train(tmp_path):
    argv = _args(tmp_path / "w0", 3, "--model", "crn", "--config", TINY)
    assert train.main(argv) == 0
    assert train.main([*argv[:-1], str(tmp_path / "w2"), "--workers", "2"]) == 0
    a, b = (checkpoint.read(tmp_path / d / "last.pt")["state_dict"] for d in ("w0", "w2"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert train.main([*argv[:-1], str(tmp_path / "bf16"), "--precision", "bf16"]) == 0
    state = checkpoint.read(tmp_path / "bf16" / "last.pt")
    assert state["train_args"]["precision"] == "bf16" and all(torch.isfinite(v).all() for v in state["state_dict"].values())
    assert not all(torch.equal(a[k], state["state_dict"][k]) for k in a)


def test_old_train_csv_gains_the_throughput_columns(tmp_path):
    out = tmp_path / "run"
    argv = _args(out, 4, "--model", "crn", "--config", TINY)
    assert train.main([*argv, "--stop-at", "2"]) == 0
    old = ["step", "time", "lr", "loss", "loss_spec", "loss_sisdr", "sisdr", "grad_norm", "skipped"]
    rows = _rows(out / "train.csv")
    with open(out / "train.csv", "w", newline="") as f:  # as a run of the version before throughput wrote it
        w = csv.DictWriter(f, old, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    assert train.main([*argv, "--resume"]) == 0
    with open(out / "train.csv") as f:
        header = next(csv.reader(f))
    rows = _rows(out / "train.csv")
    assert header == [*old, "steps_per_s", "audio_s_per_s"]
    assert [r["step"] for r in rows] == ["2", "4"] and rows[0]["steps_per_s"] == "" and float(rows[1]["steps_per_s"]) > 0


@pytest.mark.parametrize("extra, env, message", [
    (["--sync-bn"], {}, "--sync-bn needs --device cuda"),
    (["--batch", "5"], {"WORLD_SIZE": "2", "RANK": "0"}, "--batch 5 does not split into 2 process(es) x 1 micro-batch(es)"),
    (["--accum", "3"], {}, "give a multiple of 3"),
    (["--device", "cuda"], {}, "sees no CUDA device"),
])  # fmt: skip
def test_settings_that_cannot_work_are_one_clear_line(tmp_path, capsys, monkeypatch, extra, env, message):
    if extra == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    try:
        code = train.main([*_args(tmp_path / "run", 2), *extra])
    except SystemExit as e:
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]
    assert not (tmp_path / "run").exists()
