import csv
import json

import numpy as np
import pytest
import torch

from distill import checkpoint, meanflow, meco
from distill.dsp import StftConfig, istft, stft
from distill.losses import si_sdr
from distill.models import build, cost
from distill.models.corrector import SIZES, CorrectorConfig

TINY = dict(channels=(4, 4, 4, 8, 8), rnn_groups=2, embed=8, features=4)
TINY_JSON = json.dumps(TINY)


def _corrector(dtype=torch.float32, **overrides):
    """A tiny corrector with every weight random (the output layer starts at zero otherwise)."""
    torch.manual_seed(0)
    m = build("corrector", **{**TINY, **overrides}).to(dtype).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return m


def _spectra(n=3, batch=2, frames=30, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(batch, frames, 161, 2, generator=g, dtype=dtype) * 0.5 for _ in range(n)]


@pytest.mark.parametrize("predict", ["velocity", "clean"])
def test_streaming_steps_equal_forward_at_any_r_and_t(predict):
    m = _corrector(predict=predict)
    z, est, noisy = _spectra()
    frames = m.pack(z, est, noisy)  # [B, T, F, 6]
    r, t = torch.tensor([0.05, 0.4]), torch.tensor([0.9, 0.4])
    with torch.no_grad():
        full = m(frames, r, t)
        state, outs = m.initial_state(2), []
        for i in range(frames.shape[1]):
            u, state = m.step(frames[:, i], state, r, t)
            outs.append(u)
    assert full.shape == z.shape
    assert (torch.stack(outs, 1) - full).abs().max() <= 1e-5
    assert [s.shape for s in state] == [s.shape for s in m.initial_state(2)] and len(m.state_names()) == len(state)


def test_causal_and_step_defaults_to_the_one_step_inference_point():
    m = _corrector()
    z, est, noisy = _spectra(batch=1)
    frames = m.pack(z, est, noisy)
    changed = frames.clone()
    changed[:, 11:] = torch.randn_like(changed[:, 11:])
    ones = torch.ones(1)
    with torch.no_grad():
        a, b = m(frames, ones * 0.03, ones), m(changed, ones * 0.03, ones)
        default, _ = m.step(frames[:, 0], m.initial_state(1))
        explicit, _ = m.step(frames[:, 0], m.initial_state(1), ones * m.config.t_eps, ones)
    assert torch.equal(a[:, :11], b[:, :11]) and not torch.allclose(a[:, 11:], b[:, 11:])
    assert torch.equal(default, explicit)


def test_cost_of_the_sizes_and_the_output_starts_at_zero():
    costs = {k: cost(build("corrector", **v)) for k, v in SIZES.items()}
    assert costs["xs"].macs_per_frame < costs["s"].macs_per_frame < costs["m"].macs_per_frame
    assert 50_000 < costs["s"].params < 150_000  # the student's order of size
    fresh = build("corrector", **TINY)
    z, est, noisy = _spectra(batch=1)
    with torch.no_grad():
        assert torch.equal(meanflow.one_step(fresh, est, noisy), est), "eps = 0 at initialisation passes the student's estimate through"
    clean = build("corrector", **TINY, predict="clean")
    eps = torch.randn_like(est)
    c = clean.config
    with torch.no_grad():
        assert torch.allclose(meanflow.one_step(clean, est, noisy), est, atol=1e-6)
        seeded = meanflow.one_step(clean, est, noisy, eps)
    assert torch.allclose(seeded, est + c.t_eps * c.sigma_max * eps, atol=1e-5), "predict=clean: the path noise passes through in closed form"
    with torch.no_grad():
        velocity_seeded = meanflow.one_step(fresh, est, noisy, eps)
    assert torch.allclose(velocity_seeded, est + c.sigma_max * eps, atol=1e-5), "predict=velocity starts by keeping all of it"


def test_path_endpoints_and_velocity():
    c = CorrectorConfig(sigma_max=0.487)
    x, est, eps = _spectra(dtype=torch.float64)
    zero, one = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    assert torch.equal(meanflow.path(x, est, eps, zero, c), x)
    torch.testing.assert_close(meanflow.path(x, est, eps, one, c), est + 0.487 * eps)
    t, h = torch.tensor([0.3, 0.7], dtype=torch.float64), 1e-6
    slope = (meanflow.path(x, est, eps, t + h, c) - meanflow.path(x, est, eps, t - h, c)) / (2 * h)
    torch.testing.assert_close(slope, meanflow.velocity(x, est, eps, c))


def test_compression_round_trip():
    spec = _spectra(n=1)[0]
    torch.testing.assert_close(meanflow.from_flow(meanflow.to_flow(spec, 0.3), 0.3), spec, rtol=1e-4, atol=1e-6)
    mag = meanflow.to_flow(spec, 0.3).square().sum(-1).sqrt()
    torch.testing.assert_close(mag, spec.square().sum(-1).sqrt().pow(0.3))


def test_finite_difference_jvp_matches_torch_func_jvp():
    for dtype, step, tol in ((torch.float64, 1e-4, 1e-5), (torch.float32, 1e-3, 2e-3)):  # the training default is the float32 row
        m = _corrector(dtype)
        z, est, noisy, v = _spectra(n=4, dtype=dtype)
        r, t = torch.tensor([0.1, 0.5], dtype=dtype), torch.tensor([0.8, 0.9], dtype=dtype)
        u = meanflow.field(m, est, noisy)
        fd = meanflow.jvp_fd(u, z, r, t, v, step)
        exact = meanflow.jvp_exact(u, z, r, t, v)
        assert not fd.requires_grad and not exact.requires_grad
        assert exact.abs().max() > 1e-3
        assert (fd - exact).norm() / exact.norm() < tol


def test_meanflow_target_of_a_known_flow():
    """z_t = x + t^2 d has v = 2 t d and average velocity u(r, t) = (t + r) d, whose derivative
    along the path is d: both JVPs find it, the MeanFlow target (c = 1) is the true u, and at
    r = t the target is v whatever c."""
    x, d = _spectra(n=2, dtype=torch.float64)
    r, t = torch.tensor([0.1, 0.5], dtype=torch.float64), torch.tensor([0.8, 0.5], dtype=torch.float64)

    def u(z, rr, tt):
        return (tt + rr)[:, None, None, None] * d.repeat(z.shape[0] // d.shape[0], 1, 1, 1) + 0 * z

    z = x + (t**2)[:, None, None, None] * d
    v = 2 * t[:, None, None, None] * d
    for jvp in (meanflow.jvp_fd(u, z, r, t, v), meanflow.jvp_exact(u, z, r, t, v)):
        torch.testing.assert_close(jvp, d)
        torch.testing.assert_close(meanflow.xr_target(v, jvp, r, t, 1.0), u(z, r, t))
        torch.testing.assert_close(meanflow.xr_target(v, jvp, t, t, 0.5), v)
    clipped = meanflow.clip_per_example(d * 100, 5.0)
    assert torch.allclose(clipped.flatten(1).norm(dim=1), torch.full((2,), 5.0, dtype=torch.float64))
    torch.testing.assert_close(meanflow.clip_per_example(d * 1e-3, 5.0), d * 1e-3)


class _Oracle(torch.nn.Module):
    """The conditional path's true velocity at t = 1: u(z_1) = z_1 - x (straight path)."""

    def __init__(self, x, t_eps):
        super().__init__()
        self.x, self.config = x, CorrectorConfig(t_eps=t_eps)

    def forward(self, frames, r, t):
        return frames[..., :2] - self.x


@pytest.mark.parametrize("seeded", [False, True])
def test_one_step_with_an_oracle_velocity_recovers_x(seeded):
    cfg = StftConfig()
    g = torch.Generator().manual_seed(3)
    clean = torch.randn(1, 16000, generator=g) * 0.1
    est_wav = clean + 0.05 * torch.randn(1, 16000, generator=g)
    x, est, noisy = (meanflow.to_flow(stft(w, cfg), 0.3) for w in (clean, est_wav, est_wav))
    eps = torch.randn(x.shape, generator=g) if seeded else None
    oracle = _Oracle(x, 0.03)
    out = meanflow.one_step(oracle, est, noisy, eps)
    z1 = est if eps is None else est + 0.487 * eps
    torch.testing.assert_close(out, meanflow.path(x, est, torch.zeros_like(x) if eps is None else eps, torch.full((1,), 0.03), oracle.config))
    assert (out - x).abs().max() <= 0.03 * (z1 - x).abs().max() + 1e-6
    oracle.config = CorrectorConfig(t_eps=1e-4)
    wav = istft(meanflow.from_flow(meanflow.one_step(oracle, est, noisy, eps), 0.3), cfg, 16000)
    assert si_sdr(wav, clean).item() > 40


def _train(student, out, steps, *extra):
    return meco.main(["train", "--student", str(student), "--synthetic", "--seconds", "0.5", "--config", TINY_JSON, "--steps", str(steps),
                      "--batch", "2", "--val-every", "1000", "--log-every", "5", "--threads", "1", "--no-progress", "--out", str(out), *extra])  # fmt: skip


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_dso_training_lowers_the_loss_of_a_batch():
    """Forty Adam steps on one batch (every DSO term on) lower its loss, measured with the same
    draws of t, r and noise before and after."""
    from distill.data import MixConfig, SyntheticSampler

    torch.manual_seed(0)
    student = build("student-30k").eval()
    model = build("corrector", **TINY)
    chain = meco.Chain(student, model)
    noisy, clean = (torch.from_numpy(b) for b in SyntheticSampler(MixConfig(seconds=0.5), 0).batch(0, 2)[:2])
    with torch.no_grad():
        _, (noisy_c, est_c) = chain.estimates(stft(noisy, student.config.stft))
        x = meanflow.to_flow(stft(clean, student.config.stft), 0.3)
    cfg = meanflow.DSOConfig(cfm_only=0, xr_ramp=0, gamma_ramp=0)

    def loss_now():
        torch.manual_seed(123)
        with torch.no_grad():
            return meanflow.dso_loss(model, x, est_c, noisy_c, clean, 0.5, cfg)

    before, terms = loss_now()
    assert set(terms) == {"cfm", "xr", "end"}
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(40):
        loss, _ = meanflow.dso_loss(model, x, est_c, noisy_c, clean, 0.5, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss_now()[0] < 0.9 * before


def test_training_keeps_the_student_logs_and_resumes_exactly(small_checkpoint, small_devset, tmp_path):
    common = ["--cfm-only", "0.2", "--warmup", "5", "--val-every", "30", "--val-dir", str(small_devset)]
    assert _train(small_checkpoint, tmp_path / "whole", 30, *common) == 0
    rows = _rows(tmp_path / "whole" / "train.csv")
    assert len(rows) == 6 and all(r["loss_xr"] and r["loss_end"] for r in rows[2:]) and not rows[0]["loss_xr"], "x_r and endpoint terms join after --cfm-only"
    whole = checkpoint.read(tmp_path / "whole" / "last.pt")
    original = checkpoint.read(small_checkpoint)["state_dict"]
    assert all(torch.equal(original[k], whole["student"]["state_dict"][k]) for k in original), "the student (BatchNorm statistics too) is unchanged"
    assert (tmp_path / "whole" / "best.pt").is_file() and list((tmp_path / "whole" / "tb").glob("events.*"))
    val = _rows(tmp_path / "whole" / "val.csv")[-1]
    assert {"val_student_sisdr", "val_zero_sisdr", "val_seeded_sisdr", "val_zero_polarity"} <= set(val)

    assert _train(small_checkpoint, tmp_path / "split", 30, *common, "--stop-at", "12") == 0
    assert meco.main(["train", "--resume", "--out", str(tmp_path / "split"), "--synthetic", "--seconds", "0.5", "--steps", "30", "--batch", "2",
                      "--log-every", "5", "--threads", "1", "--no-progress", *common]) == 0  # fmt: skip
    split = checkpoint.read(tmp_path / "split" / "last.pt")
    assert split["step"] == 30
    for key in ("state_dict", "online"):
        assert all(torch.equal(whole[key][k], split[key][k]) for k in whole[key]), key
    assert not all(torch.equal(whole["state_dict"][k], whole["online"][k]) for k in whole["online"]), "EMA and online weights differ"


def test_training_resumes_from_a_compact_state_with_fresh_moments(small_checkpoint, tmp_path, capsys):
    """What recipes/state keeps of a corrector run (no optimiser moments) continues it, re-warmed."""
    run = tmp_path / "run"
    assert _train(small_checkpoint, run, 20, "--stop-at", "10", "--warmup", "2", "--log-every", "1") == 0
    before = checkpoint.read(run / "last.pt")
    kept = checkpoint.compact(run / "last.pt", run / "last.pt")
    assert "optimizer" not in kept and kept["moments_reset_at"] == 10 and "online" in kept and "student" in kept
    capsys.readouterr()
    assert meco.main(["train", "--resume", "--out", str(run), "--synthetic", "--seconds", "0.5", "--steps", "20", "--batch", "2", "--warmup", "2",
                      "--val-every", "1000", "--log-every", "1", "--threads", "1", "--no-progress"]) == 0  # fmt: skip
    assert "fresh ones from step 10" in capsys.readouterr().out
    lr = {int(r["step"]): float(r["lr"]) for r in _rows(run / "train.csv")}
    assert sorted(lr) == list(range(1, 21)) and lr[11] < 0.05 * lr[10], "one row per step; the rate re-warms after the reset"
    after = checkpoint.read(run / "last.pt")
    assert after["step"] == 20 and after["moments_reset_at"] == 10 and "optimizer" in after
    assert not all(torch.equal(after["online"][k], before["online"][k]) for k in before["online"]), "it trained on"


def test_a_corrector_checkpoint_enhances_and_evaluates(small_checkpoint, small_devset, tmp_path, capsys):
    from distill import enhance, evaluate

    assert _train(small_checkpoint, tmp_path / "run", 10, "--cfm-only", "0", "--val-dir", str(small_devset)) == 0
    ck = tmp_path / "run" / "last.pt"
    assert isinstance(checkpoint.load_model(ck), meco.Corrector)
    chain = meco.load_enhancer(ck)
    assert isinstance(chain, meco.Chain) and chain.noise == "seeded"
    both = cost(chain)
    assert both.macs_per_frame == cost(chain.student).macs_per_frame + cost(chain.corrector).macs_per_frame
    assert both.params == cost(chain.student).params + cost(chain.corrector).params
    wav = torch.from_numpy(np.random.default_rng(0).standard_normal(8000).astype(np.float32))[None] * 0.1
    with torch.no_grad():
        assert torch.equal(chain.enhance(wav), chain.enhance(wav)), "seeded eps: the same output every call"
        zero = meco.load_enhancer(ck)
        zero.noise = "zero"
        assert not torch.equal(chain.enhance(wav), zero.enhance(wav))
    out = tmp_path / "e.wav"
    capsys.readouterr()
    assert enhance.main(["--checkpoint", str(ck), "--input", str(small_devset / "noisy" / "u0.wav"), "--output", str(out),
                         "--reference", str(small_devset / "clean" / "u0.wav")]) == 0  # fmt: skip
    assert "SI-SDR" in capsys.readouterr().out and out.is_file()
    assert evaluate.main(["--data", str(small_devset), "--checkpoint", str(ck), "--no-dnsmos"]) == 0
    assert "| last |" in capsys.readouterr().out
    checkpoint.strip(ck, tmp_path / "ship.pt")
    assert isinstance(meco.load_enhancer(tmp_path / "ship.pt"), meco.Chain), "a stripped corrector keeps its student"

    before = ck.read_bytes()
    assert meco.main(["noise", str(ck), str(tmp_path / "zero.pt"), "--infer-noise", "zero"]) == 0
    copy = meco.load_enhancer(tmp_path / "zero.pt")
    assert copy.noise == "zero" and ck.read_bytes() == before, "the copy runs eps = 0; the source is untouched"
    with torch.no_grad():
        assert torch.equal(copy.enhance(wav), zero.enhance(wav))
    assert meco.main(["noise", str(tmp_path / "zero.pt"), str(tmp_path / "s7.pt"), "--infer-noise", "seeded", "--noise-seed", "7"]) == 0
    assert (meco.load_enhancer(tmp_path / "s7.pt").noise, meco.load_enhancer(tmp_path / "s7.pt").seed) == ("seeded", 7)
    capsys.readouterr()
    assert meco.main(["noise", str(ck), str(ck), "--infer-noise", "zero"]) == 2
    assert "give a new file" in _error_line(capsys) and ck.read_bytes() == before
    assert meco.main(["noise", str(small_checkpoint), str(tmp_path / "x.pt"), "--infer-noise", "zero"]) == 2
    assert "not a corrector's" in _error_line(capsys) and not (tmp_path / "x.pt").exists()


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_students_are_one_clear_line(small_checkpoint, small_devset, tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    assert _train(small_checkpoint, tmp_path / "c", 5, "--cfm-only", "0", "--val-dir", str(small_devset)) == 0
    corrector = tmp_path / "c" / "last.pt"
    out = tmp_path / "o"
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        meco.main(["train", "--synthetic", "--out", str(out)])
    assert e.value.code == 2 and "--student CKPT is required" in _error_line(capsys)
    for student, message in ((tmp_path / "missing.pt", "no such checkpoint"), (text, "not a readable checkpoint"), (corrector, "a corrector's checkpoint")):
        assert meco.main(["train", "--synthetic", "--out", str(out), "--student", str(student)]) == 2
        assert message in _error_line(capsys)
        assert not out.exists()
    with pytest.raises(checkpoint.CheckpointError, match="not a corrector's"):
        meco.load_chain(small_checkpoint)
    assert meco.main(["fly"]) == 2
    assert "give a command" in _error_line(capsys)
