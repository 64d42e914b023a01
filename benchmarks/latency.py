"""Per-frame latency of a bundle on every available backend and precision, measured side by side.

``python -m benchmarks.latency [--model NAME|DIR] [--input FILE] [--seconds 30] [--out out/latency]``

Every backend streams the same audio; frames are interleaved (backend A frame t, backend B frame t,
...) so all of them see the same machine conditions. For each it records the engine's time per
frame (STFT, model step, overlap-add) and then, replayed on the same frames and states, the bare
backend call alone; their ratio is the engine overhead. Writes ``latency.md``, ``latency.json`` and
(with matplotlib) ``latency.png``. The audio is real speech in noise: the sample clip that ships
inside the runtime package, or ``--input``. Needs only the runtime (no torch, no matplotlib).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from runtime import report
from runtime.audio import AudioError, load
from runtime.backends import open_runner
from runtime.bundle import Bundle, BundleError
from runtime.engine import Engine
from runtime.models import SAMPLE, open_bundle
CONFIGS = [("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("litert", "fp32"), ("litert", "int8"), ("litert", "int8io"), ("pytorch", "fp32")]


def available(bundle: Bundle, threads: int) -> dict:
    engines = {}
    for backend, precision in CONFIGS:
        try:
            engines[f"{backend}/{precision}"] = Engine(bundle, open_runner(bundle, backend, precision, threads))
        except BundleError as e:
            print(f"skipping {backend}/{precision}: {e}")
    return engines


def measure(engines: dict, signal: np.ndarray) -> dict:
    """Per-frame times in microseconds: the engine (interleaved hop by hop across backends), then
    the bare backend call replayed on the very frames and states the engine fed it, interleaved the
    same way so both passes see the same cache conditions."""
    hop = next(iter(engines.values())).hop
    fed = {name: [] for name in engines}
    for e in engines.values():
        e.reset()
    for start in range(0, len(signal) - hop + 1, hop):
        block = signal[start : start + hop]
        for name, e in engines.items():
            states = e.states
            e.process(block)  # one hop in: exactly one model step
            fed[name].append((e.last_frame, states))
    bare = {name: np.empty(len(fed[name])) for name in engines}
    for t in range(len(next(iter(fed.values())))):
        for name, e in engines.items():
            frame, states = fed[name][t]
            t0 = time.perf_counter_ns()
            e.runner(frame, states)
            bare[name][t] = (time.perf_counter_ns() - t0) / 1e3
    return {name: {"engine": e.frame_times_us().copy(), "bare": bare[name]} for name, e in engines.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default", help="a shipped model's name or a bundle folder")
    p.add_argument("--input", type=Path, default=SAMPLE, help="speech to stream, looped to --seconds (default: the packaged sample clip)")
    p.add_argument("--seconds", type=float, default=30.0, help="audio streamed through every backend")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("out/latency"), help="folder for the results (the committed ones are in benchmarks/results)")
    args = p.parse_args(argv)
    try:
        bundle = open_bundle(args.model)
        x = load(args.input, bundle.signal["sample_rate"])
    except (AudioError, BundleError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    engines = available(bundle, args.threads)
    n = int(args.seconds * bundle.signal["sample_rate"])
    signal = np.tile(x, -(-n // len(x)))[:n]
    warm = measure(engines, signal[: bundle.signal["sample_rate"]])  # first second: caches, allocator, XNNPACK setup
    del warm
    times = measure(engines, signal)
    frames_per_second = bundle.signal["sample_rate"] / bundle.signal["hop"]
    rows = []
    for name, t in times.items():
        eng, bare = t["engine"], t["bare"]
        rows.append(
            {
                "backend": name,
                "p50_us": float(np.median(eng)),
                "p95_us": float(np.percentile(eng, 95)),
                "p99_us": float(np.percentile(eng, 99)),
                "max_us": float(eng.max()),
                "real_time_factor": float(eng.mean() * frames_per_second / 1e6),
                "bare_p50_us": float(np.median(bare)),
                "engine_overhead": float(np.median(eng) / np.median(bare)),
                "frames": int(len(eng)),
            }
        )
    m = bundle.manifest["model"]
    result = {
        "bundle": str(bundle.root),
        "audio": str(args.input),
        "model": {"params": m["params"], "macs_per_frame": m["macs_per_frame"], "mmacs_per_second": m["mmacs_per_second"]},
        "seconds": args.seconds,
        "threads": args.threads,
        "machine": report.machine(),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latency.json").write_text(json.dumps(result, indent=1))
    md = [
        f"Machine: {result['machine']['cpu']} ({result['machine']['arch']}, {result['machine']['cores']} cores), {args.threads} thread(s); "
        f"{args.seconds:.0f} s of audio per backend, interleaved frame by frame. Model: {m['params'] / 1e3:.1f} k params, "
        f"{m['macs_per_frame'] / 1e3:.1f} k MACs/frame ({m['mmacs_per_second']:.1f} MMAC/s).",
        "",
        "| backend/precision | p50 (us) | p95 (us) | p99 (us) | max (us) | real-time factor | bare call p50 (us) | engine / bare |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        md.append(
            f"| {r['backend']} | {r['p50_us']:.0f} | {r['p95_us']:.0f} | {r['p99_us']:.0f} | {r['max_us']:.0f} | "
            f"{r['real_time_factor']:.4f} | {r['bare_p50_us']:.0f} | {r['engine_overhead']:.2f} |"
        )
    (args.out / "latency.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    written = "latency.md, latency.json"
    if plot(times, args.out / "latency.png"):
        written += ", latency.png"
    else:
        print("\nnote: matplotlib is not installed, so no plot (pip install matplotlib)")
    print(f"\nwrote {args.out}/{written}")
    return 0


def plot(times: dict, path: Path) -> bool:
    """Box plot of the per-frame times; False without matplotlib (a runtime-only install)."""
    try:
        import matplotlib
    except ImportError:
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(times)
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(names) + 1.5))
    ax.boxplot([times[n]["engine"] for n in names], orientation="horizontal", whis=(1, 99), showfliers=False)
    ax.set_yticks(range(1, len(names) + 1), names)
    ax.set_xscale("log")
    ax.set_xlabel("per-frame compute time (us); box: quartiles, whiskers: p1-p99; one frame = 10 000 us")
    ax.set_title("Streaming engine latency per backend")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


if __name__ == "__main__":
    raise SystemExit(main())
