import csv
import json

import numpy as np
import pytest
import torch

from distill import checkpoint, kd, train
from distill.dsp import stft
from distill.kd import KDConfig
from distill.models import build


def _wavs(seed=0, n=3, length=8000):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randn(n, length, generator=g) * 0.1
    teacher = clean + 0.02 * torch.randn(n, length, generator=g)
    student = clean + 0.05 * torch.randn(n, length, generator=g)
    return student, teacher, clean


def test_dispatch_with_k1_is_plain_magnitude_kd():
    s, t, y = _wavs()
    for sb in (20, 16, 7):
        got = kd.dispatch_l2(s, t, y, KDConfig(method="dispatch", topk=1.0, sb=sb))
        assert got == pytest.approx(kd.magnitude_kd(s, t).item(), rel=1e-5)


def test_dispatch_keeps_fewer_patches_and_less_loss_where_teacher_is_worse():
    s, t, y = _wavs()
    full = kd.dispatch_l2(s, t, y, KDConfig(method="dispatch", topk=1.0))
    assert torch.isfinite(kd.dispatch_l2(s, t, y, KDConfig(method="dispatch", topk=0.3)))
    assert kd.dispatch_l2(s, t, y, KDConfig(method="dispatch", topk=0.3, positive_only=True)) > 0
    assert full > 0


def test_topk_mask_is_exactly_the_top_k_by_score():
    rng = np.random.default_rng(0)
    for _ in range(50):
        B, N = 3, int(rng.integers(1, 40))
        kgs = torch.from_numpy(rng.integers(-5, 6, size=(B, N)).astype(np.float32))  # small integers: ties
        valid = torch.from_numpy(rng.random((B, N)) < 0.7)
        valid[:, 0] = True
        k = float(rng.uniform(0.05, 1.0))
        got = kd.topk_mask(kgs, valid, k)
        for b in range(B):
            scores = [float(kgs[b, i]) for i in range(N) if valid[b, i]]
            m = max(int(np.floor(len(scores) * k)), 1)
            threshold = sorted(scores, reverse=True)[m - 1]
            expected = [bool(valid[b, i]) and float(kgs[b, i]) >= threshold for i in range(N)]
            assert got[b].tolist() == expected
        pos = kd.topk_mask(kgs, valid, k, positive_only=True)
        assert torch.equal(pos, got & (kgs > 0))


def test_mssp_split_matches_a_slow_reference():
    rng = np.random.default_rng(1)
    mag = torch.from_numpy(np.abs(rng.standard_normal((2, 30, 7))).astype(np.float32))
    got = kd.split_bins(mag)
    for b in range(2):
        for t in range(7):
            running, best, arg = 0.0, -1.0, 0
            fo = []
            for f in range(30):
                running = max(running, float(mag[b, f, t])) if f else float(mag[b, 0, t])
                fo.append(running)
            for f in range(29):
                jump = (fo[f + 1] - fo[f]) / (fo[f] + 1e-8)
                if jump > best:
                    best, arg = jump, f
            assert int(got[b, t]) == arg


@pytest.mark.parametrize("method", ["dfkd", "dispatch-mssp"])
def test_dfkd_is_finite_and_zero_when_the_student_is_the_teacher(method):
    s, t, y = _wavs()
    cfg = KDConfig(method=method)
    assert cfg.patches == ((10, 40) if method == "dispatch-mssp" else (20, 20))
    loss = kd.dfkd(s, t, y, cfg)
    assert torch.isfinite(loss) and loss > 0
    assert kd.dfkd(t, t, y, cfg) == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("mode", ["f", "t", "tf"])
def test_gram_kd_across_channel_counts(mode):
    teacher, student = build("teacher"), build("student-30k")
    spec = stft(torch.randn(2, 4000) * 0.1, teacher.config.stft)
    _, ta = teacher(spec, taps=True)
    _, sa = student(spec, taps=True)
    cfg = KDConfig(method="gram", gram_mode=mode, gram_chunk=4)
    loss = kd.gram_loss(sa, ta, cfg)
    assert torch.isfinite(loss) and loss > 0
    assert kd.gram_loss(ta, ta, cfg).item() == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())


def test_gram_kd_refuses_mismatched_grids():
    teacher = build("teacher")
    shallow = build("crn", channels=(4, 8, 8), rnn_groups=2)
    spec = stft(torch.randn(1, 4000) * 0.1, teacher.config.stft)
    _, ta = teacher(spec, taps=True)
    _, sa = shallow(spec, taps=True)
    with pytest.raises(ValueError, match="matching time-frequency grids.*rnn is T x F = 26 x 21"):
        kd.gram_loss(sa, ta, KDConfig(method="gram", gram_layers=("enc2", "rnn")))
    with pytest.raises(ValueError, match="not an activation"):
        kd.gram_loss(sa, ta, KDConfig(method="gram", gram_layers=("enc4",)))


def test_no_gradient_reaches_the_teacher():
    teacher = build("student-30k").eval().requires_grad_(False)
    student = build("student-30k")
    before = [p.clone() for p in teacher.parameters()]
    noisy, clean = torch.randn(2, 4000) * 0.1, torch.randn(2, 4000) * 0.1
    for method in ("output", "dispatch", "dispatch-mssp", "gram", "two-step"):
        obj = train.Objective({"spec": 1.0}, KDConfig(method=method), teacher, total_steps=10)
        loss, terms, _ = obj(student, noisy, clean, step=0)
        loss.backward()
        assert all(p.grad is None for p in teacher.parameters()), method
        assert not teacher.training
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))


TINY = json.dumps({"channels": [4, 4, 8], "rnn_groups": 2, "rnn_layers": 1})


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    """An untrained teacher with a random last layer: its outputs are far from the pass-through
    every student starts as, so each KD term has something to fall from."""
    torch.manual_seed(1)
    model = build("crn", channels=(8, 8, 8), rnn_groups=2, rnn_layers=1)
    model.decoder[0].conv.reset_parameters()
    path = tmp_path_factory.mktemp("t") / "teacher.pt"
    checkpoint.save(path, model)
    return path


@pytest.mark.parametrize("method", ["output", "dispatch", "dfkd", "dispatch-mssp", "gram", "two-step"])
def test_each_kd_loss_falls_in_a_short_run(method, tiny_teacher, tmp_path):
    args = ["--synthetic", "--model", "crn", "--config", TINY, "--steps", "60", "--batch", "2", "--seconds", "0.5", "--lr", "3e-3",
            "--warmup", "5", "--val-every", "1000", "--log-every", "5", "--threads", "1", "--no-progress", "--out", str(tmp_path),
            "--teacher", str(tiny_teacher), "--kd", method, "--two-step-split", "0.5", "--gram-layers", "enc0,enc1,rnn,dec1"]  # fmt: skip
    assert train.main(args) == 0
    with open(tmp_path / "train.csv") as f:
        rows = list(csv.DictReader(f))
    column = "loss_gram" if method == "two-step" else "loss_kd"
    values = [float(r[column]) for r in rows if r[column]]
    assert all(np.isfinite(values)) and len(values) >= 4
    assert np.mean(values[-2:]) < np.mean(values[:2]), values
