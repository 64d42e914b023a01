import numpy as np
import pytest
import torch

from distill import metrics
from distill.losses import parse_weights, psa_loss, si_sdr, si_sdr_loss, snr_loss, spectral_loss, supervised


def test_si_sdr_known_values_and_scale_invariance():
    torch.manual_seed(0)
    ref = torch.randn(2, 8000)
    noise = torch.randn(2, 8000)
    noise = noise - (noise * ref).sum(-1, keepdim=True) / ref.square().sum(-1, keepdim=True) * ref  # orthogonal
    est = ref + noise * (ref.norm(dim=-1, keepdim=True) / noise.norm(dim=-1, keepdim=True)) * 10 ** (-10 / 20)
    assert si_sdr(est, ref) == pytest.approx(torch.tensor([10.0, 10.0]), abs=1e-2)
    assert si_sdr(3.0 * est, ref) == pytest.approx(si_sdr(est, ref), abs=1e-4)
    assert metrics.si_sdr(est[0].numpy(), ref[0].numpy()) == pytest.approx(10.0, abs=1e-2)


def test_spectral_losses_vanish_at_the_target_only():
    spec = torch.randn(1, 10, 161, 2)
    assert spectral_loss(spec, spec) == pytest.approx(0.0, abs=1e-10)
    assert spectral_loss(spec * 0.5, spec) > 0
    assert psa_loss(spec, spec, spec) == pytest.approx(0.0, abs=1e-8)
    assert psa_loss(spec * 0.5, spec, spec) > 0


def test_parse_weights_and_supervised_terms():
    w = parse_weights("spec=1, sisdr=0.01,psa")
    assert w == {"spec": 1.0, "sisdr": 0.01, "psa": 1.0}
    with pytest.raises(ValueError, match="unknown loss"):
        parse_weights("l1=1")
    with pytest.raises(ValueError, match="not a number"):
        parse_weights("spec=x")
    wav = torch.randn(1, 1600)
    spec = torch.randn(1, 11, 161, 2)
    terms = supervised(w, wav, wav, spec, spec, spec)
    assert set(terms) == {"spec", "sisdr", "psa"}


def test_metrics_rank_clean_above_noisy():
    from distill.data import synth_noise, synth_speech

    rng = np.random.default_rng(0)
    clean = synth_speech(rng, 48000)
    noisy = clean + 0.3 * synth_noise(rng, 48000)
    good = metrics.all_metrics(clean, clean)
    bad = metrics.all_metrics(noisy, clean)
    assert good["pesq"] > 4.0 and good["estoi"] > 0.99
    # DNSMOS judges real speech; on procedural speech only its background score is meaningful
    for k in ("pesq", "estoi", "si_sdr", "dnsmos_bak"):
        assert good[k] > bad[k], k
    assert all(1.0 <= r[k] <= 5.0 for r in (good, bad) for k in ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl"))


def test_sign_blind_and_sign_aware_losses():
    torch.manual_seed(1)
    ref = torch.randn(2, 8000)
    est = ref + 0.1 * torch.randn(2, 8000)
    assert si_sdr_loss(-est, ref) == pytest.approx(si_sdr_loss(est, ref).item(), abs=1e-4)  # SI-SDR cannot see the sign
    assert snr_loss(est, ref) == pytest.approx(-20.0, abs=0.5)
    assert snr_loss(-est, ref) > 0  # an inverted output is worse than silence
    spec = torch.randn(1, 10, 161, 2)
    assert spectral_loss(-spec, spec) > 0.1
