"""KD ablation: the same students, mixtures, steps and seeds under each distillation method.

``python -m benchmarks.kd_ablation --data ../shared/data --teacher TEACHER.pt --devset dev=data/devset --devset dev-ood=data/dev-ood``

Trains every (student size, method, seed) with ``distill.train`` into ``OUT/runs/...``, skipping
finished runs and resuming interrupted ones (so the ablation can be spread over several sittings),
validating on the first ``--devset`` (and logging the second as dev-ood) every ``--val-every``
steps, so each run's ``val.csv`` is its curve; scores each on every ``--devset`` (PESQ, ESTOI,
SI-SDR, DNSMOS OVRL; overall and at -5 dB input SNR) next to the teachers' own scores, and writes
``OUT/results.md`` (a table per set), ``results.json``, ``results.png`` and ``commands.md``.

With ``--pool N`` (the default) every run of a seed trains on the same N mixtures, rendered once
with the teachers' outputs (``distill.pool``): the supervised baseline sees the same data as the
distilled runs, and methods differ only in their loss. ``dispatch-bb-NAME`` is DISPatch taught by
the black-box ``--bb-teacher NAME=TEACHER`` (a peer, DeepFilterNet3, a bundle or any checkpoint, a
generative one included: ``distill.teachers``) instead of ``--teacher``; ``--bb-teacher`` may be
given more than once, and ``dispatch-bb`` in ``--methods`` stands for one run per black-box teacher.
The teacher's name is in the run's folder, so a run is never resumed or scored under another teacher.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from distill import checkpoint, teachers, train
from distill.evaluate import EvalSet, SetError, enhancer, parse_sets, read_eval_sets, score
from runtime.audio import AudioError
from runtime.bundle import sha256

# The KD weight of each method puts its term at about the size of the supervised loss at the start
# of training (measured on one batch); they are not tuned on the results.
METHODS = {
    "none": [],
    "output": ["--kd", "output", "--kd-weight", "1.0"],
    "dispatch": ["--kd", "dispatch", "--kd-weight", "1.5"],
    "dfkd": ["--kd", "dfkd", "--kd-weight", "0.1"],
    "dispatch-mssp": ["--kd", "dispatch-mssp", "--kd-weight", "0.1"],
    "two-step": ["--kd", "two-step", "--kd-weight", "1.0", "--two-step-split", "0.3"],
    "dispatch-bb": ["--kd", "dispatch", "--kd-weight", "1.5"],
}
BB = "dispatch-bb"  # taught by a --bb-teacher: runs are named BB-<teacher name>
DEFAULT_BB = "ulunas"
METRICS = ("pesq", "estoi", "si_sdr", "dnsmos_ovrl")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.kd_ablation", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, type=Path, help="folder with clean/ and noise/")
    p.add_argument("--teacher", required=True, type=Path)
    p.add_argument("--devset", required=True, action="append", metavar="[NAME=]DIR",
                   help="rendered test set (python -m distill.devset render / render-ood), named after its folder unless NAME= is given; "
                   "repeatable: every run is scored on each, and validated on the first")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "kd_ablation")
    # UL-UNAS is the strongest peer on the 40 validation files of each set (SI-SDR dev / dev-ood: UL-UNAS
    # 12.31 / 6.44 dB, GTCRN 11.18 / 6.23, DeepFilterNet3 11.23 / 2.12: it keeps the rooms' reverberation)
    p.add_argument("--bb-teacher", action="append", metavar="[NAME=]TEACHER",
                   help=f"a black-box teacher of dispatch-bb-NAME (default: {DEFAULT_BB}); repeatable: {teachers.FORMS}. "
                   "NAME defaults to the peer's name or the checkpoint's folder")  # fmt: skip
    p.add_argument("--peers", default=teachers.PEERS_DIR, metavar="DIR", help="folder of the peer models (for --bb-teacher)")
    p.add_argument("--sizes", default="student-erb-30k")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--val-every", type=int, help="validation interval, steps (default: --steps / 10)")
    p.add_argument("--pool", type=int, default=4000, help="mixtures per seed's pool, shared by every method (0: new mixtures at every step)")
    p.add_argument("--pool-dir", type=Path, default=Path("data/pools"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--files", type=int, help="score this many files of each set, spread over it (default: all)")
    p.add_argument("--eval-only", action="store_true", help="score finished runs, train nothing")
    return p.parse_args(argv)


def bb_name(text: str) -> str:
    """The name a black-box teacher's runs are filed under: ``NAME=`` if given, else the peer's name,
    or the file's stem (its folder's name for a run's last.pt / best.pt)."""
    if "=" in text:
        return text.split("=", 1)[0]
    path = Path(text)
    return path.parent.name if path.suffix == ".pt" and path.stem in ("last", "best") else path.stem if path.suffix else path.name


def bb_teachers(given: list[str] | None) -> dict[str, str]:
    """``--bb-teacher`` values as name -> teacher; raises ValueError on a bad or repeated name."""
    found = {}
    for text in given or [DEFAULT_BB]:
        name, spec = bb_name(text), text.split("=", 1)[1] if "=" in text else text
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"--bb-teacher {text}: the name {name!r} must be letters, digits, '_', '.' or '-' (it names the run's folder); give NAME=TEACHER")
        if name in found:
            raise ValueError(f"--bb-teacher {text}: the name {name} is given twice; give NAME=TEACHER")
        found[name] = spec
    return found


def expand_methods(text: str, bb: dict[str, str]) -> list[str]:
    """``--methods`` with ``dispatch-bb`` as one run per black-box teacher; raises ValueError on an unknown one."""
    methods = []
    for m in (m.strip() for m in text.split(",") if m.strip()):
        if m == BB:
            methods += [f"{BB}-{name}" for name in bb]
        elif m in METHODS or m.removeprefix(BB + "-") in bb:
            methods.append(m)
        else:
            known = ", ".join([*METHODS, *(f"{BB}-{n}" for n in bb)])
            raise ValueError(f"unknown method {m}; choose from {known} (dispatch-bb-NAME needs --bb-teacher NAME=TEACHER)")
    return list(dict.fromkeys(methods))


def bb_used(methods: list[str]) -> list[str]:
    """The names of the black-box teachers whose runs are among ``methods``."""
    return [m.removeprefix(BB + "-") for m in methods if m.startswith(BB + "-")]


def train_args(args, size: str, method: str, seed: int, out: Path, val_sets: list[Path]) -> list[str]:
    base = [
        "--model", size, "--clean", str(args.data / "clean"), "--noise", str(args.data / "noise"),
        "--steps", str(args.steps), "--batch", str(args.batch), "--warmup", str(max(args.steps // 10, 1)),
        "--seed", str(seed), "--threads", str(args.threads), "--val-dir", str(val_sets[0]), "--val-files", "20",
        "--val-every", str(args.val_every or max(args.steps // 10, 1)), "--ckpt-every", "50", "--out", str(out), "--resume", "--no-progress",
    ]  # fmt: skip
    if len(val_sets) > 1:
        base += ["--val-ood", str(val_sets[1])]
    if (args.data / "rir").is_dir():
        base += ["--rir", str(args.data / "rir")]
    if args.pool:
        base += ["--pool", str(args.pool), "--pool-dir", str(args.pool_dir)]
    if method.startswith(BB + "-"):
        return base + ["--teacher", args.bb[method.removeprefix(BB + "-")], "--peers", str(args.peers)] + METHODS[BB]
    if METHODS[method]:
        base += ["--teacher", str(args.teacher)]
    return base + METHODS[method]


def finished(run: Path, steps: int) -> bool:
    last = run / "last.pt"
    return last.is_file() and checkpoint.read(last).get("step", 0) >= steps


def main(argv=None) -> int:
    args = parse_args(argv)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    try:
        args.bb = bb_teachers(args.bb_teacher)
        methods = expand_methods(args.methods, args.bb)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    used_bb = bb_used(methods)
    try:
        sets = parse_sets(args.devset, "--devset")
    except SetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    val_sets = list(sets.values())
    args.out.mkdir(parents=True, exist_ok=True)
    commands = []
    for size in sizes:
        for method in methods:
            for seed in args.seeds:
                run = args.out / "runs" / size / method / f"seed{seed}"
                argv_run = train_args(args, size, method, seed, run, val_sets)
                commands.append("python -m distill.train " + " ".join(argv_run))
                if args.eval_only or finished(run, args.steps):
                    continue
                print(f"\n== training {size} / {method} / seed {seed} -> {run}", flush=True)
                run.mkdir(parents=True, exist_ok=True)
                code = train.main(argv_run)
                if code:
                    print(f"error: run {run} stopped with exit code {code}; run the ablation again to resume it", file=sys.stderr)
                    return code
    driver = ["python -m benchmarks.kd_ablation", f"--data {args.data}", f"--teacher {args.teacher}"]
    driver += [f"--bb-teacher {name}={spec}" for name, spec in args.bb.items() if name in used_bb]
    driver += [f"--peers {args.peers}"] if used_bb else []
    driver += [f"--devset {d}" for d in args.devset]
    driver += [f"--sizes {args.sizes}", f"--methods {args.methods}", f"--steps {args.steps}", f"--batch {args.batch}", f"--pool {args.pool}"]
    driver += ["--seeds " + " ".join(map(str, args.seeds))] + ([f"--files {args.files}"] if args.files else [])
    (args.out / "commands.md").write_text(
        "# Commands of the KD ablation\n\n"
        f"Driver: `{' '.join(driver)}`\n\n"
        f"Teacher: `{args.teacher}` (sha256 `{sha256(args.teacher)}`, step {checkpoint.read(args.teacher).get('step')})\n\n"
        "Each run:\n\n```sh\n" + "\n".join(commands) + "\n```\n"
    )
    return evaluate(args, sizes, methods, sets)


def teacher_rows(args, methods) -> list[tuple[str, str]]:
    """(label, teacher) of every teacher the table scores: --teacher and the black-box teachers in use."""
    bb = [(f"bb-teacher {name}" + ("" if name == args.bb[name] else f" = {args.bb[name]}"), args.bb[name]) for name in bb_used(methods)]
    return [(f"teacher {args.teacher}", str(args.teacher))] + bb


def evaluate(args, sizes, methods, sets: dict[str, Path]) -> int:
    try:
        data = read_eval_sets(sets, args.files)  # spread: mixes utterances and SNRs
    except (SetError, AudioError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results = {name: {"dir": str(sets[name]), **score_set(args, sizes, methods, name, ds)} for name, ds in data.items()}
    summary = {"steps": args.steps, "batch": args.batch, "seeds": args.seeds, "sets": results}
    (args.out / "results.json").write_text(json.dumps(summary, indent=1))
    md = markdown(results, args)
    (args.out / "results.md").write_text(md)
    plot(results, args.out / "results.png")
    print(md)
    return 0


def score_set(args, sizes, methods, name: str, ds: EvalSet) -> dict:
    """The noisy input, the teachers and every finished run scored on one set, with the table over
    seeds; the scores are cached per set and number of files, so a rerun only scores what is new."""
    cache = args.out / "scores" / name / f"{len(ds.items)}-files"
    cache.mkdir(parents=True, exist_ok=True)

    def cached(system: str, make=None) -> dict:
        """Per-file scores of ``make()``'s enhancer (of the noisy input when None), computed once."""
        path = cache / f"{system.replace('/', '_')}.json"
        if not path.is_file():
            path.write_text(json.dumps(score(ds.items, make() if make else None, True, f"{name}: {system}")))
        return json.loads(path.read_text())

    noisy = ds.summarise(cached("noisy"))
    results = {"files": len(ds.items), "noisy": noisy, "teachers": {}, "runs": {}}
    for label, text in teacher_rows(args, methods):
        try:
            spec = teachers.resolve(text, args.peers)
            system = f"teacher-{spec.identity()[:16]}"  # another teacher under the same name is scored anew
            results["teachers"][label] = ds.summarise(cached(system, lambda: one_signal(spec.open())))
        except teachers.TeacherError as e:
            print(f"note: {label} left out of the {name} table: {e}")
    for size in sizes:
        for method in methods:
            for seed in args.seeds:
                run = args.out / "runs" / size / method / f"seed{seed}"
                if not finished(run, args.steps):
                    print(f"note: {run} is not finished; left out of the {name} table")
                    continue
                system = f"{size}/{method}/seed{seed}"
                results["runs"][system] = ds.summarise(cached(system, lambda: enhancer(checkpoint.load_model(run / "last.pt"))))
    results["table"] = aggregate(results, sizes, methods, args.seeds)
    return results


def one_signal(teacher: teachers.Teacher):
    """A teacher's batch ``enhance`` as the one-signal enhancer ``score`` calls."""
    return lambda noisy: teacher.enhance(noisy[None])[0]


def _at(summary: dict, scope: str) -> dict:
    """Means overall ("mean") or at one input SNR; NaN where the set has no SNR labels."""
    if scope == "mean":
        return summary["mean"]
    return summary.get("by_snr", {}).get(scope) or dict.fromkeys(METRICS, float("nan"))


def aggregate(results, sizes, methods, seeds) -> dict:
    """Mean and spread (population std) over seeds, overall and at -5 dB, per size and method."""
    table = {}
    for size in sizes:
        for method in methods:
            runs = [results["runs"].get(f"{size}/{method}/seed{s}") for s in seeds]
            runs = [r for r in runs if r]
            if not runs:
                continue
            row = {"seeds": len(runs)}
            for scope in ("mean", "-5"):
                for m in METRICS:
                    vals = [_at(r, scope)[m] for r in runs]
                    row[f"{scope}/{m}"] = (float(np.mean(vals)), float(np.std(vals)))
            table[f"{size}/{method}"] = row
    return table


def markdown(results: dict, args) -> str:
    head = ["PESQ", "ESTOI", "SI-SDR", "OVRL"]
    lines = [f"Mean ± spread over {len(args.seeds)} seeds; each run {args.steps} steps of {args.batch} x 4 s."]
    for name, r in results.items():
        lines += [
            "",
            f"## {name}: {r['dir']} ({r['files']} files)",
            "",
            "| student | method | " + " | ".join(head) + " | " + " | ".join(f"{h} @-5 dB" for h in head) + " |",
            "|---|---|" + "---:|" * 8,
        ]
        for label, summary in [("(noisy input)", r["noisy"]), *((f"({t})", v) for t, v in r.get("teachers", {}).items())]:
            cells = [f"{_at(summary, scope)[m]:.2f}" if m == "si_sdr" else f"{_at(summary, scope)[m]:.3f}" for scope in ("mean", "-5") for m in METRICS]
            lines.append(f"| {label} | | " + " | ".join(cells) + " |")
        for key, row in r["table"].items():
            size, method = key.split("/")
            cells = []
            for scope in ("mean", "-5"):
                for m in METRICS:
                    mu, sd = row[f"{scope}/{m}"]
                    cells.append(f"{mu:.2f} ± {sd:.2f}" if m == "si_sdr" else f"{mu:.3f} ± {sd:.3f}")
            lines.append(f"| {size} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """One row of bars per set and student size, one column per metric; dashed: the noisy input."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(name, size) for name, r in results.items() for size in sorted({k.split("/")[0] for k in r["table"]})]
    fig, axes = plt.subplots(len(rows), len(METRICS), figsize=(4 * len(METRICS), 3 * len(rows)), squeeze=False)
    for i, (name, size) in enumerate(rows):
        table, noisy = results[name]["table"], results[name]["noisy"]
        keys = [k for k in table if k.startswith(size + "/")]
        for j, m in enumerate(METRICS):
            ax = axes[i][j]
            mu = [table[k][f"mean/{m}"][0] for k in keys]
            sd = [table[k][f"mean/{m}"][1] for k in keys]
            ax.bar(range(len(keys)), mu, yerr=sd, capsize=3)
            ax.axhline(noisy["mean"][m], color="grey", linestyle="--", linewidth=1)
            ax.set_xticks(range(len(keys)), [k.split("/")[1] for k in keys], rotation=45, ha="right")
            lo = min(mu) - 2 * max(sd + [1e-3])
            ax.set_ylim(bottom=min(lo, noisy["mean"][m]) * 0.98 if m != "si_sdr" else None)
            ax.set_title(f"{name}, {size}: {m}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
