"""Our bundles side by side with published peer denoisers: quality, time per frame, MACs.

``python -m benchmarks.peers --set dev=data/devset [--set NAME=DIR ...] [--bundle NAME=DIR[:BACKEND:PRECISION] ...]
[--peers gtcrn,ulunas,dtln,dtln-int8,rnnoise,dfn3] [--peers-dir ../shared/peers] [--files N] [--out DIR] [--save-audio DIR]``

- Every system streams every file one hop per call, as it would run on a device (see
  ``benchmarks.peer_adapters``); its output is aligned to the clean reference by removing its
  algorithmic delay, then scored with ``distill.metrics`` (PESQ WB, ESTOI, SI-SDR, DNSMOS
  SIG/BAK/OVRL), overall and per input SNR when the set has a ``meta.csv``.
- Each call is timed. Systems take turns file by file (the first one rotating), so machine load
  hits all of them alike; times are given per call (median) and as real-time factor.
- MACs per second and parameters are counted from the files each system runs (ours: the bundle
  manifest); the table's notes say how, system by system.

A peer whose files or package are missing is skipped with a note. Writes ``peers.md``,
``peers.json`` and ``peers.png`` to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarks.peer_adapters import PEERS, RATE, System, Unavailable, open_bundle, stream
from distill.evaluate import HEADERS, METRICS, SetError, parse_sets, read_set, read_snrs, summarise
from distill.metrics import all_metrics
from runtime import report
from runtime.audio import AudioError, write
from runtime.backends import BACKENDS
from runtime.bundle import BundleError
from runtime.stream import DEFAULT_BUNDLE

DEFAULT_PEERS_DIR = Path(__file__).resolve().parents[2] / "shared" / "peers"  # ../shared/peers beside the repository
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "peers"
OUTPUTS = ("peers.md", "peers.json", "peers.png")


class UsageError(Exception):
    """Bad command-line input; the message says what to give instead."""


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__.split("\n\n")[0])
    p.add_argument("--set", action="append", default=[], metavar="NAME=DIR", help="test set: noisy/, clean/, maybe meta.csv; repeatable")
    p.add_argument("--bundle", action="append", default=[], metavar="NAME=DIR[:BACKEND:PRECISION]",
                   help="our bundle, onnxruntime fp32 unless given (default: the shipped runtime/bundles/default); repeatable")  # fmt: skip
    p.add_argument("--peers", default="all", help=f"comma-separated peers, 'all' or 'none' (peers: {', '.join(PEERS)})")
    p.add_argument("--peers-dir", type=Path, help=f"folder with gtcrn/, ulunas/, dtln/ (default: {DEFAULT_PEERS_DIR} when it exists)")
    p.add_argument("--files", type=int, help="this many files per set, spread evenly over it (default: all)")
    p.add_argument("--threads", type=int, default=1, help="threads of every ONNX Runtime / LiteRT session")
    p.add_argument("--no-dnsmos", action="store_true", help="skip DNSMOS (faster)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where peers.md, peers.json and peers.png go")
    p.add_argument("--save-audio", type=Path, metavar="DIR", help="also write every enhanced file to DIR/<set>/<system>/")
    return p.parse_args(argv)


def named(values: list[str], flag: str) -> dict[str, str]:
    """``NAME=VALUE`` strings -> {NAME: VALUE}, each name once."""
    out = {}
    for v in values:
        name, sep, value = v.partition("=")
        if not sep or not name.strip() or not value:
            raise UsageError(f"{flag} takes NAME=DIR, got {v!r}")
        if name in out:
            raise UsageError(f"{flag} {name} is given twice")
        out[name] = value
    return out


def bundle_spec(spec: str) -> tuple[Path, str, str]:
    """``DIR[:BACKEND:PRECISION]`` -> (DIR, backend, precision); onnxruntime fp32 unless given."""
    parts = spec.rsplit(":", 2)
    if len(parts) == 3 and parts[1] in BACKENDS:
        return Path(parts[0]), parts[1], parts[2]
    if parts[-1] in BACKENDS:
        raise UsageError(f"--bundle {spec}: give the precision after the backend, e.g. {spec}:fp32")
    return Path(spec), "onnxruntime", "fp32"


def test_sets(values: list[str]) -> dict[str, Path]:
    if not values:
        raise UsageError("give at least one --set NAME=DIR (render the dev set with python -m distill.devset render)")
    try:
        return parse_sets(values, "--set")
    except SetError as e:
        raise UsageError(str(e)) from None


def peer_keys(value: str) -> list[str]:
    if value == "all":
        return list(PEERS)
    keys = [] if value == "none" else [k.strip().lower() for k in value.split(",") if k.strip()]
    unknown = [k for k in keys if k not in PEERS]
    if unknown:
        raise UsageError(f"unknown peer(s) {', '.join(unknown)}; choose from {', '.join(PEERS)}, or all / none")
    return keys


def open_systems(args) -> tuple[dict[str, System], dict[str, str]]:
    """Our bundles, then the peers that can run here; the others with the reason they cannot."""
    systems, skipped = {}, {}
    for name, spec in named(args.bundle or [f"default={os.path.relpath(DEFAULT_BUNDLE)}"], "--bundle").items():
        root, backend, precision = bundle_spec(spec)
        if not root.is_dir():
            raise UsageError(f"--bundle {name}: {root} is not a folder")
        systems[name] = open_bundle(name, root, backend, precision, args.threads)
    if args.peers_dir is not None and not args.peers_dir.is_dir():
        raise UsageError(f"--peers-dir {args.peers_dir}: not a folder")
    peers_dir = args.peers_dir or (DEFAULT_PEERS_DIR if DEFAULT_PEERS_DIR.is_dir() else None)
    for key in peer_keys(args.peers):
        name, open_peer = PEERS[key]
        if name in systems:
            raise UsageError(f"--bundle {name}: the name of a peer; name the bundle otherwise")
        try:
            systems[name] = open_peer(name, peers_dir, args.threads)
        except Unavailable as e:
            skipped[name] = str(e)
            print(f"skipping {name}: {e}", file=sys.stderr)
    return systems, skipped


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def run_set(systems: dict[str, System], items, label: str, with_dnsmos: bool, save: Path | None) -> tuple[dict, dict, dict]:
    """Every file through every system, the systems taking turns file by file with the first one
    rotating (no system always runs right after the same other one). Returns per-file metrics of
    the noisy input and of every system, and every system's per-call times (us) per file."""
    names = list(systems)
    noisy_scores, scores, times = {}, {n: {} for n in names}, {n: [] for n in names}
    for i, (key, noisy, clean) in enumerate(tqdm(items, desc=label, dynamic_ncols=True)):
        out = {}
        for name in names[i % len(names) :] + names[: i % len(names)]:
            out[name], t = stream(systems[name].streamer, noisy)
            times[name].append(t)
        noisy_scores[key] = all_metrics(noisy, clean, with_dnsmos)
        for name, y in out.items():
            scores[name][key] = all_metrics(y, clean, with_dnsmos)
            if save:
                folder = save / slug(label) / slug(name)
                folder.mkdir(parents=True, exist_ok=True)
                write(folder / f"{key}.wav", y, RATE)
    return noisy_scores, scores, times


def timing(times: list[np.ndarray], seconds: float) -> dict:
    t = np.concatenate(times)
    rtf = float(t.sum() / 1e6 / seconds)
    return {"median_us": float(np.median(t)), "p95_us": float(np.percentile(t, 95)), "calls": len(t), "real_time_factor": rtf}


def describe(s: System) -> dict:
    st = s.streamer
    return {
        "about": s.about,
        "sample_rate": st.rate,
        "hop_ms": 1000 * st.hop / st.rate,
        "delay_ms": 1000 * st.delay / st.rate,
        "latency_ms": 1000 * (st.delay + st.hop) / st.rate,
        "macs_per_second": s.cost.macs_per_second,
        "params": s.cost.params,
        "cost_source": s.cost.source,
    }


def benchmark(args, systems: dict[str, System], skipped: dict[str, str], data: dict) -> dict:
    with_dnsmos = not args.no_dnsmos
    _, items, _ = next(iter(data.values()))
    for s in systems.values():  # warm-up: sessions, caches, allocators, XNNPACK set-up
        stream(s.streamer, items[0][1][:RATE])
    sets = {}
    for label, (root, items, snr_of) in data.items():
        noisy, scores, times = run_set(systems, items, label, with_dnsmos, args.save_audio)
        seconds = sum(len(x) for _, x, _ in items) / RATE
        sets[label] = {
            "dir": str(root),
            "files": len(items),
            "seconds": seconds,
            "noisy": summarise(noisy, snr_of),
            "systems": {n: {**summarise(scores[n], snr_of), "timing": timing(times[n], seconds)} for n in systems},
        }
    return {
        "machine": report.machine(),
        "threads": args.threads,
        "dnsmos": with_dnsmos,
        "reference": next(iter(systems)),
        "systems": {n: describe(s) for n, s in systems.items()},
        "skipped": skipped,
        "sets": sets,
    }


def _metric(m: str, v: float) -> str:
    return f"{v:.3f}" if m in ("pesq", "estoi") else f"{v:.2f}"


def _count(v: float | None, scale: float) -> str:
    return "n/a" if v is None else f"{v / scale:.1f}"


def _row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


NOTES = [
    "- µs/call: median wall time of one call of a system's per-hop processing: for ours and the ONNX/TFLite peers the framing, FFT, "
    "model and overlap-add in this process; for RNNoise and DeepFilterNet3 the library call, which does the same inside. Hops differ, "
    "so compare the real-time factor (RTF: total time / audio duration); 'time vs' is the ratio of RTFs, measured in the same run.",
    "- latency: window plus look-ahead, i.e. the output lag (removed before scoring) plus the hop a system waits to fill.",
    "- MMAC/s: multiply-accumulates of convolutions, matrix products and recurrent cells per second of audio; element-wise work and "
    "the STFT/feature DSP are not counted. Params: weights stored in the model files. Where each system's counts come from:",
]


def markdown(r: dict) -> str:
    mach, ref = r["machine"], r["reference"]
    lines = [
        f"Machine: {mach['cpu']} ({mach['arch']}, {mach['cores']} cores), {r['threads']} thread(s) per session. Every system streams "
        "every file one hop per call; its output is aligned to the clean reference by removing its delay, then scored with distill.metrics."
    ]
    for label, s in r["sets"].items():
        cols = [m for m in METRICS if m in s["noisy"]["mean"]]
        extra = ["hop (ms)", "latency (ms)", "µs/call", "RTF", f"time vs {ref}", "MMAC/s", "params (k)"]
        lines += ["", f"## {label}: {s['dir']} ({s['files']} files, {s['seconds']:.0f} s)", ""]
        lines += [_row(["system", *(HEADERS[m] for m in cols), *extra]), _row(["---", *["---:"] * (len(cols) + len(extra))])]
        lines.append(_row(["noisy input", *(_metric(m, s["noisy"]["mean"][m]) for m in cols), *[""] * len(extra)]))
        ref_rtf = s["systems"][ref]["timing"]["real_time_factor"]
        for name, res in s["systems"].items():
            d, t = r["systems"][name], res["timing"]
            rtf = t["real_time_factor"]
            cost = [f"{d['hop_ms']:g}", f"{d['latency_ms']:g}", f"{t['median_us']:.0f}", f"{rtf:.4f}", f"{rtf / ref_rtf:.2f}"]
            cost += [_count(d["macs_per_second"], 1e6), _count(d["params"], 1e3)]
            lines.append(_row([name, *(_metric(m, res["mean"][m]) for m in cols), *cost]))
        if s["noisy"]["by_snr"]:
            lines += ["", f"By input SNR ({label}):", ""]
            lines += [_row(["input SNR (dB)", "system", *(HEADERS[m] for m in cols)]), _row(["---:", "---", *["---:"] * len(cols)])]
            for snr in s["noisy"]["by_snr"]:
                for name, res in [("noisy input", s["noisy"]), *s["systems"].items()]:
                    if snr in res["by_snr"]:
                        lines.append(_row([snr, name, *(_metric(m, res["by_snr"][snr][m]) for m in cols)]))
    lines += ["", "Notes:", "", *NOTES]
    lines += [f"  - {n} ({d['about']}): {d['cost_source']}." for n, d in r["systems"].items()]
    lines += [f"- not run: {n} ({why})" for n, why in r["skipped"].items()]
    if not r["dnsmos"]:
        lines.append("- DNSMOS was skipped (--no-dnsmos).")
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "osD^vP*X"
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, metric, label in zip(axes, ("pesq", "si_sdr"), ("PESQ (WB)", "SI-SDR (dB)")):
        for j, (set_name, s) in enumerate(r["sets"].items()):
            ax.axhline(s["noisy"]["mean"][metric], color="grey", ls=":", lw=1)
            for i, (name, d) in enumerate(r["systems"].items()):
                if d["macs_per_second"] is None:
                    continue
                x, y = d["macs_per_second"] / 1e6, s["systems"][name]["mean"][metric]
                ax.scatter(x, y, color=colours[i % len(colours)], marker=markers[j % len(markers)], label=set_name if i == 0 else None)
                ax.annotate(name, (x, y), xytext=(4, 3), textcoords="offset points", fontsize=8)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 3, 5)))  # plain numbers: powers of ten alone leave too few ticks
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("MMAC/s (log scale)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if len(r["sets"]) > 1:
        axes[0].legend(title="set (marker)", fontsize=8)
    unplotted = [n for n, d in r["systems"].items() if d["macs_per_second"] is None]
    note = f"; not plotted (no MAC count): {', '.join(unplotted)}" if unplotted else ""
    fig.suptitle(f"Quality against compute, streamed; dotted: noisy input{note}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.files is not None and args.files < 1:
            raise UsageError("--files must be at least 1")
        if args.threads < 1:
            raise UsageError("--threads must be at least 1")
        if args.out.exists() and not args.out.is_dir():
            raise UsageError(f"--out {args.out}: is a file; give a folder")
        sets = test_sets(args.set)
        systems, skipped = open_systems(args)
        if not systems:
            raise UsageError("no system to run (every peer was skipped and no --bundle given)")
        data = {}
        for label, root in sets.items():
            items = read_set(root / "noisy", root / "clean", args.files)
            if not items:
                raise UsageError(f"--set {label}: no readable noisy/clean pairs in {root}")
            data[label] = (root, items, read_snrs(root))
    except (UsageError, AudioError, BundleError, Unavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if any((args.out / f).exists() for f in OUTPUTS):
        print(f"note: the results in {args.out} will be replaced", file=sys.stderr)
    result = benchmark(args, systems, skipped, data)
    args.out.mkdir(parents=True, exist_ok=True)
    md = markdown(result)
    (args.out / "peers.md").write_text(md)
    (args.out / "peers.json").write_text(json.dumps(result, indent=1))
    print(md)
    written = "peers.md, peers.json"
    try:
        plot(result, args.out / "peers.png")
        written += ", peers.png"
    except ImportError:
        (args.out / "peers.png").unlink(missing_ok=True)  # an older plot would not match these tables
        print("no plot: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
    print(f"wrote {written} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
