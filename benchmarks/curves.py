"""Validation curves of training runs: SI-SDR on dev and dev-ood against steps, from each run's
``val.csv``. ``python -m benchmarks.curves runs/teacher13 runs/student13 --out DIR`` writes
``curves.md`` (a table per run) and ``curves.png`` (one panel per set). ``--reference gtcrn``
(repeatable; any ``--teacher`` form of ``distill.train``: a peer, a bundle, a checkpoint) scores
that enhancer and the noisy input on the very validation files of the first run, drawn as
horizontal lines: where a curve crosses a peer's line on the same files."""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from types import SimpleNamespace

COLUMNS = {"val_sisdr": "dev", "ood_sisdr": "dev-ood"}  # val.csv column -> set shown


def read_curve(run: Path) -> dict[str, list[tuple[int, float]]]:
    """(step, SI-SDR) of every set a run logged. Rows of a resumed run may repeat a step: the last wins."""
    path = run / "val.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{run}: no val.csv (is it a training run folder?)")
    points: dict[str, dict[int, float]] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            for col, name in COLUMNS.items():
                if row.get(col):
                    points.setdefault(name, {})[int(row["step"])] = float(row[col])
    return {name: sorted(p.items()) for name, p in points.items()}


def table(name: str, curve: dict[str, list[tuple[int, float]]]) -> str:
    sets = list(curve)
    by_set = {s: dict(points) for s, points in curve.items()}
    steps = sorted({step for points in by_set.values() for step in points})
    lines = [f"### {name}", "", "| step | " + " | ".join(f"{s} SI-SDR (dB)" for s in sets) + " |", "|---:|" + "---:|" * len(sets)]
    for step in steps:
        cells = [f"{by_set[s][step]:.2f}" if step in by_set[s] else "" for s in sets]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reference_scores(run: Path, names: list[str], peers: str) -> dict[str, dict[str, float]]:
    """Mean SI-SDR (dB) of the noisy input and of each named enhancer on the validation files
    ``run`` used (its ``args.json``): {name: {set: dB}}. Raises TeacherError or OSError."""
    import numpy as np
    import torch

    from distill import teachers, train
    from distill.losses import si_sdr

    a = json.loads((run / "args.json").read_text())
    files = SimpleNamespace(val_files=a["val_files"], val_dir=None)
    enhancers = {name: teachers.resolve(name, peers).open() for name in names}
    scores: dict[str, dict[str, float]] = {}
    for col, set_name in COLUMNS.items():
        folder = a.get({"val_sisdr": "val_dir", "ood_sisdr": "val_ood"}[col])
        if not folder:
            continue
        val = train.validation_set(files, None, teachers.RATE, folder)
        clean = [torch.from_numpy(c)[None] for _, c in val]
        outputs = {"noisy input": [n for n, _ in val], **{k: [t.enhance(n[None])[0] for n, _ in val] for k, t in enhancers.items()}}
        for name, est in outputs.items():
            scores.setdefault(name, {})[set_name] = float(np.mean([si_sdr(torch.from_numpy(e)[None], c).item() for e, c in zip(est, clean)]))
    return scores


def reference_table(scores: dict[str, dict[str, float]], run: Path) -> str:
    sets = [s for s in COLUMNS.values() if any(s in v for v in scores.values())]
    lines = [f"### references, on {run.name}'s validation files", "", "| enhancer | " + " | ".join(f"{s} SI-SDR (dB)" for s in sets) + " |",
             "|---|" + "---:|" * len(sets)]  # fmt: skip
    lines += [f"| {name} | " + " | ".join(f"{v[s]:.2f}" if s in v else "" for s in sets) + " |" for name, v in scores.items()]
    return "\n".join(lines)


def plot(curves: dict[str, dict], path: Path, references: dict[str, dict[str, float]] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = [s for s in COLUMNS.values() if any(s in c for c in curves.values())]
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 3.6), squeeze=False)
    for ax, s in zip(axes[0], sets):
        for name, curve in curves.items():
            if s in curve:
                steps, values = zip(*curve[s])
                ax.plot(steps, values, marker="o", ms=3, label=name)
        for i, (name, v) in enumerate((references or {}).items()):
            if s in v:
                ax.axhline(v[s], color=f"C{len(curves) + i}", linestyle="--", linewidth=1, label=name)
        ax.set_title(f"{s}: validation SI-SDR")
        ax.set_xlabel("training step")
        ax.set_ylabel("SI-SDR (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.curves", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="training run folders (with val.csv)")
    p.add_argument("--out", type=Path, required=True, help="folder for curves.md and curves.png")
    p.add_argument("--no-plot", action="store_true", help="table only (no matplotlib needed)")
    p.add_argument("--reference", action="append", default=[], metavar="ENHANCER",
                   help="a peer (gtcrn, rnnoise, ...), bundle or checkpoint scored on the first run's validation files; repeatable")
    p.add_argument("--peers", default="../shared/peers", metavar="DIR", help="folder of the peer models (for --reference)")
    args = p.parse_args(argv)
    references = {}
    try:
        curves = {run.name: read_curve(run) for run in args.runs}
        if args.reference:
            from distill.teachers import TeacherError

            try:
                references = reference_scores(args.runs[0], args.reference, args.peers)
            except TeacherError as e:
                raise ValueError(str(e).replace("--teacher", "--reference")) from None
        args.out.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tables = [table(n, c) for n, c in curves.items()] + ([reference_table(references, args.runs[0])] if references else [])
    (args.out / "curves.md").write_text("\n\n".join(tables) + "\n")
    if not args.no_plot:
        plot(curves, args.out / "curves.png", references)
    print(f"wrote {args.out}/curves.md" + ("" if args.no_plot else " and curves.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
