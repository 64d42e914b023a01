import logging

import numpy as np
import pytest
import soundfile as sf

from distill.data import (
    AudioFolder,
    MixConfig,
    MixtureSampler,
    PairedSampler,
    SyntheticSampler,
    mix,
    paired_files,
    rms,
    synth_noise,
    synth_speech,
)
from runtime.audio import AudioError


def _db(x):
    return 20 * np.log10(rms(x))


def test_mix_hits_snr_and_level_without_clipping():
    rng = np.random.default_rng(0)
    clean, noise = synth_speech(rng, 32000), synth_noise(rng, 32000)
    noisy, target = mix(clean, noise, snr_db=3.0, level_db=-20.0, peak=0.99)
    assert _db(target) - _db(noisy - target) == pytest.approx(3.0, abs=1e-3)
    assert _db(noisy) == pytest.approx(-20.0, abs=1e-3)
    loud, _ = mix(clean, noise, snr_db=-5.0, level_db=0.0, peak=0.99)
    assert np.abs(loud).max() <= 0.99 + 1e-6


@pytest.fixture
def folders(tmp_path):
    """Clean/noise folders with nested dirs, odd rates, stereo and FLAC, plus broken files."""
    rng = np.random.default_rng(1)
    clean, noise = tmp_path / "clean", tmp_path / "noise"
    (clean / "spk1").mkdir(parents=True)
    (noise / "a" / "b").mkdir(parents=True)
    sf.write(clean / "spk1" / "u1.wav", synth_speech(rng, 48000), 16000)
    sf.write(clean / "u2.flac", synth_speech(rng, 3 * 44100, 44100), 44100)
    stereo = np.stack([synth_speech(rng, 2 * 8000, 8000)] * 2, axis=1)
    sf.write(clean / "u3.wav", stereo, 8000)
    sf.write(noise / "a" / "b" / "n1.flac", synth_noise(rng, 20000), 16000)
    sf.write(noise / "n2.wav", synth_noise(rng, 5 * 22050, 22050), 22050)
    # broken ones
    (clean / "empty.wav").write_bytes(b"")
    (clean / "text.wav").write_text("not audio at all")
    sf.write(clean / "short.wav", np.zeros(800, np.float32), 16000)
    sf.write(noise / "silent0.wav", np.zeros(0, np.float32), 16000)
    return clean, noise


def test_folder_scan_skips_bad_files_with_a_warning(folders, caplog):
    clean, noise = folders
    with caplog.at_level(logging.WARNING):
        c = AudioFolder(clean, min_seconds=1.0)
        n = AudioFolder(noise, min_seconds=1.0)
    assert sorted(e.path.name for e in c.entries) == ["u1.wav", "u2.flac", "u3.wav"]
    assert sorted(e.path.name for e in n.entries) == ["n1.flac", "n2.wav"]
    for bad in ("empty.wav", "text.wav", "short.wav", "silent0.wav"):
        assert any(bad in r.getMessage() for r in caplog.records), bad


def test_mixtures_resample_downmix_and_are_deterministic(folders):
    clean, noise = folders
    cfg = MixConfig(seconds=1.5)
    s = MixtureSampler(AudioFolder(clean, 1.0), AudioFolder(noise, 1.0), cfg, seed=3)
    noisy, target = s.batch(7, 6)
    assert noisy.shape == target.shape == (6, 24000) and noisy.dtype == np.float32
    assert np.isfinite(noisy).all() and np.abs(noisy).max() <= 0.99 + 1e-6
    again, _ = s.batch(7, 6)
    other, _ = s.batch(8, 6)
    assert np.array_equal(noisy, again) and not np.array_equal(noisy, other)
    snrs = [_db(t) - _db(n - t) for n, t in zip(noisy, target)]
    assert all(-5.01 <= v <= 20.01 for v in snrs)


def test_file_failing_mid_epoch_is_dropped_not_fatal(folders, caplog):
    clean, noise = folders
    folder = AudioFolder(clean, 1.0)
    s = MixtureSampler(folder, AudioFolder(noise, 1.0), MixConfig(seconds=1.0), seed=0)
    victim = clean / "u2.flac"
    victim.write_bytes(victim.read_bytes()[:200])  # truncated after the scan
    with caplog.at_level(logging.WARNING):
        for step in range(20):
            noisy, _ = s.batch(step, 4)
            assert np.isfinite(noisy).all()
    assert all(e.path != victim for e in folder.entries)
    assert any("u2.flac" in r.getMessage() for r in caplog.records)


def test_folder_without_usable_audio_is_a_clear_error(tmp_path):
    (tmp_path / "x.wav").write_text("nope")
    with pytest.raises(AudioError, match="no usable audio"):
        AudioFolder(tmp_path, 1.0)
    with pytest.raises(AudioError, match="not a folder"):
        AudioFolder(tmp_path / "missing", 1.0)


def test_paired_folders(tmp_path):
    rng = np.random.default_rng(2)
    for sub in ("noisy", "clean"):
        (tmp_path / sub).mkdir()
    for i in range(3):
        c = synth_speech(rng, 24000)
        sf.write(tmp_path / "clean" / f"p1_{i:03d}.wav", c, 16000)
        sf.write(tmp_path / "noisy" / f"p1_{i:03d}.wav", c + 0.02 * synth_noise(rng, 24000), 16000)
    sf.write(tmp_path / "noisy" / "orphan.wav", synth_noise(rng, 24000), 16000)
    assert len(paired_files(tmp_path / "noisy", tmp_path / "clean")) == 3
    s = PairedSampler(tmp_path / "noisy", tmp_path / "clean", MixConfig(seconds=1.0), seed=0)
    noisy, clean = s.batch(0, 4)
    assert noisy.shape == clean.shape == (4, 16000)
    # aligned crops: the residual is the added noise, far below the speech
    assert all(_db(c) - _db(n - c) > 10 for n, c in zip(noisy, clean))


def test_synthetic_sampler_needs_no_files():
    noisy, clean = SyntheticSampler(MixConfig(seconds=0.5), seed=0).batch(0, 3)
    assert noisy.shape == (3, 8000) and np.isfinite(noisy).all()
    assert all(rms(c) > 1e-3 for c in clean)
