import os

import pytest
import torch

# Small models run no faster with more threads, and CI has two cores.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory):
    """An untrained 30 k student: exports and streams like the real thing, in seconds. Its last
    layer has random weights at full scale instead of the pass-through a new model starts as, so
    its mask varies from bin to bin and frame to frame (a stricter subject for parity) and it makes
    its input worse (about -3 dB SI-SDR); the bias keeps its output the right way round."""
    from distill import checkpoint
    from distill.models import build

    torch.manual_seed(0)
    model = build("student-30k")
    model.decoder[0].conv.reset_parameters()
    with torch.no_grad():
        model.decoder[0].conv.bias.copy_(torch.tensor([0.5, 0.0]))
    path = tmp_path_factory.mktemp("ck") / "small.pt"
    checkpoint.save(path, model, step=0)
    return path


@pytest.fixture(scope="session")
def small_devset(tmp_path_factory):
    import numpy as np
    import soundfile as sf

    from distill.data import synth_noise, synth_speech

    root = tmp_path_factory.mktemp("dev")
    rng = np.random.default_rng(0)
    for sub in ("noisy", "clean"):
        (root / sub).mkdir()
    for i in range(2):
        clean = synth_speech(rng, 32000)
        sf.write(root / "clean" / f"u{i}.wav", clean, 16000)
        sf.write(root / "noisy" / f"u{i}.wav", clean + 0.2 * synth_noise(rng, 32000), 16000)
    return root


@pytest.fixture(scope="session")
def small_bundle(small_checkpoint, small_devset, tmp_path_factory):
    """A full export of the small student, int8 quality check included (budget loosened and the
    model check overridden: the model is untrained, the checks themselves still run end to end)."""
    import export.__main__ as cli

    out = tmp_path_factory.mktemp("b") / "bundle"
    args = ["--checkpoint", str(small_checkpoint), "--out", str(out), "--devset", str(small_devset), "--pesq-budget", "5", "--sisdr-budget", "50",
            "--allow-bad-model"]  # fmt: skip
    assert cli.main([*args, "--calibration-frames", "60", "--golden-frames", "20"]) == 0
    return out


@pytest.fixture(scope="session")
def gated_checkpoint(tmp_path_factory):
    """An untrained small gated model whose policy opens its branch on about half the frames of
    noise that jumps in level (the bias is set at the median logit), so gating really switches."""
    import numpy as np

    from distill import checkpoint
    from distill.dsp import stft
    from distill.models import build

    torch.manual_seed(0)
    m = build("gated_crn", channels=(4, 6, 8, 8, 8), branch_channels=(2, 2, 4, 4, 4), branches=1, trunk_groups=2).eval()
    with torch.no_grad():
        _, _, logits = m(stft(torch.from_numpy(level_jumps(np.random.default_rng(1), 32000))[None], m.config.stft))
        m.policy.out.bias.sub_(logits[0].median(0).values)
    path = tmp_path_factory.mktemp("gck") / "gated.pt"
    checkpoint.save(path, m, step=0)
    return path


def level_jumps(rng, n: int):
    """Noise whose level jumps by 30 dB every quarter second. Shape: [n]"""
    import numpy as np

    level = np.repeat(np.tile([0.01, 0.3], n // 8000 + 1), 4000)[:n]
    return (rng.standard_normal(n) * level).astype(np.float32)


@pytest.fixture(scope="session")
def gated_bundle(gated_checkpoint, small_devset, tmp_path_factory):
    """A full export of the gated model, with its parity audio level-jumping noise (untrained, so
    past the model check with --allow-bad-model)."""
    import numpy as np
    import soundfile as sf

    import export.__main__ as cli

    root = tmp_path_factory.mktemp("gb")
    parity = root / "jumps.wav"
    sf.write(parity, level_jumps(np.random.default_rng(2), 24000), 16000)
    args = ["--checkpoint", str(gated_checkpoint), "--out", str(root / "bundle"), "--devset", str(small_devset), "--parity-audio", str(parity),
            "--pesq-budget", "5", "--sisdr-budget", "50", "--calibration-frames", "60", "--allow-bad-model"]  # fmt: skip
    assert cli.main(args) == 0
    return root / "bundle"
