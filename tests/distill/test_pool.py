import csv
import json
import logging

import numpy as np
import pytest
import torch

from distill import checkpoint, pool, train
from distill.data import MixConfig, SyntheticSampler
from distill.pool import SHARD, Pool, PoolError, PoolSampler
from distill.teachers import BlackBox
from runtime.models import DEFAULT

TINY = json.dumps({"channels": [4, 4, 8], "rnn_groups": 2, "rnn_layers": 1})
CFG = MixConfig(seconds=0.25)


class Gain:
    """A teacher spec whose teacher halves its input, counting the mixtures it enhances;
    ``fail_after`` mixtures in, it is interrupted."""

    def __init__(self, gain=0.5, fail_after=None):
        self.text, self.gain, self.fail_after, self.seen = f"gain {gain}", gain, fail_after, 0

    def identity(self):
        return f"gain-{self.gain}"

    def open(self, threads=1):
        spec = self

        class Counted(BlackBox):
            def enhance(self, noisy):
                if spec.fail_after is not None and spec.seen >= spec.fail_after:
                    raise KeyboardInterrupt
                spec.seen += len(noisy)
                return super().enhance(noisy)

        return Counted(self.text, "halves its input", lambda x: self.gain * x)


def _sampler(root, size, seed=0, teacher=None, cfg=CFG):
    p = Pool(root, SyntheticSampler(cfg, seed), seed, size)
    return PoolSampler(p, p.ready(teacher, progress=False), seed), p


def test_same_definition_same_pool_and_batches(tmp_path):
    a, pa = _sampler(tmp_path, 20)
    b, pb = _sampler(tmp_path, 20)
    assert pa.dir == pb.dir
    later = [b.batch(s, 4) for s in (3, 0, 5)]  # drawn in another order
    for got, step in zip(later, (3, 0, 5)):
        assert all(np.array_equal(x, y) for x, y in zip(a.batch(step, 4), got))
    assert sorted(a.order(0, 20)) == list(range(20))  # an epoch holds every mixture once
    assert sorted(a.order(20, 20)) == list(range(20)) and not np.array_equal(a.order(0, 20), a.order(20, 20))


def test_another_seed_setting_or_teacher_is_another_pool(tmp_path):
    base = Pool(tmp_path, SyntheticSampler(CFG, 0), 0, 8)
    assert Pool(tmp_path, SyntheticSampler(CFG, 1), 1, 8).key != base.key
    assert Pool(tmp_path, SyntheticSampler(MixConfig(seconds=0.25, snr_db=(0.0, 5.0)), 0), 0, 8).key != base.key
    assert Pool(tmp_path, SyntheticSampler(CFG, 0), 0, 100).key == base.key  # the size is not part of it: a larger pool extends a smaller
    assert base.ready(Gain(0.5), progress=False) != base.ready(Gain(0.25), progress=False)


def test_pool_holds_the_sampler_mixtures_and_the_teacher_outputs(tmp_path):
    s, p = _sampler(tmp_path, 6, teacher=Gain())
    noisy, clean, taught = s.batch(0, 6)
    order = s.order(0, 6)
    want_noisy, want_clean = SyntheticSampler(CFG, 0).batch(0, 6, stream=pool.STREAM)
    np.testing.assert_allclose(noisy, want_noisy[order], atol=1e-3)  # float16 on disk
    np.testing.assert_allclose(clean, want_clean[order], atol=1e-3)
    np.testing.assert_allclose(taught, 0.5 * noisy, atol=1e-3)
    held_out = s.batch(0, 4, stream=1)  # validation: fresh mixtures, not the pool's
    assert all(np.array_equal(x, y) for x, y in zip(held_out, SyntheticSampler(CFG, 0).batch(0, 4, stream=1)))


def test_the_supervised_baseline_draws_the_same_batches(tmp_path):
    taught, _ = _sampler(tmp_path, 10, teacher=Gain())
    plain, _ = _sampler(tmp_path, 10)
    assert plain.fields == () and taught.fields == ("taught",)
    for step in range(4):
        a, b = taught.batch(step, 3), plain.batch(step, 3)
        assert len(b) == 2 and all(np.array_equal(x, y) for x, y in zip(a[:2], b))


def test_a_larger_pool_starts_with_the_smaller(tmp_path):
    small, p = _sampler(tmp_path, 10)
    first = np.load(p.mix_path(0)).copy()
    _sampler(tmp_path, 20)
    np.testing.assert_array_equal(np.load(p.mix_path(0))[:10], first)


def test_a_damaged_shard_is_detected_and_rendered_again(tmp_path, caplog):
    size = SHARD + 6
    teacher = Gain()
    _, p = _sampler(tmp_path, size, teacher=teacher)
    assert teacher.seen == size
    field = "gain-0.5"[:16]
    originals = {f: f.read_bytes() for f in (p.mix_path(1), p.teacher_path(field, 0))}
    for f in originals:  # one flipped byte each, in the samples
        data = bytearray(originals[f])
        data[-3] ^= 0xFF
        f.write_bytes(bytes(data))
    teacher.seen = 0
    with caplog.at_level(logging.WARNING, logger="distill.pool"):
        sampler = PoolSampler(p, p.ready(teacher, progress=False), 0)
    assert "mix-00001.npy is missing or damaged" in caplog.text and f"{field}-00000.npy is missing or damaged" in caplog.text
    assert teacher.seen == size  # both teacher shards again: shard 1's mixtures were rendered anew, shard 0's outputs were damaged
    assert all(f.read_bytes() == data for f, data in originals.items())  # rendered again to the very same bytes
    assert len(sampler.batch(0, 4)) == 3
    p.mix_path(0).unlink()
    teacher.seen = 0
    p.ready(teacher, progress=False)
    assert p.mix_path(0).is_file()


def test_a_damaged_index_renders_everything_again(tmp_path, caplog):
    _, p = _sampler(tmp_path, 5)
    (p.dir / pool.INDEX).write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="distill.pool"):
        _sampler(tmp_path, 5)
    assert "is damaged" in caplog.text
    assert json.loads((p.dir / pool.INDEX).read_text())["mixtures"]["00000"]["rows"] == 5


def test_an_interrupted_render_continues_where_it_stopped(tmp_path):
    size = 2 * SHARD + 3
    p = Pool(tmp_path, SyntheticSampler(CFG, 0), 0, size)
    with pytest.raises(PoolError, match="interrupted after 1 of 3 shards"):
        p.ready(Gain(fail_after=SHARD), progress=False)
    again = Gain()
    p.ready(again, progress=False)
    assert again.seen == SHARD + 3  # shard 0 was kept


def _code(main, argv) -> int:
    """The exit status of a command, whether it returns it or exits with it (argparse)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def _train(out, pool_dir, steps, *extra):
    return ["--synthetic", "--model", "crn", "--config", TINY, "--steps", str(steps), "--batch", "4", "--seconds", "0.5", "--val-every", "1000",
            "--log-every", "5", "--threads", "1", "--no-progress", "--out", str(out), "--pool", "48", "--pool-dir", str(pool_dir), *extra]  # fmt: skip


def test_kd_from_a_pool_lowers_its_loss_and_resumes_exactly(tmp_path, capsys):
    teacher = ["--teacher", str(DEFAULT), "--kd", "dispatch"]  # the shipped bundle: a black box
    assert train.main(_train(tmp_path / "long", tmp_path / "pools", 60, "--lr", "3e-3", "--warmup", "10", *teacher)) == 0
    assert "with the outputs of bundle" in capsys.readouterr().out
    with open(tmp_path / "long" / "train.csv") as f:
        rows = list(csv.DictReader(f))
    kd = [float(r["loss_kd"]) for r in rows]
    assert np.mean(kd[-5:]) < 0.8 * np.mean(kd[:3])

    assert train.main(_train(tmp_path / "whole", tmp_path / "pools", 16, *teacher)) == 0
    assert train.main(_train(tmp_path / "split", tmp_path / "pools", 16, "--stop-at", "7", *teacher)) == 0
    assert train.main(_train(tmp_path / "split", tmp_path / "pools", 16, "--resume", *teacher)) == 0
    a = checkpoint.read(tmp_path / "whole" / "last.pt")["state_dict"]
    b = checkpoint.read(tmp_path / "split" / "last.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_pool_rendered_ahead_is_used_as_it_is(tmp_path, monkeypatch, capsys):
    args = _train(tmp_path / "run", tmp_path / "pools", 3, "--teacher", str(DEFAULT), "--kd", "output")
    assert pool.main(["render", *args]) == 0
    assert not (tmp_path / "run").exists()
    listed = capsys.readouterr()
    monkeypatch.setattr("distill.teachers.Spec.open", lambda *a, **k: pytest.fail("the teacher ran again"))
    assert train.main(args) == 0
    assert pool.main(["list", str(tmp_path / "pools")]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "48 mixtures of 0.5 s" in line and f"{DEFAULT} (48)" in line, listed


def test_bad_pool_options_are_one_error_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    cases = [
        (_train(tmp_path / "a", tmp_path / "file" / "pools", 3), "pool"),
        (_train(tmp_path / "b", tmp_path / "pools", 3, "--model", "gated-student", "--mgt"), "--pool and --mgt"),
    ]
    for argv, words in cases:
        assert _code(train.main, argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error:") and words in err, err
    assert pool.main(["render", "--synthetic", "--out", str(tmp_path / "c")]) == 2
    assert "--pool N" in capsys.readouterr().err


def test_score_compares_the_teachers_outputs_and_checkpoints_on_the_pool_mixtures(tmp_path, small_checkpoint, capsys):
    from distill.dsp import enhance
    from distill.metrics import si_sdr

    _, p = _sampler(tmp_path, 70, teacher=Gain(0.5))  # two shards, the second short
    rows = {r["system"]: r for r in pool.score(p.dir, [small_checkpoint], mixtures=66)}
    noisy, teacher, student = rows["noisy input"], rows["teacher gain 0.5"], rows[f"checkpoint {small_checkpoint}"]
    assert noisy["mixtures"] == teacher["mixtures"] == student["mixtures"] == 66
    assert abs(teacher["gain"]) < 1e-3 and abs(teacher["mean"] - noisy["mean"]) < 1e-3  # halving changes no SI-SDR
    mix = np.concatenate([np.load(p.mix_path(0)), np.load(p.mix_path(1))[:2]]).astype(np.float32)
    with torch.no_grad():
        est = enhance(checkpoint.load_model(small_checkpoint), torch.from_numpy(mix[:, 0])).numpy()
    assert student["mean"] == pytest.approx(np.mean([si_sdr(e, c) for e, c in zip(est, mix[:, 1])]), abs=1e-4)
    assert student["gain"] < -1  # the untrained model makes its input worse, and the score says so

    assert pool.main(["score", str(p.dir), "--mixtures", "8"]) == 0
    table = capsys.readouterr().out
    assert "| noisy input | 8 |" in table and "| teacher gain 0.5 | 8 |" in table
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    for argv in (["score", str(tmp_path / "empty")], ["score", str(p.dir), "--checkpoint", str(tmp_path / "bad.pt")]):
        assert _code(pool.main, argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error:"), err
