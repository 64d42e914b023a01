"""Dynamic slimming: quality against the MACs actually executed, gate usage against how bad the
input is, and the per-frame time the runtime saves by skipping closed branches.

``python -m benchmarks.slimming --devset dev=data/devset [--devset dev-ood=data/dev-ood ...] --gated NAME=CKPT [...]
[--static NAME=CKPT[@G0,G1,...] ...] [--reference NAME] [--bundle GATED_BUNDLE [--static-bundle PLAIN_BUNDLE]]``

- Quality (PESQ, ESTOI, SI-SDR, DNSMOS OVRL) of every system on each ``--devset``, offline, against
  its mean MACs per frame: static models cost what ``distill.models.cost`` counts; a gated model
  executes trunk + policy + the branches its policy opens (its "all on" row is its full width).
  A gated checkpoint trained with fixed gates (``distill.train --fixed-gates``) is a static model
  too: ``--static NAME=CKPT@0,1`` scores it with those gates and counts trunk + its branches.
- Gate usage (executed MACs over all-on MACs) of every gated model per input SNR and against the
  DNSMOS OVRL of the noisy input, set by set.
- With ``--bundle``: the runtime's per-frame time with the branches all on, all off and driven by
  the policy, in round-robin blocks, as medians and ratios; with ``--static-bundle`` a plain bundle
  (the static student to beat) timed in the same rounds. Engine time (STFT, model, overlap-add)
  and model time (the runner's call alone: the parts that run and the float transforms around them).

Writes ``slimming.md``, ``slimming.json`` and ``slimming.png`` to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from benchmarks.latency import SAMPLE
from distill import checkpoint
from distill.dsp import apply_mask, istft, stft
from distill.evaluate import EvalSet, SetError, enhancer, parse_sets, read_eval_sets, score
from distill.models import cost, gated_cost
from distill.models.gated_crn import GatedCRN, parse_gates
from runtime import report
from runtime.audio import AudioError, load
from runtime.backends import GATE_MODES, open_runner
from runtime.bundle import Bundle, BundleError
from runtime.engine import Engine

METRICS = ("pesq", "estoi", "si_sdr", "dnsmos_ovrl")


def named(values: list[str], flag: str) -> dict[str, Path]:
    out = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"error: {flag} takes NAME=CHECKPOINT, got {v!r}")
        out[name] = Path(path)
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.slimming", description=__doc__.split("\n\n")[0])
    p.add_argument("--devset", action="append", default=[], metavar="[NAME=]DIR",
                   help="rendered test set (python -m distill.devset render / render-ood), named after its folder unless NAME= is given; "
                   "repeatable; needed by --gated and --static")  # fmt: skip
    p.add_argument("--gated", nargs="+", default=[], metavar="NAME=CKPT", help="gated checkpoints")
    p.add_argument("--static", nargs="*", default=[], metavar="NAME=CKPT[@GATES]",
                   help="static checkpoints to compare with; @0,1 marks a gated one trained with --fixed-gates 0,1")
    p.add_argument("--reference", metavar="NAME", help="a --static or --gated name every other system is compared with (MAC ratio, metric differences)")
    p.add_argument("--files", type=int, help="score this many files of each set, spread over it (default: all)")
    p.add_argument("--bundle", type=Path, help="gated bundle whose runtime per-frame time is measured")
    p.add_argument("--static-bundle", type=Path, help="plain bundle timed beside --bundle in the same rounds (the static student it should beat)")
    p.add_argument("--timing", default="litert/int8,onnxruntime/fp32", help="backend/precision pairs timed with --bundle")
    p.add_argument("--seconds", type=float, default=10.0, help="audio streamed per timing configuration and round")
    p.add_argument("--rounds", type=int, default=3, help="round-robin rounds of the timing configurations")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "slimming")
    args = p.parse_args(argv)
    args.gated = named(args.gated, "--gated")
    args.static = {name: fixed_gates(path) for name, path in named(args.static, "--static").items()}
    if args.static_bundle and not args.bundle:
        p.error("--static-bundle is timed beside --bundle; give it")
    if not args.gated and not args.static and not args.bundle:
        p.error("give --gated, --static or --bundle")
    if (args.gated or args.static) and not args.devset:
        p.error("--gated and --static are scored on --devset; give it")
    if args.reference and args.reference not in {**args.static, **args.gated}:
        p.error(f"--reference {args.reference} is not one of the --static or --gated names")
    return args


def fixed_gates(path: Path) -> tuple[Path, tuple[float, ...] | None]:
    """``CKPT@0,1`` -> (CKPT, (0., 1.)); a plain path has no fixed gates."""
    ckpt, sep, gates = str(path).rpartition("@")
    if not sep:
        return path, None
    try:
        return Path(ckpt), parse_gates(gates)
    except ValueError as e:
        raise SystemExit(f"error: {e} (CKPT@0,1)") from None


def gated_enhancer(model: GatedCRN, gates: str | tuple[float, ...], usage: list, macs: dict):
    """Offline enhancement with the gates from the policy ("policy"), all "on", or a fixed
    pattern (one 0/1 per branch); appends each file's executed MACs per frame to ``usage``,
    counted as the runtime counts them."""
    K = len(model.branches)
    branch = torch.tensor(macs["branches"], dtype=torch.float64)
    pattern = torch.ones(K) if gates == "on" else None if gates == "policy" else torch.tensor(gates)

    def run(noisy: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(noisy)[None]
        spec = stft(x, model.config.stft)  # [1, T, F, 2]
        forced = None if pattern is None else pattern.expand(1, spec.shape[1], K)  # [1, T, K]
        with torch.no_grad():
            mask, used, _ = model(spec, gates=forced)  # used: [1, T, K]
        usage.append(float(macs["trunk"] + macs["policy"] + (used[0].double().mean(0) * branch).sum()))
        return istft(apply_mask(spec, mask), model.config.stft, x.shape[-1])[0].numpy()

    return run


def load_models(args) -> tuple[dict, dict]:
    """Every system's model, checked before anything is scored: static (with its fixed gates or
    None) and gated."""
    static, gated = {}, {}
    for name, (path, pattern) in args.static.items():
        model = checkpoint.load_model(path).eval()
        if isinstance(model, GatedCRN) and pattern is None:
            raise SystemExit(f"error: {path}: a gated model is static only with fixed gates (NAME=CKPT@0,1); other gated models go to --gated")
        if not isinstance(model, GatedCRN) and pattern is not None:
            raise SystemExit(f"error: {path} has no gates to fix; drop the @{','.join(f'{g:g}' for g in pattern)}")
        if pattern is not None and len(pattern) != len(model.branches):
            raise SystemExit(f"error: {path} has {len(model.branches)} branches; give one fixed gate per branch, got {len(pattern)}")
        static[name] = (path, model, pattern)
    for name, path in args.gated.items():
        model = checkpoint.load_model(path).eval()
        if not isinstance(model, GatedCRN):
            raise SystemExit(f"error: {path} is not a gated model; pass it with --static")
        gated[name] = (path, model)
    return static, gated


def quality(static: dict, gated: dict, ds: EvalSet, label: str) -> tuple[dict, dict]:
    """Scores on one set and mean executed MACs per frame of every system; per-file MACs of gated ones."""
    systems, per_file_macs = {}, {}
    for name, (path, model, pattern) in static.items():
        if pattern is None:
            s = ds.summarise(score(ds.items, enhancer(model), True, f"{label}: {name}"))
            systems[name] = {"kind": "static", "checkpoint": str(path), "macs_per_frame": cost(model).macs_per_frame, **s}
            continue
        usage: list[float] = []
        macs = gated_cost(model)
        full = macs["trunk"] + macs["policy"] + sum(macs["branches"])
        s = ds.summarise(score(ds.items, gated_enhancer(model, pattern, usage, macs), True, f"{label}: {name}"))
        systems[name] = {"kind": "static", "checkpoint": str(path), "gates": list(pattern), "macs_per_frame": usage[0], "macs_all_on": full,
                         "mac_ratio": usage[0] / full, **s}  # fmt: skip
    for name, (path, model) in gated.items():
        macs = gated_cost(model)
        full = macs["trunk"] + macs["policy"] + sum(macs["branches"])
        for gates, system in (("on", f"{name} (all on)"), ("policy", name)):
            usage: list[float] = []
            s = ds.summarise(score(ds.items, gated_enhancer(model, gates, usage, macs), True, f"{label}: {system}"))
            per_file_macs[system] = dict(zip((key for key, _, _ in ds.items), usage))
            mean = float(np.mean(usage))
            systems[system] = {"kind": "gated", "gates": gates, "checkpoint": str(path), "macs_per_frame": mean, "macs_all_on": full, "mac_ratio": mean / full, **s}
    return systems, per_file_macs


def usage_table(systems: dict, per_file_macs: dict, noisy: dict, snr_of: dict) -> dict:
    """Per gated (policy) system: mean MAC ratio per input SNR and per tercile of input OVRL,
    with the rank correlation of the ratio against the input's OVRL."""
    out = {}
    for label, files in per_file_macs.items():
        if systems[label]["gates"] != "policy":
            continue
        full = systems[label]["macs_all_on"]
        ratio = {k: v / full for k, v in files.items()}
        by_snr = {}
        for k, r in ratio.items():
            if k in snr_of:
                by_snr.setdefault(snr_of[k], []).append(r)
        ovrl = {k: noisy["per_file"][k]["dnsmos_ovrl"] for k in ratio}
        keys = sorted(ratio, key=lambda k: ovrl[k])
        terciles = [keys[i * len(keys) // 3 : (i + 1) * len(keys) // 3] for i in range(3)]
        x, y = [ovrl[k] for k in keys], [ratio[k] for k in keys]
        varies = len(keys) > 2 and len(set(x)) > 1 and len(set(y)) > 1
        rho = float(spearmanr(x, y).statistic) if varies else float("nan")  # ties get average ranks
        out[label] = {
            "by_snr": {str(s): float(np.mean(v)) for s, v in sorted(by_snr.items())},
            "by_input_ovrl_tercile": [
                {"ovrl": [float(ovrl[t[0]]), float(ovrl[t[-1]])], "mac_ratio": float(np.mean([ratio[k] for k in t]))} for t in terciles if t
            ],
            "spearman_vs_input_ovrl": rho,
            "per_file": {k: {"mac_ratio": ratio[k], "input_ovrl": ovrl[k], "snr": snr_of.get(k)} for k in keys},
        }
    return out


class Timed:
    """A runner whose calls are timed: the model time of a frame, without the engine's STFT and
    overlap-add."""

    def __init__(self, runner):
        self.runner, self.times_ns = runner, []

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def __call__(self, frame, states):
        t0 = time.perf_counter_ns()
        out = self.runner(frame, states)
        self.times_ns.append(time.perf_counter_ns() - t0)
        return out


def timing(args) -> dict:
    """Per-frame engine and model time of the bundle with gates on, off and from the policy, and of
    the static bundle beside it. Each configuration streams the whole signal in turn, for
    ``--rounds`` rounds: round-robin blocks spread machine drift over all of them, and, unlike
    frame-by-frame interleaving, do not evict one configuration's weights from the cache between
    its frames (which would hide what skipping a branch saves)."""
    bundle = Bundle(args.bundle)
    if bundle.gating is None:
        raise BundleError(f"{args.bundle}: not a gated bundle; --bundle needs one (export a gated checkpoint)")
    static = Bundle(args.static_bundle) if args.static_bundle else None
    if static is not None and (static.gating is not None or static.chain is not None):
        raise BundleError(f"{args.static_bundle}: not a plain bundle; --static-bundle takes a static student's bundle (runtime/bundles/default)")
    engines = {}
    for pair in args.timing.split(","):
        backend, _, precision = pair.strip().partition("/")
        for gates in GATE_MODES:
            engines[f"{backend}/{precision}/{gates}"] = Engine(bundle, Timed(open_runner(bundle, backend, precision, 1, gates)))
        if static is not None:
            engines[f"{backend}/{precision}/static"] = Engine(static, Timed(open_runner(static, backend, precision, 1)))
    x = load(SAMPLE, bundle.signal["sample_rate"])
    n = int(args.seconds * bundle.signal["sample_rate"])
    signal = np.tile(x, -(-n // len(x)))[:n]
    times = {name: [] for name in engines}
    model = {name: [] for name in engines}
    for e in engines.values():  # warm-up: caches, allocator, XNNPACK setup
        e.run(signal[: bundle.signal["sample_rate"]])
    for _ in range(args.rounds):
        for name, e in engines.items():
            e.reset()
            e.runner.times_ns.clear()
            e.run(signal)
            times[name].append(e.frame_times_us().copy())
            model[name].append(np.array(e.runner.times_ns) / 1e3)
    rows = {}
    for name, t in times.items():
        backend, precision, gates = name.split("/")
        u = engines[name].runner.usage()  # of the last round: one pass over the signal (None: a static bundle)
        macs = u["macs_per_frame"] if u else engines[name].macs_per_frame
        rows[name] = {"gates": gates, "engine_p50_us": float(np.median(np.concatenate(t))), "round_p50_us": [float(np.median(r)) for r in t],
                      "model_p50_us": float(np.median(np.concatenate(model[name]))), "model_round_p50_us": [float(np.median(r)) for r in model[name]],
                      "macs_per_frame": macs, "mac_ratio": u["mac_ratio"] if u else None, "branch_usage": u["branch_usage"] if u else None}  # fmt: skip
    for name, r in rows.items():
        pair = name.rsplit("/", 1)[0]
        if r["gates"] != "static":
            r["ratio_to_all_on"] = r["engine_p50_us"] / rows[pair + "/on"]["engine_p50_us"]
        if r["gates"] != "static" and f"{pair}/static" in rows:
            r["model_ratio_to_static"] = r["model_p50_us"] / rows[f"{pair}/static"]["model_p50_us"]
    return {"bundle": str(args.bundle), "static_bundle": str(args.static_bundle) if static else None, "seconds": args.seconds,
            "rounds": args.rounds, "audio": SAMPLE.name, "machine": report.machine(), "rows": rows}  # fmt: skip


def set_markdown(name: str, result: dict, reference: str | None) -> list[str]:
    """The quality and gate-usage tables of one set."""
    systems, noisy = result["systems"], result["noisy"]
    lines = [
        f"## {name}: {result['dir']} ({result['files']} files)",
        "",
        "Offline. MACs: per frame, executed (gated: trunk + policy + open branches).",
        "",
        "| system | MACs/frame (k) | PESQ | ESTOI | SI-SDR (dB) | OVRL |",
        "|---|---:|---:|---:|---:|---:|",
        f"| (noisy input) | | {noisy['pesq']:.3f} | {noisy['estoi']:.3f} | {noisy['si_sdr']:.2f} | {noisy['dnsmos_ovrl']:.3f} |",
    ]
    for n, s in systems.items():
        m = s["mean"]
        share = f" ({s['mac_ratio']:.0%})" if "mac_ratio" in s else ""
        lines.append(f"| {n} | {s['macs_per_frame'] / 1e3:.1f}{share} | {m['pesq']:.3f} | {m['estoi']:.3f} | {m['si_sdr']:.2f} | {m['dnsmos_ovrl']:.3f} |")
    against = [(n, s, systems.get(f"{n} (all on)")) for n, s in systems.items() if s.get("gates") == "policy"]
    if against:
        lines += ["", "Each gated model against its own full width (all on):", "",
                  "| system | executed / all-on MACs | ΔPESQ | ΔSI-SDR (dB) |", "|---|---:|---:|---:|"]  # fmt: skip
        for n, s, full in against:
            if full is not None:
                d = {k: s["mean"][k] - full["mean"][k] for k in ("pesq", "si_sdr")}
                lines.append(f"| {n} | {s['mac_ratio']:.0%} | {d['pesq']:+.3f} | {d['si_sdr']:+.2f} |")
    ref = systems.get(reference or "")
    if ref is not None:
        lines += ["", f"Every system against `{reference}`:", "",
                  "| system | MACs / reference | ΔPESQ | ΔESTOI | ΔSI-SDR (dB) | ΔOVRL |", "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
        for n, s in systems.items():
            if n != reference:
                d = {k: s["mean"][k] - ref["mean"][k] for k in METRICS}
                lines.append(f"| {n} | {s['macs_per_frame'] / ref['macs_per_frame']:.0%} | {d['pesq']:+.3f} | {d['estoi']:+.3f} | "
                             f"{d['si_sdr']:+.2f} | {d['dnsmos_ovrl']:+.3f} |")  # fmt: skip
    for n, u in result["usage"].items():
        lines += ["", f"Executed MACs / all-on MACs of `{n}` by input SNR (dB): "
                  + ", ".join(f"{s}: {r:.2f}" for s, r in u["by_snr"].items())
                  + "; by input OVRL tercile (worst first): "
                  + ", ".join(f"{t['ovrl'][0]:.2f}-{t['ovrl'][1]:.2f}: {t['mac_ratio']:.2f}" for t in u["by_input_ovrl_tercile"])
                  + (f"; Spearman rho against input OVRL {u['spearman_vs_input_ovrl']:+.2f}." if np.isfinite(u["spearman_vs_input_ovrl"])
                     else "; usage is the same for every file, so it has no rank correlation with input OVRL.")]  # fmt: skip
    return lines


def markdown(result: dict) -> str:
    lines = []
    for name, s in result.get("sets", {}).items():
        lines += ([""] if lines else []) + set_markdown(name, s, result.get("reference"))
    t = result.get("timing")
    if t:
        static = f" beside the static `{t['static_bundle']}`" if t.get("static_bundle") else ""
        lines += [
            "",
            f"Runtime per-frame time of `{t['bundle']}`{static} on {t['machine']['cpu']} ({t['machine']['cores']} cores, 1 thread), "
            f"{t['seconds']:.0f} s of {t['audio']} per configuration and round, {t['rounds']} rounds round-robin; "
            "engine time per frame (STFT, the model, overlap-add) and model time (the runner's call: the parts that run and the "
            "float transforms around them):",
            "",
            "| backend/precision | gates | MACs/frame (k) | engine p50 (us) | p50 per round (us) | time / all on | model p50 (us) | "
            "model p50 per round (us) | model time / static | branch usage |",
            "|---|---|---:|---:|---|---:|---:|---|---:|---|",
        ]
        for name, r in t["rows"].items():
            rounds = ", ".join(f"{v:.0f}" for v in r["round_p50_us"])
            model = ", ".join(f"{v:.0f}" for v in r["model_round_p50_us"])
            on = f"{r['ratio_to_all_on']:.2f}" if "ratio_to_all_on" in r else ""
            static = f"{r['model_ratio_to_static']:.2f}" if "model_ratio_to_static" in r else ""
            lines.append(f"| {name.rsplit('/', 1)[0]} | {r['gates']} | {r['macs_per_frame'] / 1e3:.1f} | {r['engine_p50_us']:.0f} | {rounds} | {on} | "
                         f"{r['model_p50_us']:.0f} | {model} | {static} | {r['branch_usage'] or ''} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []  # one row of panels per set, then one for the timing
    for name, r in result.get("sets", {}).items():
        usage = [("snr", name), ("ovrl", name)] if r["usage"] else []
        rows.append([("quality", name, "pesq", "PESQ"), ("quality", name, "si_sdr", "SI-SDR (dB)"), *usage])
    if result.get("timing"):
        rows.append([("timing",)])
    cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(5 * cols, 4 * len(rows)), squeeze=False)
    for row, panels in zip(axes, rows):
        for ax in row[len(panels) :]:
            ax.set_visible(False)
        for ax, (kind, *what) in zip(row, panels):
            if kind == "quality":
                set_name, metric, label = what
                for name, s in result["sets"][set_name]["systems"].items():
                    x, y = s["macs_per_frame"] / 1e3, s["mean"][metric]
                    ax.scatter(x, y, marker="o" if s["kind"] == "gated" else "s")
                    ax.annotate(name, (x, y), fontsize=7)
                ax.set_xlabel("executed MACs per frame (k)")
                ax.set_ylabel(label)
                ax.set_title(f"{set_name}: {label} against compute")
            elif kind == "snr":
                for name, u in result["sets"][what[0]]["usage"].items():
                    ax.plot([float(s) for s in u["by_snr"]], list(u["by_snr"].values()), marker="o", label=name)
                ax.set_xlabel("input SNR (dB)")
                ax.set_ylabel("executed MACs / all on")
                ax.set_title(f"{what[0]}: gate usage against input SNR")
                ax.legend(fontsize=7)
            elif kind == "ovrl":
                for name, u in result["sets"][what[0]]["usage"].items():
                    pts = list(u["per_file"].values())
                    ax.scatter([p["input_ovrl"] for p in pts], [p["mac_ratio"] for p in pts], s=10, label=name)
                ax.set_xlabel("DNSMOS OVRL of the noisy input")
                ax.set_ylabel("executed MACs / all on")
                ax.set_title(f"{what[0]}: gate usage against input quality")
                ax.legend(fontsize=7)
            else:
                timed = result["timing"]["rows"]
                names = list(timed)
                y = np.arange(len(names))
                ax.barh(y - 0.2, [timed[n]["engine_p50_us"] for n in names], 0.4, label="engine")
                ax.barh(y + 0.2, [timed[n]["model_p50_us"] for n in names], 0.4, label="model")
                ax.set_yticks(y, names, fontsize=7)
                ax.set_xlabel("time per frame, p50 (us)")
                ax.set_title("runtime time: gates on / off / policy" + (", static" if result["timing"].get("static_bundle") else ""))
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    result: dict = {}
    try:
        sets = parse_sets(args.devset, "--devset")
        static, gated = load_models(args)  # bad checkpoints are refused before anything runs
        data = read_eval_sets(sets, args.files) if args.gated or args.static else {}
        if args.bundle:  # first: the timing should not share the machine with the scoring's leftovers
            result["timing"] = timing(args)
    except (SetError, AudioError, checkpoint.CheckpointError, BundleError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if data:
        result["reference"] = args.reference
        result["sets"] = {}
    for name, ds in data.items():
        noisy = ds.summarise(score(ds.items, None, True, f"{name}: noisy"))
        systems, per_file_macs = quality(static, gated, ds, name)
        usage = usage_table(systems, per_file_macs, noisy, ds.snr_of)
        result["sets"][name] = {"dir": str(sets[name]), "files": len(ds.items), "noisy": noisy["mean"], "systems": systems, "usage": usage}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "slimming.json").write_text(json.dumps(result, indent=1))
    md = markdown(result)
    (args.out / "slimming.md").write_text(md)
    plot(result, args.out / "slimming.png")
    print(md)
    print(f"wrote {args.out}/slimming.md, slimming.json, slimming.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
