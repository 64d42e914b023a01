"""Augmentation: rooms (measured and simulated, cached), several noises, low-frequency noise, the
channel, clipping; and the out-of-domain split and its rendering."""
import numpy as np
import pytest
import soundfile as sf
from scipy import signal

from distill import augment as aug
from distill import devset
from distill.data import AudioFolder, MixConfig, MixtureSampler, rms, room_bank, synth_noise, synth_speech
from runtime.audio import AudioError

SR = 16000
SMALL_ROOMS = aug.RoomConfig(rooms=3, rt60=(0.4, 0.4), size=((4.0, 5.0), (3.0, 4.0), (2.5, 3.0)), max_order=12, seconds=0.6)


def _db(x):
    return 20 * np.log10(rms(x))


def _rt60(rir):
    """T20 of the energy decay curve, times three."""
    edc = np.cumsum(rir[::-1].astype(np.float64) ** 2)[::-1]
    edc = 10 * np.log10(edc / edc[0] + 1e-30)
    return (np.argmax(edc < -25) - np.argmax(edc < -5)) / SR * 3


def test_loop_crossfades_the_joins_where_tiling_clicks():
    x = np.cos(2 * np.pi * 2.5 * np.arange(1600) / 1600).astype(np.float32)  # starts at 1, ends near -1: a jump when tiled
    tiled = np.tile(x, 4)[:5000]
    looped = aug.loop(x, 5000, 0, 320)
    assert np.abs(np.diff(tiled)).max() > 1.0
    assert np.abs(np.diff(looped)).max() < 0.05
    assert looped.shape == (5000,)


def test_loop_keeps_the_level_of_noise_across_joins():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(4000).astype(np.float32)
    y = aug.loop(x, 40000, 123, 320)
    frames = y[: len(y) // 400 * 400].reshape(-1, 400)
    levels = 10 * np.log10(np.mean(frames**2, axis=1))
    assert np.ptp(levels) < 3.0


def test_trim_and_early_part_of_an_impulse_response():
    rir = np.zeros(8000)
    rir[200] = 0.5  # direct path
    rir[260] = 0.8  # a stronger early reflection
    rir[2000:] = 0.01 * np.exp(-np.arange(6000) / 1000)
    assert aug.direct_index(rir) == 200
    t = aug.trim_rir(rir, SR)
    assert aug.direct_index(t) == 40 and t[40] == pytest.approx(1.0)  # 2.5 ms lead, unit direct path
    e = aug.early(t, SR, 50.0)
    assert len(e) == 40 + 800 + 80  # 50 ms after the direct path, plus the 5 ms fade
    assert np.array_equal(e[:840], t[:840])


def test_simulated_room_has_its_reverberation_time_and_is_seeded():
    cfg = aug.RoomConfig(rooms=1, rt60=(0.4, 0.4), size=((4.0, 5.0), (3.0, 4.0), (2.5, 3.0)))
    a = aug.simulate_room(np.random.default_rng(1), cfg, SR)
    b = aug.simulate_room(np.random.default_rng(1), cfg, SR)
    c = aug.simulate_room(np.random.default_rng(2), cfg, SR)
    assert np.array_equal(a[0], b[0]) and not np.array_equal(a[0][:2000], c[0][:2000])
    speech, noise, rt60 = a
    assert rt60 == pytest.approx(0.4)
    assert aug.direct_index(speech) == 40 and aug.direct_index(noise) == 40
    assert 0.25 < _rt60(speech) < 0.55
    assert not np.array_equal(speech, noise)  # another position in the same room


def test_simulated_rooms_are_cached_and_reloaded(tmp_path, monkeypatch):
    first = aug.simulated_rooms(SMALL_ROOMS, SR, tmp_path)
    assert len(list(tmp_path.glob("rooms_*.npz"))) == 1

    def fail(*a, **k):
        raise AssertionError("simulated again instead of loading the cache")

    monkeypatch.setattr(aug, "simulate_room", fail)
    again = aug.simulated_rooms(SMALL_ROOMS, SR, tmp_path)
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(first, again))


def test_room_bank_from_measured_files_with_exclusions(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("hall.wav", "held_out.wav"):
        rir = np.concatenate([np.zeros(100), [1.0], 0.1 * rng.standard_normal(3000) * np.exp(-np.arange(3000) / 500)])
        sf.write(tmp_path / name, rir.astype(np.float32), SR)
    bank = room_bank(tmp_path, aug.RoomConfig(rooms=0), SR, None, exclude={"held_out.wav"})
    assert bank.names == ["hall.wav"] and len(bank) == 1
    speech, noise = bank.pick(rng)
    assert aug.direct_index(speech) == 40
    with pytest.raises(AudioError, match="no room impulse responses"):
        room_bank(tmp_path, aug.RoomConfig(rooms=0), SR, None, exclude={"hall.wav", "held_out.wav"})
    with pytest.raises(AudioError, match="empty"):
        room_bank(None, aug.RoomConfig(rooms=0), SR, None)


@pytest.mark.parametrize("seed", range(6))
def test_low_noise_lives_below_the_speech(seed):
    x = aug.low_noise(np.random.default_rng(seed), 32000, SR)
    assert rms(x) == pytest.approx(1.0, rel=1e-3)
    f, p = signal.welch(x, SR, nperseg=4096)
    assert p[f < 400].sum() > 0.95 * p.sum()


def test_envelope_stays_within_its_range():
    e = aug.envelope(np.random.default_rng(0), 16000, SR)
    assert e.max() <= 1.0 + 1e-6 and e.min() >= 10 ** (-25 / 20) - 1e-6


def test_channel_filters_input_and_target_alike():
    rng = np.random.default_rng(0)
    speech, noise = synth_speech(rng, 32000), synth_noise(rng, 32000)
    cfg = aug.AugmentConfig(eq=1.0, band=1.0)
    noisy, target, residual = aug.channel(np.random.default_rng(5), cfg, SR, speech + noise, speech, noise)
    np.testing.assert_allclose(noisy - target, residual, atol=1e-5)  # one linear filter on every signal
    f, p = signal.welch(residual, SR, nperseg=1024)
    q = signal.welch(noise, SR, nperseg=1024)[1]
    assert 10 * np.log10(p[f > 7200].sum() / q[f > 7200].sum()) < -20  # every band limit cuts above 7 kHz


@pytest.fixture
def folders(tmp_path):
    rng = np.random.default_rng(1)
    clean, noise = tmp_path / "clean", tmp_path / "noise"
    clean.mkdir()
    noise.mkdir()
    for i in range(3):
        sf.write(clean / f"u{i}.wav", synth_speech(rng, 40000), SR)
        sf.write(noise / f"n{i}.wav", synth_noise(rng, 20000 + 5000 * i), SR)
    return AudioFolder(clean, 1.0), AudioFolder(noise, 1.0)


def _sampler(folders, cfg, seed=0, snr=(-5.0, 20.0), rooms=SMALL_ROOMS, cache=None):
    bank = aug.RirBank.build(None, rooms, SR, cache) if cfg.reverb else None
    return MixtureSampler(*folders, MixConfig(seconds=1.5, snr_db=snr), seed, cfg, bank)


def test_augmented_mixtures_are_deterministic_and_sane(folders, tmp_path):
    s = _sampler(folders, aug.AugmentConfig(), cache=tmp_path)
    noisy, target = s.batch(3, 8)
    assert noisy.shape == target.shape == (8, 24000)
    assert np.isfinite(noisy).all() and np.isfinite(target).all()
    fresh = _sampler(folders, aug.AugmentConfig(), cache=tmp_path)  # a resumed run: new sampler, same draws
    again, again_t = fresh.batch(3, 8)
    assert np.array_equal(noisy, again) and np.array_equal(target, again_t)
    assert not np.array_equal(noisy, s.batch(4, 8)[0])
    assert all(np.corrcoef(n, t)[0, 1] > 0.2 for n, t in zip(noisy, target))  # same sign, same alignment


def test_snr_is_against_all_noise_sources(folders):
    cfg = aug.AugmentConfig(reverb=0, sources=(1.0, 1.0), envelope=1.0, low=1.0, eq=0, band=0, clip=0)
    noisy, target = _sampler(folders, cfg, snr=(3.0, 3.0)).batch(0, 4)
    for n, t in zip(noisy, target):
        assert _db(t) - _db(n - t) == pytest.approx(3.0, abs=0.05)


def test_clipping_clips_the_input_not_the_target(folders):
    noisy, target = _sampler(folders, aug.AugmentConfig(reverb=0, clip=1.0)).batch(0, 4)
    assert all(np.abs(n).max() == pytest.approx(1.0) and np.mean(np.abs(n) >= 1.0) > 0 for n in noisy)
    assert all(np.abs(t).max() > 0 for t in target)
    assert any(np.abs(t).max() > 1.0 for t in target)  # driven past full scale, kept whole


def test_reverberant_target_keeps_early_reflections_only(folders, tmp_path):
    live = aug.RoomConfig(rooms=2, rt60=(0.9, 0.9), size=((6.0, 6.0), (5.0, 5.0), (3.0, 3.0)), max_order=10, seconds=1.0)
    base = dict(reverb=1.0, noise_room=0.0, sources=(0, 0), envelope=0, low=0, eq=0, band=0, clip=0)
    early = _sampler(folders, aug.AugmentConfig(**base), snr=(40.0, 40.0), rooms=live, cache=tmp_path).batch(0, 4)
    full = _sampler(folders, aug.AugmentConfig(**base, full_target=True), snr=(40.0, 40.0), rooms=live, cache=tmp_path).batch(0, 4)
    np.testing.assert_array_equal(early[0], full[0])  # the same input
    for n, e, f in zip(early[0], early[1], full[1]):
        assert _db(f) - _db(n - f) > 35  # the full target is the input less the faint noise
        assert _db(e) - _db(n - e) < 15  # the late reverberation is left for the model to remove


def test_no_augment_is_the_plain_mixer(folders):
    s = MixtureSampler(*folders, MixConfig(seconds=1.5), 0)
    t = MixtureSampler(*folders, MixConfig(seconds=1.5), 0, aug.NONE, None)
    assert np.array_equal(s.batch(2, 3)[0], t.batch(2, 3)[0])


def test_bad_probability_is_a_clear_error():
    with pytest.raises(ValueError, match="probability"):
        aug.AugmentConfig(eq=1.5)


# ---------------------------------------------------------------- dev-ood


@pytest.fixture
def ood_data(tmp_path):
    rng = np.random.default_rng(3)
    clean, noise, rir = (tmp_path / d for d in ("clean", "noise", "rir"))
    for d in (clean, noise, rir):
        d.mkdir()
    for name in ("thorsten_de_a1.flac", "vctk_p226_001.flac", "libri_1-2-0000.flac"):
        sf.write(clean / name, synth_speech(rng, 40000), SR)
    for name in ("keystroke_keyboard_typing_zoom_a.flac", "us8k_siren_1-8-0-0.flac", "us8k_dog_bark_2-3-0-0.flac"):
        sf.write(noise / name, synth_noise(rng, 30000), SR)
    for name in ("spatialaudio_seminar_room_clap.flac", "openair_st_andrews_church.flac"):
        r = np.concatenate([[1.0], 0.2 * rng.standard_normal(4000) * np.exp(-np.arange(4000) / 800)])
        sf.write(rir / name, r.astype(np.float32), SR)
    return clean, noise, rir


def test_ood_split_holds_out_families_speakers_and_rooms(ood_data):
    clean, noise, rir = ood_data
    c, n, r = devset.split_ood(clean, noise, rir)
    assert c == ["thorsten_de_a1.flac", "vctk_p226_001.flac"]
    assert n == ["keystroke_keyboard_typing_zoom_a.flac", "us8k_siren_1-8-0-0.flac"]
    assert r == ["spatialaudio_seminar_room_clap.flac"]


def test_shipped_splits_are_disjoint_and_left_out_of_training():
    from distill.train import excluded, parse_args

    ood_clean = devset.read_list(devset.SPLITS / "ood_clean.txt")
    dev_clean = devset.read_list(devset.SPLITS / "dev_clean.txt")
    assert ood_clean and not set(ood_clean) & set(dev_clean)
    names = excluded(parse_args(["--synthetic", "--out", "x"]))
    for f in ("dev_clean", "dev_noise", "ood_clean", "ood_noise", "ood_rir"):
        assert set(devset.read_list(devset.SPLITS / f"{f}.txt")) <= names
    assert excluded(parse_args(["--synthetic", "--out", "x", "--include-held-out"])) == set()


def test_render_ood_cli_is_deterministic_with_rooms(ood_data, tmp_path, monkeypatch):
    clean, noise, rir = ood_data
    monkeypatch.setattr(devset, "OOD_ROOMS", SMALL_ROOMS)
    lists = tmp_path / "lists"
    assert devset.main(["split", "--clean", str(clean), "--noise", str(noise), "--rir", str(rir), "--out", str(lists)]) == 0
    args = ["render-ood", "--clean", str(clean), "--noise", str(noise), "--rir", str(rir), "--lists", str(lists), "--room-cache", str(tmp_path / "rc")]
    assert devset.main([*args, "--out", str(tmp_path / "a")]) == 0
    assert devset.main([*args, "--out", str(tmp_path / "b")]) == 0
    meta = (tmp_path / "a" / "meta.csv").read_text().splitlines()
    assert meta[0].endswith(",room") and len(meta) == 1 + 2 * len(devset.SNRS)
    rooms = {line.rsplit(",", 1)[1] for line in meta[1:]}
    assert "dry" in rooms and len(rooms) > 1
    for f in (tmp_path / "a" / "noisy").iterdir():
        assert np.array_equal(sf.read(f)[0], sf.read(tmp_path / "b" / "noisy" / f.name)[0])
    assert devset.main([*args[:-2], "--out", str(tmp_path / "c"), "--rir", str(tmp_path / "missing")]) == 2
