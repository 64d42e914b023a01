"""The corrector's noise eps, from a generator that firmware reproduces exactly.

A two-stage bundle (student, then a MeanFlow corrector) feeds its corrector an explicit ``eps``
input per frame. ``gaussian`` is the one generator that feeds it, in the runtime, in the export's
reference and in ``distill.meco.Chain``: the SplitMix64 sequence from ``seed``, two 64-bit words per
bin, turned into a pair of standard normal values by the Box-Muller transform in double precision.
A stream's frame t takes the words that follow frame t-1's, so word k of the stream (k = 0, 1, ...)
is ``mix(seed + (k + 1) * GAMMA)``. Nothing here depends on numpy's own generators, which C lacks.
"""
from __future__ import annotations

import numpy as np

GAMMA = 0x9E3779B97F4A7C15
MIX1, MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
FORMULA = (
    "SplitMix64 from seed: word k (k = 0, 1, ... over the stream) = mix(seed + (k + 1) * 0x9E3779B97F4A7C15 mod 2^64), "
    "mix(z): z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9; z = (z ^ (z >> 27)) * 0x94D049BB133111EB; z ^ (z >> 31) (uint64 arithmetic). "
    "Frame t, bin f uses words a = 2 (t * bins + f) and a + 1: u1 = ((word_a >> 11) + 1) * 2^-53, u2 = (word_(a+1) >> 11) * 2^-53, "
    "r = sqrt(-2 ln u1); eps[f] = (r cos(2 pi u2), r sin(2 pi u2)) in double, rounded to float32; t counts frames from the stream's start"
)


def _mix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
    return z ^ (z >> np.uint64(31))


def gaussian(seed: int, start: int, frames: int, bins: int) -> np.ndarray:
    """eps of ``frames`` frames from frame ``start`` of the stream seeded with ``seed``.

    Shape: -> [frames, bins, 2] float32 (re, im per bin)
    """
    k = np.arange(2 * start * bins, 2 * (start + frames) * bins, dtype=np.uint64)  # word indices
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps modulo 2^64, as SplitMix64 wants
        words = _mix(np.uint64(seed) + (k + np.uint64(1)) * np.uint64(GAMMA))
    u1 = ((words[0::2] >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53  # (0, 1]
    u2 = (words[1::2] >> np.uint64(11)).astype(np.float64) * 2.0**-53  # [0, 1)
    r = np.sqrt(-2.0 * np.log(u1))
    pairs = np.stack([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)], axis=-1)  # [frames * bins, 2]
    return pairs.reshape(frames, bins, 2).astype(np.float32)
