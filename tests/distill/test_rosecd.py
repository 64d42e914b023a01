import copy
import json
import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from distill import checkpoint, rosecd, sde as sdes
from distill.models import build, cost
from distill.models.score_unet import ScoreUNet, ScoreUNetConfig

TINY = {"channels": [4, 8], "emb": 8, "groups": 2}
SDE = sdes.OUVE()


def _tiny(seed: int = 0, **changes) -> ScoreUNet:
    torch.manual_seed(seed)
    model = build("score_unet", ScoreUNetConfig(**{**TINY, "channels": (4, 8), **changes}))
    for block in [*model.down[0], *model.up[0], model.mid]:  # out of the identity start, so the network's output matters
        torch.nn.init.normal_(block.conv2.weight, std=0.2)
    return model


def _spectra(seed: int = 0, frames: int = 12, bins: int = 161):
    g = torch.Generator().manual_seed(seed)
    x0 = 0.1 * torch.randn(2, frames, bins, 2, generator=g)
    y = x0 + 0.1 * torch.randn(2, frames, bins, 2, generator=g)
    return x0, y


def test_marginal_std_is_the_closed_form_of_the_variance_integral():
    for t in (0.03, 0.2, 0.5, 1.0):
        g2 = lambda s: float(SDE.diffusion(torch.tensor(s))) ** 2
        var, _ = quad(lambda s: math.exp(-2 * SDE.theta * (t - s)) * g2(s), 0, t)
        assert float(SDE.std(torch.tensor(t))) == pytest.approx(math.sqrt(var), rel=1e-5)
    x0, y = torch.tensor([[0.3, 0.0]]), torch.tensor([[-0.2, 0.1]])
    t = torch.tensor([0.7])
    assert torch.allclose(SDE.mean(x0, y, t), math.exp(-1.5 * 0.7) * x0 + (1 - math.exp(-1.5 * 0.7)) * y)


def test_marginal_matches_an_euler_maruyama_simulation_of_the_sde():
    g = torch.Generator().manual_seed(0)
    n, steps, t_end = 20000, 400, 0.6
    x0, y = torch.tensor([0.3, 0.0]).expand(n, 2), torch.tensor([-0.2, 0.1]).expand(n, 2)
    x, dt = x0.clone(), t_end / steps
    for k in range(steps):
        t = torch.full((n,), k * dt)
        x = x + SDE.drift(x, y) * dt + SDE.diffusion(t)[:, None] * math.sqrt(dt) * sdes.complex_noise(x, g)
    t = torch.full((n,), t_end)
    sigma = float(SDE.std(t[:1]))
    mean = SDE.mean(x0, y, t)[0]
    assert torch.allclose(x.mean(0), mean, atol=4 * sigma / math.sqrt(n))
    power = (x - mean).square().sum(-1).mean()  # E|x - mu|^2, complex
    assert float(power) == pytest.approx(sigma**2, rel=0.04)
    assert float((x[:, 0] - mean[0]).var()) == pytest.approx(sigma**2 / 2, rel=0.04)  # circular: half the power in each part


def test_edm_scalings_tend_to_the_identity_at_zero_noise():
    s = sdes.edm_scalings(torch.tensor([1e-6, 0.1, 10.0]), 0.1)
    assert float(s.c_skip[0]) == pytest.approx(1.0, abs=1e-9) and float(s.c_out[0]) == pytest.approx(1e-6, rel=1e-3)
    assert float(s.c_skip[1]) == pytest.approx(0.5) and float(s.c_in[1]) == pytest.approx(1 / math.sqrt(0.02))
    assert float(s.c_skip[2]) < 1e-3 and float(s.c_out[2]) == pytest.approx(0.1, rel=1e-3)  # large noise: the network predicts the data
    model = _tiny().eval()
    x0, y = _spectra()
    with torch.no_grad():
        near_zero = model(y, y, torch.full((2,), 1e-7)) - y
        at_top = model(y, y, torch.full((2,), 1.0)) - y
    assert near_zero.abs().max() < 1e-3 * at_top.abs().max()
    assert at_top.abs().max() > 1e-2


def test_sampler_with_an_oracle_denoiser_recovers_the_clean_target():
    x0, y = _spectra()
    oracle = lambda x_t, y_, t: SDE.mean(x0, y_, t)  # the clean spectrum is known: the marginal mean is exact
    out = sdes.pc_sample(oracle, y, SDE, steps=30, generator=torch.Generator().manual_seed(1))
    error = (out - x0).square().mean().sqrt()
    assert error < 0.05 * (y - x0).square().mean().sqrt()
    one = sdes.one_step(oracle, y, SDE, torch.Generator().manual_seed(1))  # one evaluation of the oracle is only the mean at T
    assert (one - x0).square().mean().sqrt() > 0.5 * (y - x0).square().mean().sqrt()


def test_randomized_teacher_step_differs_from_the_deterministic_one_by_the_injected_noise():
    model = _tiny().eval()
    x0, y = _spectra()
    t, t_next = torch.tensor([0.8, 0.3]), torch.tensor([0.75, 0.25])
    x_t = SDE.mean(x0, y, t) + SDE.std(t)[:, None, None, None] * sdes.complex_noise(x0, torch.Generator().manual_seed(2))
    z = sdes.complex_noise(x0, torch.Generator().manual_seed(3))
    with torch.no_grad():
        plain = sdes.heun_step(model, x_t, y, t, t_next, SDE)
        randomized = sdes.heun_step(model, x_t, y, t, t_next, SDE, z)
    injected = SDE.diffusion(t)[:, None, None, None] * (t - t_next).sqrt()[:, None, None, None] * z
    assert torch.allclose(randomized - plain, injected, atol=1e-6)
    assert (plain - x_t).abs().max() > 1e-3  # the deterministic step moves


def test_consistency_modes_share_their_draws_and_ct_needs_no_teacher():
    teacher = _tiny().eval()
    x0, y = _spectra()
    pairs = {m: sdes.consistency_pair(x0, y, SDE, 30, m, None if m == "ct" else teacher, torch.Generator().manual_seed(4)) for m in sdes.MODES}
    assert all(torch.equal(pairs[m].x_t, pairs["ct"].x_t) and torch.equal(pairs[m].t, pairs["ct"].t) for m in sdes.MODES)
    ts = SDE.times(30)
    n = torch.searchsorted(-ts, -pairs["ct"].t)
    assert torch.allclose(pairs["ct"].t_next, ts[n + 1])
    assert not torch.allclose(pairs["rosecd"].x_next, pairs["cd"].x_next)
    with pytest.raises(ValueError, match="needs a teacher"):
        sdes.consistency_pair(x0, y, SDE, 30, "cd", None)


def test_a_consistency_step_moves_the_student_toward_the_target_and_the_ema_tracks_it():
    teacher = _tiny().eval().requires_grad_(False)
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    target = AveragedModel(student, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    target.update_parameters(student)
    x0, y = _spectra()

    def loss():
        pair = sdes.consistency_pair(x0, y, SDE, 30, "rosecd", teacher, torch.Generator().manual_seed(5))
        with torch.no_grad():
            goal = target(pair.x_next, y, pair.t_next)
        return sdes.bin_error(student(pair.x_t, y, pair.t), goal).mean()

    before = loss()
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    before.backward()
    opt.step()
    old = [p.detach().clone() for p in target.module.parameters()]
    target.update_parameters(student)
    assert loss() < before
    for o, n, s in zip(old, target.module.parameters(), student.parameters()):
        assert torch.allclose(n, 0.9 * o + 0.1 * s)
    assert any(not torch.equal(o, n) for o, n in zip(old, target.module.parameters()))


def test_checkpoint_round_trip_rebuilds_the_model_and_its_sampler(tmp_path):
    model = _tiny(sampler="one-step", c_in="1").eval()
    checkpoint.save(tmp_path / "m.pt", model, step=3)
    loaded = checkpoint.load_model(tmp_path / "m.pt")
    assert isinstance(loaded, ScoreUNet) and loaded.config == model.config and loaded.config.nfe == 1
    x0, y = _spectra()
    t = torch.full((2,), 0.5)
    with torch.no_grad():
        assert torch.equal(loaded(x0, y, t), model(x0, y, t))
    wav = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 4000)).astype(np.float32) * 0.1)
    assert torch.equal(loaded.enhance(wav), model.enhance(wav))  # the sampler's noise comes from a fixed seed
    c = cost(loaded)
    assert c.params == sum(p.numel() for p in model.parameters()) and c.macs_per_frame > 0


def test_enhance_cli_runs_a_score_checkpoint(tmp_path, small_devset, capsys):
    from distill import enhance

    checkpoint.save(tmp_path / "m.pt", _tiny(sampler="pc", steps=2))
    src = sorted((small_devset / "noisy").iterdir())[0]
    assert enhance.main(["--input", str(src), "--output", str(tmp_path / "o.wav"), "--checkpoint", str(tmp_path / "m.pt")]) == 0
    import soundfile as sf

    assert sf.info(tmp_path / "o.wav").frames == sf.info(src).frames


def _distill_args(out, teacher, steps, *extra):
    return ["distill", "--teacher", str(teacher), "--synthetic", "--steps", str(steps), "--batch", "2", "--seconds", "0.3", "--val-every", "1000",
            "--val-files", "1", "--log-every", "1", "--pesq-weight", "0", "--threads", "1", "--no-progress", "--out", str(out), *extra]  # fmt: skip


def test_stop_and_resume_equals_one_run(tmp_path):
    teacher = tmp_path / "teacher.pt"
    checkpoint.save(teacher, _tiny())
    assert rosecd.main(_distill_args(tmp_path / "whole", teacher, 4)) == 0
    assert rosecd.main(_distill_args(tmp_path / "split", teacher, 4, "--stop-at", "2")) == 0
    assert checkpoint.read(tmp_path / "split" / "last.pt")["step"] == 2
    assert rosecd.main(_distill_args(tmp_path / "split", teacher, 4, "--resume")) == 0
    a, b = checkpoint.read(tmp_path / "whole" / "last.pt"), checkpoint.read(tmp_path / "split" / "last.pt")
    assert a["step"] == b["step"] == 4
    for key in ("state_dict", "online"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    assert not torch.equal(a["online"]["stem.weight"], a["state_dict"]["stem.weight"])  # the EMA lags the online weights
    student = checkpoint.load_model(tmp_path / "whole" / "last.pt")
    assert student.config.sampler == "one-step" and student.config.c_in == "1"
    args = json.loads((tmp_path / "whole" / "args.json").read_text())
    assert args["pesq_weight"] == 0 and not args["deterministic"]
    rows = (tmp_path / "whole" / "train.csv").read_text().splitlines()
    assert rows[0].startswith("step,time,lr,loss,loss_consistency,loss_sisdr") and len(rows) == 5


def test_a_student_resumes_only_against_the_teacher_weights_it_started_from(tmp_path, capsys):
    teacher, run = tmp_path / "teacher.pt", tmp_path / "run"
    checkpoint.save(teacher, _tiny())
    assert rosecd.main(_distill_args(run, teacher, 4, "--stop-at", "2")) == 0
    before = (run / "last.pt").read_bytes()
    checkpoint.save(tmp_path / "moved.pt", _tiny(seed=1))  # the teacher trained on
    capsys.readouterr()
    assert rosecd.main(_distill_args(run, tmp_path / "moved.pt", 4, "--resume")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other teacher weights" in err[0] and "--force" in err[0]
    assert (run / "last.pt").read_bytes() == before
    checkpoint.save(tmp_path / "copy.pt", checkpoint.load_model(teacher), note="another file, the same weights")
    assert rosecd.main(_distill_args(run, tmp_path / "copy.pt", 4, "--resume")) == 0
    assert checkpoint.read(run / "last.pt")["step"] == 4


def test_resume_from_a_compact_state_rewarms_fresh_moments(tmp_path, capsys):
    """What recipes/state keeps of a long run (no optimiser moments) continues it, re-warmed."""
    teacher, run = tmp_path / "teacher.pt", tmp_path / "run"
    checkpoint.save(teacher, _tiny())
    assert rosecd.main(_distill_args(run, teacher, 6, "--stop-at", "3", "--warmup", "1")) == 0
    kept = checkpoint.compact(run / "last.pt", run / "last.pt")
    assert "optimizer" not in kept and kept["moments_reset_at"] == 3 and "online" in kept
    capsys.readouterr()
    assert rosecd.main(_distill_args(run, teacher, 6, "--resume", "--warmup", "1")) == 0
    assert "fresh ones from step 3" in capsys.readouterr().out
    lr = [float(r.split(",")[2]) for r in (run / "train.csv").read_text().splitlines()[1:]]
    assert len(lr) == 6 and lr[3] < 0.01 * lr[2] and lr[3] < lr[4] < lr[5], "the rate re-warms after the reset"
    after = checkpoint.read(run / "last.pt")
    assert after["step"] == 6 and after["moments_reset_at"] == 3 and "optimizer" in after


def test_teacher_command_trains_and_validates(tmp_path):
    args = ["teacher", "--synthetic", "--config", json.dumps(TINY), "--steps", "2", "--batch", "2", "--seconds", "0.3", "--val-every", "2",
            "--val-files", "1", "--val-steps", "2", "--log-every", "1", "--threads", "1", "--no-progress", "--out", str(tmp_path)]  # fmt: skip
    assert rosecd.main(args) == 0
    assert (tmp_path / "val.csv").read_text().count("\n") == 2
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert checkpoint.load_model(tmp_path / "last.pt").config.sampler == "pc"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: ["distill", "--teacher", str(d / "none.pt")], "no such checkpoint"),
        (lambda d: ["distill", "--teacher", str(d / "crn.pt")], "not a score model"),
        (lambda d: ["teacher", "--config", '{"chanels": [4]}'], "has no field 'chanels'"),
        (lambda d: ["ct", "--config", '{"channels": [0]}'], "channels must be positive"),
    ],
)
def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path, capsys, make, message):
    checkpoint.save(tmp_path / "crn.pt", build("student-30k"))
    out = tmp_path / "run"
    assert rosecd.main([*make(tmp_path), "--synthetic", "--no-progress", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not out.exists()


def test_pesq_weight_without_torch_pesq_is_refused_or_used(tmp_path, capsys):
    try:
        from torch_pesq import PesqLoss  # noqa: F401
    except Exception:
        available = False
    else:
        available = True
    checkpoint.save(tmp_path / "t.pt", _tiny())
    code = rosecd.main(_distill_args(tmp_path / "run", tmp_path / "t.pt", 1, "--pesq-weight", "5e-4"))
    if available:
        assert code == 0 and "loss_pesq" in (tmp_path / "run" / "train.csv").read_text()
    else:
        assert code == 2 and "needs torch-pesq" in capsys.readouterr().err


def test_evaluate_reports_quality_cost_and_time_side_by_side(tmp_path, small_devset, capsys):
    checkpoint.save(tmp_path / "t.pt", _tiny())
    args = ["evaluate", "--set", f"dev={small_devset}", "--system", f"pc2={tmp_path / 't.pt'}@2", "--system", f"one={tmp_path / 't.pt'}@one-step",
            "--limit", "1", "--no-dnsmos", "--threads", "1", "--json", str(tmp_path / "r.json")]  # fmt: skip
    assert rosecd.main(args) == 0
    out = capsys.readouterr().out
    assert "| pc2 |" in out and "wall s per audio s" in out
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["systems"]["pc2"]["nfe"] == 4 and r["systems"]["one"]["nfe"] == 1
    assert r["systems"]["pc2"]["gmac_per_audio_s"] == pytest.approx(4 * r["systems"]["one"]["gmac_per_audio_s"])
    assert set(r["sets"]["dev"]["seconds_per_audio_second"]) == {"pc2", "one"}
    assert rosecd.main(["evaluate", "--set", f"dev={small_devset}", "--system", f"x={tmp_path / 't.pt'}@fast"]) == 2
    assert "after @" in capsys.readouterr().err
