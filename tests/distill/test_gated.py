"""The dynamically slimmable CRN: exact streaming under any gate pattern, real skips, costs."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from distill import train
from distill.dsp import stft
from distill.models import build, cost, gated_cost
from distill.models.gated_crn import gumbel_gates


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build("gated-student").eval()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    with torch.no_grad():  # a policy that switches: threshold each branch at its median logit on the probe
        _, _, logits = m(_probe(m))
        m.policy.out.bias.sub_(logits[0].median(0).values)
    return m


def _probe(m):
    """Noise whose level jumps by 40 dB every quarter second, so frames differ."""
    level = torch.tensor([0.001, 0.1]).repeat_interleave(4000).repeat(6)  # [48000]
    return stft(torch.randn(1, 48000) * level, m.config.stft)


def _stream(m, spec, gates=None):
    state = m.initial_state(1)
    outs = []
    for t in range(spec.shape[1]):
        o, state = m.step(spec[:, t], state, None if gates is None else gates[:, t])
        outs.append(o)
    return torch.stack(outs, 1)


@pytest.mark.parametrize("pattern", ["on", "off", "random", "policy"])
def test_streaming_equals_forward_under_any_gates(model, pattern):
    spec = _probe(model)
    T = spec.shape[1]
    gates = {"on": torch.ones(1, T, 2), "off": torch.zeros(1, T, 2), "random": (torch.rand(1, T, 2) > 0.5).float(), "policy": None}[pattern]
    with torch.no_grad():
        full, used, _ = model(spec, gates=gates)
        streamed = _stream(model, spec, gates)
    assert (full - streamed).abs().max() <= 1e-5
    if pattern == "policy":
        assert 0.05 < used.mean() < 0.95, "the test policy should switch branches on and off"


def test_skipped_branch_holds_its_gru_and_zeros_its_outputs(model):
    frame = torch.randn(1, model.config.stft.bins, 2)
    state = model.initial_state(1)
    _, on = model.step(frame, state, torch.ones(1, 2))
    _, off = model.step(frame, on, torch.zeros(1, 2))
    names = model.state_names()
    for name, a, b in zip(names, on, off):
        if name.startswith("b") and name.endswith("gru_h"):
            assert torch.equal(a, b), name  # held
        elif name.startswith("b"):
            assert not b.any(), name  # zero: the branch produced nothing this frame


def test_trunk_never_reads_a_branch(model):
    """Perturbing every branch weight leaves the gates-off output unchanged."""
    spec = stft(torch.randn(1, 16000) * 0.1, model.config.stft)
    off = torch.zeros(1, spec.shape[1], 2)
    with torch.no_grad():
        before, _, _ = model(spec, gates=off)
        saved = [p.clone() for p in model.branches.parameters()]
        for p in model.branches.parameters():
            p.add_(1.0)
        after, _, _ = model(spec, gates=off)
        for p, s in zip(model.branches.parameters(), saved):
            p.copy_(s)
    assert torch.equal(before, after)


def test_costs_add_up(model):
    parts = gated_cost(model)
    full = cost(model).macs_per_frame
    assert parts["trunk"] + parts["policy"] + sum(parts["branches"]) == full
    assert parts["trunk"] / full < 0.5, "most of the work must be skippable"
    assert cost(model).params <= 100_000 and cost(model).mmacs_per_second <= 60


def test_gumbel_gates_are_hard_forward_and_soft_backward():
    logits = torch.zeros(1000, requires_grad=True)
    g = gumbel_gates(logits, tau=1.0)
    assert set(g.detach().unique().tolist()) <= {0.0, 1.0}
    assert 0.4 < g.mean().item() < 0.6
    g.sum().backward()
    assert logits.grad.abs().sum() > 0


def test_cost_term_pulls_usage_to_its_target():
    torch.manual_seed(0)
    m = build("gated-student")
    obj = train.Objective({"spec": 1.0}, total_steps=100, gating=train.GateConfig(usage_target=0.1, cost_weight=10.0), branch_macs=gated_cost(m)["branches"])
    opt = torch.optim.Adam(m.policy.parameters(), lr=0.05)
    noisy, clean = torch.randn(4, 8000) * 0.1, torch.randn(4, 8000) * 0.1
    usages = []
    for step in range(30):
        loss, terms, _ = obj(m, noisy, clean, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        usages.append(obj.usage)
    assert np.mean(usages[-5:]) < 0.25 < np.mean(usages[:3])


def test_fixed_gates_train_the_chosen_branches_without_cost():
    torch.manual_seed(0)
    m = build("gated-student")
    obj = train.Objective({"spec": 1.0}, total_steps=100, gating=train.GateConfig(fixed=(0.0, 1.0)), branch_macs=gated_cost(m)["branches"])
    loss, terms, _ = obj(m, torch.randn(2, 8000) * 0.1, torch.randn(2, 8000) * 0.1, 0)
    loss.backward()
    assert "cost" not in terms
    assert obj.usage == pytest.approx(obj.share[1].item())
    assert all(p.grad is None or not p.grad.any() for p in m.branches[0].parameters())
    assert any(p.grad is not None and p.grad.any() for p in m.branches[1].parameters())


@pytest.mark.parametrize("detach", [False, True])
def test_detached_policy_leaves_the_trunk_to_the_loss(detach):
    torch.manual_seed(0)
    m = build("gated-student")
    gating = train.GateConfig(usage_target=0.1, cost_weight=10.0, detach_policy=detach)
    obj = train.Objective({}, total_steps=100, gating=gating, branch_macs=gated_cost(m)["branches"])  # the cost alone
    loss, terms, _ = obj(m, torch.randn(2, 8000) * 0.1, torch.randn(2, 8000) * 0.1, 0)
    loss.backward()
    trunk = [p for name, p in m.named_parameters() if name.startswith(("encoder", "enc_norms", "gru"))]
    assert terms["cost"] > 0
    assert any(p.grad is not None and p.grad.any() for p in m.policy.parameters())
    assert any(p.grad is not None and p.grad.any() for p in trunk) != detach


def test_cost_over_the_batch_holds_only_the_mean_usage_to_the_mean_target():
    m = build("gated-student")
    share = gated_cost(m)["branches"]
    noisy, clean = torch.randn(2, 8000) * 0.1, torch.randn(2, 8000) * 0.1
    costs = {}
    for scope in ("example", "batch"):
        obj = train.Objective({"spec": 1.0}, total_steps=100, gating=train.GateConfig(mgt=True, scope=scope), branch_macs=share)
        torch.manual_seed(0)
        _, terms, _ = obj(m, noisy, clean, 0, ovrl=torch.tensor([1.4, 2.8]))  # targets 1.0 and 0.2
        costs[scope] = terms["cost"].item()
    torch.manual_seed(0)
    with torch.no_grad():
        _, gates, _ = m(stft(noisy, m.config.stft), tau=2.0)  # the same draw of gates
    usage = (gates * obj.share).sum(-1).mean(-1)
    assert costs["example"] == pytest.approx(((usage - torch.tensor([1.0, 0.2])) ** 2).mean().item(), rel=1e-5)
    assert costs["batch"] == pytest.approx((usage.mean() - 0.6).item() ** 2, rel=1e-5, abs=1e-9)


def test_fixed_gates_need_one_0_or_1_per_branch(tmp_path, capsys):
    assert train.main(["--model", "gated-student", "--synthetic", "--steps", "1", "--fixed-gates", "1,0,1", "--out", str(tmp_path / "run")]) == 2
    assert "--fixed-gates needs 2 values of 0 or 1" in capsys.readouterr().err


def test_metric_guided_target_is_monotone():
    g = train.GateConfig(mgt=True, mgt_ovrl=(1.5, 3.0), mgt_usage=(1.0, 0.2))
    t = g.target(torch.tensor([1.0, 1.5, 2.25, 3.0, 4.0]), 5)
    assert torch.allclose(t, torch.tensor([1.0, 1.0, 0.6, 0.2, 0.2]))


def test_folded_batchnorm_gives_the_same_outputs(model):
    spec = _probe(model)
    gates = (torch.rand(1, spec.shape[1], 2) > 0.5).float()
    with torch.no_grad():
        a, _, _ = model(spec, gates=gates)
        b, _, _ = model.fold_batchnorm()(spec, gates=gates)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.fold_batchnorm().modules())
    assert (a - b).abs().max() < 1e-5


def test_policy_learns_at_its_own_rate_and_every_weight_is_trained_once():
    m = build("gated-student")
    groups = train.param_groups(m, 1e-3, 10.0)
    assert [g.get("lr") for g in groups] == [None, 1e-2]
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in m.parameters())
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in m.policy.parameters()}
    assert len(train.param_groups(build("student"), 1e-3, 10.0)) == 1


def test_gated_validation_reports_the_usage_of_inference_gates(tmp_path):
    assert train.main(["--model", "gated-student", "--synthetic", "--steps", "2", "--batch", "2", "--seconds", "1", "--val-every", "2",
                       "--no-progress", "--out", str(tmp_path / "run")]) == 0  # fmt: skip
    rows = (tmp_path / "run" / "val.csv").read_text().splitlines()
    assert rows[0].split(",")[-1] == "val_usage"
    assert 0.0 <= float(rows[1].split(",")[-1]) <= 1.0


def test_resuming_with_another_optimiser_layout_is_refused(tmp_path, capsys):
    run = ["--model", "gated-student", "--synthetic", "--steps", "2", "--batch", "2", "--seconds", "1", "--val-every", "100", "--no-progress",
           "--out", str(tmp_path / "run")]  # fmt: skip
    assert train.main([*run, "--stop-at", "1"]) == 0
    assert train.main([*run, "--resume", "--policy-lr-scale", "1"]) == 2
    assert "another optimiser layout" in capsys.readouterr().err


def test_validation_uses_the_gates_training_forces(tmp_path):
    """A fixed-gates run is validated with its fixed gates, not with its (untrained) policy."""
    run = tmp_path / "run"
    assert train.main(["--model", "gated-student", "--synthetic", "--steps", "2", "--batch", "2", "--seconds", "1", "--val-every", "2",
                       "--fixed-gates", "0,1", "--no-progress", "--out", str(run)]) == 0  # fmt: skip
    usage = float((run / "val.csv").read_text().splitlines()[1].split(",")[-1])
    m = build("gated-student")
    share = torch.tensor(gated_cost(m)["branches"], dtype=torch.float32)
    assert usage == pytest.approx((share[1] / share.sum()).item())
