"""What a streaming run measured: per-frame compute latency, real-time factor, latency, MACs (per
stage and per-stage time for a two-stage bundle, gate usage for a gated one), drop-outs and the
machine, as a dict for JSON and a few lines for people."""
from __future__ import annotations

import os
import platform
from collections.abc import Sequence

import numpy as np

from runtime.engine import Engine


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    return {"cpu": cpu_model(), "arch": platform.machine(), "cores": os.cpu_count(), "os": platform.platform(), "python": platform.python_version()}


def build(engines: Engine | Sequence[Engine], backend: str, precision: str, threads: int, audio_seconds: float, **extra) -> dict:
    """The report of a stream through one engine, or through one engine per channel sharing one
    runner (frames, times and counts summed over them). ``extra`` entries are added, or replace."""
    engines = [engines] if isinstance(engines, Engine) else list(engines)
    first = engines[0]
    t = np.concatenate([e.frame_times_us() for e in engines])
    frames_per_second = first.rate / first.hop
    pct = {f"p{q}": float(np.percentile(t, q)) if len(t) else None for q in (50, 95, 99)}
    usage = first.runner.usage()  # a gated model executes only the parts its gates open; a two-stage one the stages chosen
    macs = usage["macs_per_frame"] if usage else first.macs_per_frame
    kind = None if usage is None else "gating" if "gates" in usage else "chain"
    return {
        "backend": backend,
        "precision": precision,
        "threads": threads,
        "frames": sum(e.frames for e in engines),
        "audio_seconds": round(audio_seconds, 3),
        "frame_compute_us": {**pct, "max": float(t.max()) if len(t) else None, "mean": float(t.mean()) if len(t) else None},
        "real_time_factor": float(t.sum() / 1e6 / audio_seconds) if audio_seconds else None,
        "algorithmic_latency_ms": first.latency_ms,
        "macs_per_frame": macs,
        "mmacs_per_second": macs * frames_per_second * len(engines) / 1e6,
        **({kind: usage} if usage else {}),
        "nonfinite_samples_replaced": sum(e.nonfinite_samples for e in engines),
        "state_resets": sum(e.state_resets for e in engines),
        "clipped_samples": 0,
        "machine": machine(),
        **extra,
    }


def summary(r: dict) -> str:
    c = r["frame_compute_us"]
    lines = [
        f"backend {r['backend']}{' (auto)' if r.get('backend_choice') == 'auto' else ''} ({r['precision']}, {r['threads']} thread(s)) "
        f"on {r['machine']['cpu']} [{r['machine']['arch']}, {r['machine']['cores']} cores]",
        f"frames {r['frames']} ({r['audio_seconds']:.2f} s of audio); per-frame compute p50 {c['p50']:.0f} us, p95 {c['p95']:.0f} us, "
        f"p99 {c['p99']:.0f} us, max {c['max']:.0f} us; real-time factor {r['real_time_factor']:.3f}"
        if r["frames"]
        else "frames 0",
        f"algorithmic latency {r['algorithmic_latency_ms']:.1f} ms; {r['macs_per_frame'] / 1e3:.1f} k MACs/frame = {r['mmacs_per_second']:.1f} MMAC/s"
        + (f" ({r['channels']} channels)" if r.get("channels", 1) > 1 else ""),
    ]
    if r.get("channels", 1) > 1 or "high_band" in r and not r["high_band"].startswith("none"):
        lines.append(f"{r['sample_rate']} Hz, {r['channels']} channel(s), {r['channel_processing']}; band above the model's: {r['high_band']}")
    if r.get("gating"):
        g = r["gating"]
        lines.append(f"gates {g['gates']}: branch usage {', '.join(f'{u:.2f}' for u in g['branch_usage'])}; executed {g['mac_ratio']:.0%} of the all-on {g['macs_all_on'] / 1e3:.1f} k MACs/frame")
    if r.get("chain"):
        c = r["chain"]
        stages = [f"{n} bypassed" if not s["ran"] else f"{n} {s['macs_per_frame'] / 1e3:.1f} k MACs/frame"
                  + (f", mean {s['compute_us']['mean']:.0f} us, p95 {s['compute_us']['p95']:.0f} us" if s["compute_us"] else "")
                  for n, s in c["per_stage"].items()]  # fmt: skip
        lines.append(f"stages {c['stages']}: {'; '.join(stages)}")
    extras = [f"{k.replace('_', ' ')} {r[k]}" for k in ("input_overflows", "output_underflows", "nonfinite_samples_replaced", "state_resets", "clipped_samples") if r.get(k)]
    if extras:
        lines.append("; ".join(extras))
    return "\n".join(lines)
