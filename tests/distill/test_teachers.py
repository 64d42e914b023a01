import json

import numpy as np
import pytest
import torch

from distill import teachers, train
from distill.data import MixConfig, SyntheticSampler
from distill.dsp import stft
from distill.losses import si_sdr
from distill.models import build
from distill.teachers import BlackBox, TeacherError, lag, probe, resolve
from runtime.models import DEFAULT

TINY = json.dumps({"channels": [4, 4, 8], "rnn_groups": 2, "rnn_layers": 1})


def _delayed(d: int, gain: float):
    """A teacher that only delays by ``d`` samples (leads for d < 0) and scales."""

    def run(x):
        y = np.concatenate([np.zeros(d, np.float32), x])[: len(x)] if d >= 0 else np.concatenate([x[-d:], np.zeros(-d, np.float32)])
        return gain * y

    return run


def _batch(n=2, seconds=0.5):
    noisy, clean = SyntheticSampler(MixConfig(seconds=seconds), 0).batch(0, n)
    return noisy, clean


def test_lag_finds_a_delay_its_sign_and_an_inversion():
    x = probe()
    assert lag(_delayed(37, 1.0)(x), x) == (37, pytest.approx(1.0, abs=0.01))
    assert lag(_delayed(-5, 1.0)(x), x)[0] == -5
    d, corr = lag(_delayed(12, -0.3)(x), x)
    assert d == 12 and corr < -0.99


@pytest.mark.parametrize("delay", [37, 0, -6])
def test_a_pure_delay_and_gain_teacher_is_recovered(delay):
    t = BlackBox("delay", "a delay line", _delayed(delay, 0.5))
    assert t.alignment.measured == delay and t.alignment.correlation > 0.99
    noisy, _ = _batch()
    out = t.enhance(noisy)
    assert out.shape == noisy.shape and out.dtype == np.float32
    keep = slice(max(0, -delay), None)  # an output that leads has nothing for its first samples
    np.testing.assert_allclose(out[:, keep], 0.5 * noisy[:, keep], atol=1e-7)  # zeros fed after the end bring back the delayed tail


def test_a_fractional_delay_is_recovered_to_within_a_sample():
    def run(x):  # 37.4 samples of delay, by a linear phase
        f = np.fft.rfftfreq(len(x))
        return np.fft.irfft(np.fft.rfft(x) * np.exp(-2j * np.pi * f * 37.4), len(x)).astype(np.float32)

    t = BlackBox("fractional", "a fractional delay", run)
    assert t.alignment.measured in (37, 38)
    x = probe()
    residual = np.fft.irfft(np.fft.rfft(t.one(x)) * np.exp(2j * np.pi * np.fft.rfftfreq(len(x)) * (37.4 - t.alignment.measured)), len(x))
    assert si_sdr(torch.from_numpy(residual[None]).float(), torch.from_numpy(x[None])).item() > 20  # the rest is the wrap-around at the ends


def test_an_output_unlike_its_input_keeps_the_declared_delay_and_says_so():
    t = BlackBox("noise", "noise", lambda x: np.random.default_rng(0).standard_normal(len(x)).astype(np.float32), declared_ms=16.0)
    assert t.alignment.measured == 0 and t.alignment.declared == 16.0
    assert "could not be measured" in t.warnings[0]


PEERS = [("gtcrn", 16.0), ("ulunas", 16.0), ("dtln", 24.0), ("dtln-int8", 24.0), ("rnnoise", 20.0), ("deepfilternet3", 30.0)]


@pytest.mark.parametrize("name,delay_ms", PEERS)
def test_each_peer_delay_its_runner_removes_leaves_nothing_to_measure(name, delay_ms):
    try:
        spec = resolve(name)
    except TeacherError as e:
        pytest.skip(str(e))
    t = spec.open()
    assert t.alignment.declared == delay_ms
    assert t.alignment.measured == 0 and t.alignment.correlation > 0.8  # the benchmark's delays are the whole delay
    noisy, _ = _batch(1, 1.0)
    assert t.enhance(noisy).shape == noisy.shape


def test_bundle_and_checkpoint_teachers_give_the_same_spectra(small_bundle, small_checkpoint):
    noisy, _ = _batch()
    box, white = resolve(str(small_bundle)).open(), resolve(str(small_checkpoint)).open()
    assert not box.white_box and white.white_box and box.alignment.measured == 0
    a, b = box.enhance(noisy), white.enhance(noisy)
    assert a.shape == b.shape == noisy.shape
    cfg = build("student-30k").config.stft
    sa, sb = stft(torch.from_numpy(a), cfg), stft(torch.from_numpy(b), cfg)
    assert sa.shape == sb.shape
    assert si_sdr(torch.from_numpy(a), torch.from_numpy(b)).min().item() > 40  # the bundle is that checkpoint, exported


def test_a_black_box_teacher_on_every_batch_equals_its_outputs_given_with_the_batch():
    from distill.kd import KDConfig

    torch.manual_seed(0)
    model = build("crn", **json.loads(TINY))
    noisy, clean = (torch.from_numpy(a) for a in _batch())
    box = resolve(str(DEFAULT)).open()
    live = train.Objective({"spec": 1.0}, KDConfig(method="dispatch"), box, total_steps=10)
    given = train.Objective({"spec": 1.0}, KDConfig(method="dispatch"), None, total_steps=10)
    taught = torch.from_numpy(box.enhance(noisy.numpy()))
    a, b = live(model, noisy, clean, 0)[1], given(model, noisy, clean, 0, taught=taught)[1]
    assert a["kd"].item() > 0 and torch.equal(a["kd"], b["kd"])


def test_identity_follows_the_files(small_checkpoint, tmp_path):
    ck = tmp_path / "t.pt"
    ck.write_bytes(small_checkpoint.read_bytes())
    before = resolve(str(ck)).identity()
    assert resolve(str(ck)).identity() == before
    state = torch.load(ck, weights_only=True)
    state["step"] = 1
    torch.save(state, ck)
    assert resolve(str(ck)).identity() != before
    try:
        assert resolve("dtln").identity() != resolve("dtln-int8").identity()
    except TeacherError as e:
        pytest.skip(str(e))


def test_a_peer_file_names_its_peer():
    try:
        spec = resolve(f"{teachers.PEERS_DIR}/dtln/model_quant_2.tflite")
    except TeacherError as e:
        pytest.skip(str(e))
    assert spec.peer == "dtln-int8" and spec.identity() == resolve("dtln-int8").identity()


def _code(main, argv) -> int:
    """The exit status of a command, whether it returns it or exits with it (argparse)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def _train(tmp_path, *extra):
    return ["--synthetic", "--model", "crn", "--config", TINY, "--steps", "5", "--batch", "2", "--seconds", "0.5", "--threads", "1", "--no-progress",
            "--out", str(tmp_path / "run"), *extra]  # fmt: skip


def _one_error_line(capsys, *words):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    for w in words:
        assert w in err, err


@pytest.mark.parametrize("method", ["gram", "two-step"])
def test_gram_kd_with_a_black_box_teacher_is_one_error_line(tmp_path, capsys, method):
    assert _code(train.main, _train(tmp_path, "--teacher", str(DEFAULT), "--kd", method)) == 2
    _one_error_line(capsys, "black box", "--kd output")
    assert not (tmp_path / "run").exists()


def test_bad_teacher_values_are_one_error_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "other.onnx").write_bytes(b"\x08\x07")
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    cases = [
        (["--teacher", str(tmp_path / "missing.pt")], "no such file, folder or peer"),
        (["--teacher", "gtcrnn"], "no such file, folder or peer"),
        (["--teacher", str(tmp_path / "empty")], "not a bundle"),
        (["--teacher", str(tmp_path / "other.onnx")], "calling convention"),
        (["--teacher", str(tmp_path / "notes.pt")], "not a readable checkpoint"),
        (["--teacher", "gtcrn", "--peers", str(tmp_path / "nowhere")], "--peers"),
    ]
    for extra, words in cases:
        assert _code(train.main, _train(tmp_path, *extra, "--kd", "output")) == 2
        _one_error_line(capsys, words)
    assert not (tmp_path / "run").exists()


def test_a_one_step_score_checkpoint_teaches_through_its_own_enhance(tmp_path, capsys):
    from distill import checkpoint
    from distill.models.score_unet import ScoreUNetConfig

    torch.manual_seed(0)
    model = build("score_unet", ScoreUNetConfig(channels=(4, 8), emb=8, groups=2, sampler="one-step")).eval()
    checkpoint.save(tmp_path / "cd.pt", model, step=1)
    spec = resolve(str(tmp_path / "cd.pt"))
    assert spec.kind == "generative" and not spec.white_box
    teacher = spec.open()
    noisy, _ = _batch()
    out = teacher.enhance(noisy)
    with torch.no_grad():
        direct = model.enhance(torch.from_numpy(noisy)).numpy()
    assert out.shape == noisy.shape and np.array_equal(out, direct), "its seeded sampler, aligned by construction"
    assert np.array_equal(teacher.enhance(noisy), out)
    assert _code(train.main, _train(tmp_path, "--teacher", str(tmp_path / "cd.pt"), "--kd", "dispatch")) == 0
    assert "teaches through its output" in capsys.readouterr().out
    assert _code(train.main, _train(tmp_path, "--teacher", str(tmp_path / "cd.pt"), "--kd", "gram", "--force")) == 2
    _one_error_line(capsys, "black box")


def test_a_gated_checkpoint_teaches_with_fixed_gates_or_its_policy(small_checkpoint, tmp_path, capsys):
    """Self-distillation of a gated student from its own full width: CKPT@1,1 runs every branch."""
    from distill import checkpoint
    from distill.dsp import apply_mask, istft

    torch.manual_seed(0)
    model = build("gated-student").eval()
    path = tmp_path / "gated.pt"
    checkpoint.save(path, model, step=1)
    noisy, _ = _batch()
    spec = stft(torch.from_numpy(noisy), model.config.stft)  # [B, T, F, 2]

    def under(gates):
        forced = None if gates is None else torch.tensor(gates).expand(spec.shape[0], spec.shape[1], -1)
        with torch.no_grad():
            return istft(apply_mask(spec, model(spec, gates=forced)[0]), model.config.stft, noisy.shape[-1]).numpy()

    full, trunk = resolve(f"{path}@1,1"), resolve(f"{path}@0,0")
    assert full.kind == "gated" and not full.white_box and full.gates == (1.0, 1.0)
    assert len({full.identity(), trunk.identity(), resolve(str(path)).identity()}) == 3, "the gates are part of what defines the outputs"
    np.testing.assert_allclose(full.open().enhance(noisy), under((1.0, 1.0)), atol=1e-6)
    np.testing.assert_allclose(trunk.open().enhance(noisy), under((0.0, 0.0)), atol=1e-6)
    np.testing.assert_allclose(resolve(str(path)).open().enhance(noisy), under(None), atol=1e-6)
    assert np.abs(under((1.0, 1.0)) - under((0.0, 0.0))).max() > 1e-4, "the branches change the output"
    gated_run = ["--synthetic", "--model", "gated-student", "--steps", "3", "--batch", "2", "--seconds", "0.5", "--threads", "1", "--no-progress",
                 "--usage-target", "0.6", "--out", str(tmp_path / "run")]  # fmt: skip
    assert _code(train.main, [*gated_run, "--teacher", f"{path}@1,1", "--kd", "dispatch"]) == 0
    assert "gates 1,1 fixed" in capsys.readouterr().out
    for value, words in [(f"{path}@1", "2 branches"), (f"{path}@1,2", "0s and 1s"), (f"{small_checkpoint}@1,1", "drop the @1,1")]:
        assert _code(train.main, [*gated_run, "--teacher", value, "--kd", "output", "--force"]) == 2
        _one_error_line(capsys, words)
    assert _code(train.main, [*gated_run, "--teacher", f"{path}@1,1", "--kd", "gram", "--force"]) == 2
    _one_error_line(capsys, "a gated model")
