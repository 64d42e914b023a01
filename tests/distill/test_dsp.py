import pytest
import torch

from distill.dsp import StftConfig, apply_mask, istft, stft


@pytest.mark.parametrize("length", [16000, 16001, 160, 12345])
def test_stft_istft_reconstructs(length):
    cfg = StftConfig()
    x = torch.randn(2, length, dtype=torch.float64) * 0.3
    spec = stft(x, cfg)
    assert spec.shape == (2, cfg.num_frames(length), 161, 2)
    y = istft(spec, cfg, length)
    assert (y - x).abs().max() < 1e-5


def test_contract_is_20ms_window_10ms_hop():
    cfg = StftConfig()
    assert (cfg.n_fft, cfg.win_length, cfg.hop, cfg.bins) == (320, 320, 160, 161)
    assert cfg.latency_ms == 20.0


def test_frames_are_causal():
    """Frame t only sees samples before (t + 1) * hop."""
    cfg = StftConfig()
    x = torch.randn(1, 4000)
    y = x.clone()
    y[:, 1600:] += 1.0
    a, b = stft(x, cfg), stft(y, cfg)
    assert torch.equal(a[:, :10], b[:, :10])
    assert not torch.equal(a[:, 10], b[:, 10])


def test_unit_mask_is_identity():
    spec = torch.randn(1, 5, 161, 2)
    mask = torch.zeros_like(spec)
    mask[..., 0] = 1
    assert torch.equal(apply_mask(spec, mask), spec)


def test_rejects_unknown_window():
    with pytest.raises(ValueError, match="window"):
        StftConfig(window="hamming")
