"""Objective quality metrics on 16 kHz signals: PESQ (wide band), ESTOI, SI-SDR and DNSMOS P.835
(SIG/BAK/OVRL). DNSMOS runs the ONNX model that the ``speechmos`` package ships, so nothing is
downloaded; segmentation and the polynomial calibration follow the DNSMOS reference scorer."""
from __future__ import annotations

import importlib.resources
import math
from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16000
_DNSMOS_WINDOW = 9.01  # seconds the DNSMOS P.835 model scores at once
# Calibration polynomials (highest power first) of the non-personalised DNSMOS P.835 model.
_DNSMOS_POLY = {
    "sig": (-0.08397278, 1.22083953, 0.0052439),
    "bak": (-0.13166888, 1.60915514, -0.39604546),
    "ovrl": (-0.06766283, 1.11546468, 0.04602535),
}


def si_sdr(est: np.ndarray, ref: np.ndarray) -> float:
    est = est.astype(np.float64) - est.mean()
    ref = ref.astype(np.float64) - ref.mean()
    target = (est @ ref) / (ref @ ref + 1e-12) * ref
    return float(10 * np.log10((target @ target) / ((est - target) @ (est - target) + 1e-12) + 1e-12))


def pesq_wb(est: np.ndarray, ref: np.ndarray) -> float:
    """Wide-band PESQ (P.862.2); NaN where PESQ finds no speech."""
    from pesq import pesq

    try:
        return float(pesq(SAMPLE_RATE, ref, est, "wb"))
    except Exception:  # pesq raises on signals without detectable utterances
        return math.nan


def estoi(est: np.ndarray, ref: np.ndarray) -> float:
    """Extended STOI; NaN for signals too short for its 384 ms analysis segments."""
    from pystoi import stoi

    try:
        return float(stoi(ref, est, SAMPLE_RATE, extended=True))
    except Exception:  # pystoi raises on signals shorter than one segment after silence removal
        return math.nan


@lru_cache(maxsize=1)
def _dnsmos_session():
    import onnxruntime as ort

    path = importlib.resources.files("speechmos") / "dnsmos_models" / "sig_bak_ovr.onnx"
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def dnsmos(x: np.ndarray) -> dict[str, float]:
    """DNSMOS P.835 SIG, BAK and OVRL of a 16 kHz signal (mean over 9 s windows hopped by 1 s)."""
    x = np.clip(x.astype(np.float32), -1, 1)
    n = int(_DNSMOS_WINDOW * SAMPLE_RATE)
    while len(x) < n:
        x = np.concatenate([x, x])
    hops = int(np.floor(len(x) / SAMPLE_RATE) - _DNSMOS_WINDOW) + 1
    windows = np.stack([x[i * SAMPLE_RATE : i * SAMPLE_RATE + n] for i in range(hops) if i * SAMPLE_RATE + n <= len(x)])
    raw = _dnsmos_session().run(None, {"input_1": windows})[0]  # [N, 3] sig, bak, ovrl before calibration
    return {k: float(np.mean(np.polyval(_DNSMOS_POLY[k], raw[:, i]))) for i, k in enumerate(("sig", "bak", "ovrl"))}


def dnsmos_ovrl_window(signals: np.ndarray, batch: int = 16) -> np.ndarray:
    """DNSMOS OVRL of many short signals, each tiled to exactly one 9.01 s model window: a single
    model call per signal (the full scorer tiles by doubling and averages several windows), for
    scoring thousands of training mixtures.

    Shape: signals [N, L] -> [N]
    """
    n = int(_DNSMOS_WINDOW * SAMPLE_RATE)
    reps = -(-n // signals.shape[1])
    windows = np.clip(np.tile(signals.astype(np.float32), (1, reps))[:, :n], -1, 1)  # [N, n]
    out = [_dnsmos_session().run(None, {"input_1": windows[i : i + batch]})[0][:, 2] for i in range(0, len(windows), batch)]
    return np.polyval(_DNSMOS_POLY["ovrl"], np.concatenate(out)).astype(np.float32)


def all_metrics(est: np.ndarray, ref: np.ndarray, with_dnsmos: bool = True) -> dict[str, float]:
    out = {"pesq": pesq_wb(est, ref), "estoi": estoi(est, ref), "si_sdr": si_sdr(est, ref)}
    if with_dnsmos:
        out.update({f"dnsmos_{k}": v for k, v in dnsmos(est).items()})
    return out
