"""Validation curves of training runs: SI-SDR on dev and dev-ood against steps, from each run's
``val.csv``. ``python -m benchmarks.curves runs/teacher13 runs/student13 --out DIR`` writes
``curves.md`` (a table per run) and ``curves.png`` (one panel per set)."""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

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


def plot(curves: dict[str, dict], path: Path) -> None:
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
    args = p.parse_args(argv)
    try:
        curves = {run.name: read_curve(run) for run in args.runs}
        args.out.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    (args.out / "curves.md").write_text("\n\n".join(table(n, c) for n, c in curves.items()) + "\n")
    if not args.no_plot:
        plot(curves, args.out / "curves.png")
    print(f"wrote {args.out}/curves.md" + ("" if args.no_plot else " and curves.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
