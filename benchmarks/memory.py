"""Memory of a long stream: ``python -m benchmarks.memory [--hours 1] [--backend litert --precision int8]``.

Streams the shipped sample, looped, through the engine for the given duration of audio (as fast
as the machine allows) and samples the process's resident memory along the way. A flat line means
nothing accumulates per frame. Writes ``memory.json`` and ``memory.png``.
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np

from runtime.audio import load
from runtime.backends import open_runner
from runtime.bundle import Bundle
from runtime.engine import Engine
from runtime.stream import DEFAULT_BUNDLE

SAMPLE = Path(__file__).resolve().parent.parent / "assets" / "sample" / "noisy.wav"


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_BUNDLE)
    p.add_argument("--hours", type=float, default=1.0)
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    bundle = Bundle(args.model)
    engine = Engine(bundle, open_runner(bundle, args.backend, args.precision))
    x = load(SAMPLE, engine.rate)
    block = 4 * engine.hop
    total = int(args.hours * 3600 * engine.rate)
    samples, done, t0 = [], 0, time.perf_counter()
    while done < total:
        for i in range(0, len(x) - block + 1, block):
            engine.process(x[i : i + block])
        done += len(x) - len(x) % block
        samples.append((done / engine.rate / 60, rss_mb()))
    minutes, rss = np.array(samples).T
    settled = rss[len(rss) // 10 :]  # after start-up allocations
    result = {
        "backend": args.backend,
        "precision": args.precision,
        "audio_minutes": float(minutes[-1]),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "frames": engine.frames,
        "rss_mb_start": float(rss[0]),
        "rss_mb_end": float(rss[-1]),
        "rss_mb_growth_after_first_10_percent": float(settled[-1] - settled[0]),
        "samples": [[round(a, 3), round(b, 2)] for a, b in samples],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory.json").write_text(json.dumps(result, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot(minutes, rss)
    ax.set_xlabel("audio streamed (minutes)")
    ax.set_ylabel("resident memory (MB)")
    ax.set_title(f"{args.backend}/{args.precision}: {engine.frames} frames")
    fig.tight_layout()
    fig.savefig(args.out / "memory.png", dpi=120)
    print(
        f"{result['audio_minutes']:.1f} min of audio in {result['wall_seconds']:.0f} s: RSS {result['rss_mb_start']:.1f} -> "
        f"{result['rss_mb_end']:.1f} MB ({result['rss_mb_growth_after_first_10_percent']:+.2f} MB after the first 10 %)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
