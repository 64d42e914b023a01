"""``runtime.Enhancer``: any rate and channel count, exact lengths, streaming = whole signal, the
band above the model's kept and scaled by the model's gain."""
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from runtime import Enhancer
from runtime.backends import choose_backend
from runtime.bundle import BundleError
from runtime.engine import Engine

SAMPLE = Path(__file__).resolve().parents[2] / "assets" / "sample" / "noisy.wav"


@pytest.fixture(scope="module")
def speech():
    x, _ = sf.read(SAMPLE, dtype="float32")
    return x[: 2 * 16000]


@pytest.fixture(scope="module")
def enh(small_bundle):
    return Enhancer(small_bundle, backend="onnxruntime")


def _at(x, rate):
    return soxr.resample(x, 16000, rate).astype(np.float32) if rate != 16000 else x


def _band_energy(y, rate, lo, hi):
    spec = np.abs(np.fft.rfft(y, axis=0)) ** 2
    f = np.fft.rfftfreq(len(y), 1 / rate)
    return float(spec[(f >= lo) & (f < hi)].sum())


def test_a_hand_written_stream_gets_back_exactly_what_it_gave(enh, speech):
    """160 000 samples in blocks of 1000 at 16 kHz: 160 000 out, not 160 160."""
    x = np.tile(speech, 5)[:160_000]
    enh.reset(16000, 1)
    total = sum(len(enh.process(x[i : i + 1000])) for i in range(0, len(x), 1000)) + len(enh.flush())
    assert total == 160_000


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000])
def test_streaming_equals_whole_signal_for_any_blocks(enh, speech, rate):
    x = _at(speech, rate)
    stereo = np.stack([x, 0.5 * x[::-1]], 1)
    whole = enh.enhance(stereo, rate)
    assert whole.shape == stereo.shape and whole.dtype == np.float32
    for block in (37, 160, 1000, 4801):
        enh.reset(rate, 2)
        parts = [enh.process(stereo[i : i + block]) for i in range(0, len(stereo), block)]
        out = np.concatenate([*parts, enh.flush()])
        assert np.array_equal(out, whole), f"{rate} Hz in blocks of {block}"


@pytest.mark.parametrize("n", [1, 159, 160, 161, 4799, 12345])
def test_lengths_are_exact_for_short_and_odd_signals(enh, n):
    x = np.random.default_rng(n).standard_normal((n, 2)).astype(np.float32) * 0.1
    for rate in (16000, 44100, 48000):
        assert enh.enhance(x, rate).shape == (n, 2)


def test_at_the_model_rate_it_is_the_engine(enh, speech):
    y = enh.enhance(speech, 16000, block=160)
    assert y.ndim == 1 and np.array_equal(y, Engine(enh.bundle, enh.runner).run(speech))


def test_each_channel_has_its_own_state(enh, speech):
    x = _at(speech, 48000)
    both = enh.enhance(np.stack([x, np.zeros_like(x)], 1), 48000)
    alone = enh.enhance(x, 48000)
    assert np.array_equal(both[:, 0], alone), "a silent second channel must not change the first"
    assert np.abs(both[:, 1]).max() < 1e-6


def test_doing_nothing_gives_back_the_input_at_48k(small_bundle, speech):
    """With the mask forced to one (0 dB attenuation limit) low band + high band = input: the split
    and the alignment of the high band with the model's latency are exact."""
    x = _at(speech, 48000) + 0.01 * np.random.default_rng(0).standard_normal(3 * len(speech)).astype(np.float32)
    y = Enhancer(small_bundle, backend="onnxruntime", atten_limit_db=0.0).enhance(x, 48000, block=480)
    assert np.abs(y - x).max() < 1e-5


def test_band_above_8k_is_kept_scaled_by_the_models_gain(small_bundle, speech):
    t = np.arange(3 * len(speech)) / 48000
    tone = 0.05 * np.sin(2 * np.pi * 12000 * t).astype(np.float32)
    x = _at(speech, 48000) + tone
    enh = Enhancer(small_bundle, backend="onnxruntime")
    y = enh.enhance(x, 48000)
    kept = _band_energy(y, 48000, 11900, 12100) / _band_energy(x, 48000, 11900, 12100)
    # the gain the engine computes from the model's 4-8 kHz band, frame by frame, on the same low band
    e = Engine(enh.bundle, enh.runner, band_gain=True)
    low = soxr.resample(x, 48000, 16000).astype(np.float32)
    e.process(low)
    first = e.gains
    e.flush()
    gains = np.concatenate([first, e.gains])[e.delay : e.delay + len(low)]
    assert 0.01 < kept < 0.99, "kept, and attenuated where the model attenuates"
    assert kept == pytest.approx(float(np.mean(gains**2)), rel=0.02)
    dropped = Enhancer(small_bundle, backend="onnxruntime", drop_high_band=True).enhance(x, 48000)
    assert _band_energy(dropped, 48000, 11900, 12100) < 1e-4 * _band_energy(x, 48000, 11900, 12100)
    assert _band_energy(dropped, 48000, 0, 7000) == pytest.approx(_band_energy(y, 48000, 0, 7000), rel=1e-3), "the low band is the same"


def test_non_finite_samples_are_replaced_before_resampling(enh, speech):
    x = _at(speech, 48000).copy()
    x[[10, 5000]] = [np.nan, np.inf]
    y = enh.enhance(x, 48000)
    assert np.isfinite(y).all() and enh.report()["nonfinite_samples_replaced"] == 2


def test_bad_blocks_and_settings_are_refused(enh, small_bundle):
    enh.reset(48000, 2)
    with pytest.raises(ValueError, match=r"shape \[n, 2\]"):
        enh.process(np.zeros(100, np.float32))
    enh.flush()
    with pytest.raises(RuntimeError, match="reset"):
        enh.process(np.zeros((100, 2), np.float32))
    with pytest.raises(ValueError, match="sample_rate"):
        enh.reset(0)
    with pytest.raises(ValueError, match="atten_limit_db"):
        Enhancer(small_bundle, atten_limit_db=-3)


def test_auto_backend_is_the_fastest_measured_the_bundle_has(small_bundle):
    assert Enhancer(small_bundle).backend == "litert"
    assert Enhancer(small_bundle, precision="int8io").backend == "litert"

    def fake(*files):
        return types.SimpleNamespace(root=Path("b"), gating=None, files={f"m{i}": {"kind": "model", "format": f, "precision": p} for i, (f, p) in enumerate(files)})

    assert choose_backend(fake(("onnx", "fp32"), ("tflite", "int8")), "auto", "fp32") == "onnxruntime"
    assert choose_backend(fake(("onnx", "fp32")), "onnxruntime", "int8") == "onnxruntime", "an explicit choice is kept"
    with pytest.raises(BundleError, match="no model at precision int8 for any backend"):
        choose_backend(fake(("onnx", "fp32")), "auto", "int8")
