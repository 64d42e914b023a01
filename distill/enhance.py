"""Enhance one file offline with a checkpoint: ``python -m distill.enhance --input in.wav --output out.wav``.

Any sample rate and channel count: the input is downmixed and resampled to the model's rate, and
the result is written at the input's rate. NaN/Inf samples are replaced by silence and counted.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from distill import need_torch

need_torch("train", __name__)  # before torch is imported: a runtime-only install gets one line naming the extra

import numpy as np
import torch

from distill import checkpoint, metrics
from distill.dsp import enhance
from distill.meco import load_enhancer
from distill.models import cost
from runtime.audio import AudioError, check_audio_output, finite, load, read, resample, to_mono, write

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "checkpoints" / "student.pt"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m distill.enhance", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, type=Path)
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--reference", type=Path, help="clean reference: also report SI-SDR and PESQ before and after")
    args = p.parse_args(argv)
    try:
        check_audio_output(args.output, args.input, *([args.reference] if args.reference else []))
        model = load_enhancer(args.checkpoint)  # a corrector's checkpoint: its student and it, chained
        x, sr = read(args.input)
        x, replaced = finite(x)
        rate = model.config.stft.sample_rate
        mono = resample(to_mono(x), sr, rate)
        ref = load(args.reference, rate) if args.reference else None
        if ref is not None and (not np.isfinite(ref).all() or abs(len(ref) - len(mono)) > rate // 100):
            raise AudioError(f"{args.reference}: not a reference for {args.input} (different length or NaN/Inf samples)")
        t0 = time.perf_counter()
        wav = torch.from_numpy(np.ascontiguousarray(mono))[None]  # [1, L]
        with torch.no_grad():  # a generative model (distill.rosecd) brings its own sampler
            y = (model.enhance(wav) if hasattr(model, "enhance") else enhance(model, wav))[0].numpy()
        elapsed = time.perf_counter() - t0
        write(args.output, resample(y, rate, sr), sr)
    except (AudioError, checkpoint.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    seconds = len(mono) / rate
    removed = 10 * np.log10((np.square(mono, dtype=np.float64).sum() + 1e-12) / (np.square(y, dtype=np.float64).sum() + 1e-12))
    print(f"input   {args.input}: {seconds:.2f} s, {sr} Hz, {x.shape[1]} channel(s)" + (f", {replaced} NaN/Inf samples replaced" if replaced else ""))
    print(f"model   {args.checkpoint}: {cost(model)}")
    print(f"output  {args.output}: {removed:.1f} dB of energy removed, {elapsed:.2f} s compute (real-time factor {elapsed / seconds:.3f})")
    if ref is not None:
        n = min(len(ref), len(mono))
        before, after = (metrics.si_sdr(s[:n], ref) for s in (mono, y))
        pb, pa = (metrics.pesq_wb(s[:n], ref) for s in (mono, y))
        print(f"quality against {args.reference}: SI-SDR {before:.1f} -> {after:.1f} dB, PESQ {pb:.2f} -> {pa:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
