import os

import pytest
import torch

# Small models run no faster with more threads, and CI has two cores.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory):
    """An untrained 30 k student: exports and streams like the real thing, in seconds."""
    from distill import checkpoint
    from distill.models import build

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "small.pt"
    checkpoint.save(path, build("student-30k"), step=0)
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
    """A full export of the small student, int8 quality check included (budget loosened: the
    model is untrained, the check itself still runs end to end)."""
    import export.__main__ as cli

    out = tmp_path_factory.mktemp("b") / "bundle"
    args = ["--checkpoint", str(small_checkpoint), "--out", str(out), "--devset", str(small_devset), "--pesq-budget", "5", "--sisdr-budget", "50"]
    assert cli.main([*args, "--calibration-frames", "60", "--golden-frames", "20"]) == 0
    return out
