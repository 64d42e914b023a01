"""Training throughput: ``python -m benchmarks.train_throughput [--clean DIR --noise DIR] [--steps 4]``.

Trains each preset for a few steps with ``distill.train`` and reads the throughput the trainer
logs (audio seconds and steps per second) over the second half of the steps, after warm-up: on
the CPU with one process and with two (torchrun, ``--threads`` each), and, where torch sees CUDA,
on one GPU in fp32 and in bf16. Synthetic mixtures unless ``--clean``/``--noise`` (folders or
indexes) are given. Writes ``train_throughput.json`` and ``train_throughput.md``.

Rows are measured one after another on one machine, so their ratios compare; absolute numbers
move with the machine and its load, which the results record (load average, cores).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ("student", "student-erb", "teacher-erb")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(args, preset: str, processes: int, device: str, precision: str, batch: int) -> dict:
    """One short training run; its throughput over the steps after the first ``args.steps``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        data = ["--synthetic"] if not args.clean else ["--clean", args.clean, "--noise", args.noise, "--rooms", str(args.rooms),
                                                       "--room-cache", args.room_cache, *(["--rir", args.rir] if args.rir else [])]  # fmt: skip
        train = ["-m", "distill.train", "--model", preset, *data, "--batch", str(batch), "--seconds", str(args.seconds), "--steps", str(100 * args.steps),
                 "--stop-at", str(2 * args.steps), "--log-every", str(args.steps), "--val-every", str(10**6), "--ckpt-every", str(10**6),
                 "--threads", str(args.threads), "--workers", str(args.workers), "--device", device, "--precision", precision, "--no-progress",
                 "--out", str(out)]  # fmt: skip
        launch = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)] if processes > 1 else []
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
        started = time.perf_counter()
        run = subprocess.run([sys.executable, *launch, *train], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        row = {"preset": preset, "device": device, "processes": processes, "precision": precision, "batch": batch, "wall_s": round(wall, 1)}
        if run.returncode != 0:
            lines = [x for x in run.stderr.splitlines() if x.strip()]
            return {**row, "error": next((x for x in lines if x.startswith("error:")), lines[-1] if lines else f"exit {run.returncode}")}
        with open(out / "train.csv") as f:
            logged = {int(r["step"]): r for r in csv.DictReader(f)}
        measured = logged[2 * args.steps]
        return {**row, "steps_per_s": float(measured["steps_per_s"]), "audio_s_per_s": float(measured["audio_s_per_s"])}


def plan(args, cuda: bool) -> list[tuple[int, str, int, str, str, int]]:
    """(repeat, preset, processes, device, precision, batch) of every run, side by side per preset."""
    runs = []
    for repeat in range(args.repeats):
        for preset in args.presets:
            runs += [(repeat, preset, n, "cpu", "fp32", args.batch) for n in args.processes]
            if cuda:
                runs += [(repeat, preset, 1, "cuda", p, args.cuda_batch) for p in ("fp32", "bf16")]
    return runs


def ratios(rows: list[dict]) -> None:
    """Each row's audio throughput against its baseline measured beside it: one CPU process, or
    fp32 on the GPU (the row of the same preset and repeat)."""
    base = {}
    for r in rows:
        key = (r["preset"], r["device"], r["repeat"])
        if "audio_s_per_s" in r and ((r["device"] == "cpu" and r["processes"] == 1) or (r["device"] == "cuda" and r["precision"] == "fp32")):
            base[key] = r["audio_s_per_s"]
    for r in rows:
        b = base.get((r["preset"], r["device"], r["repeat"]))
        r["ratio"] = round(r["audio_s_per_s"] / b, 2) if b and "audio_s_per_s" in r else None


def markdown(result: dict) -> str:
    m, s = result["machine"], result["settings"]
    shown = list(result["argv"])
    if "--note" in shown:  # printed below the table instead
        del shown[shown.index("--note") : shown.index("--note") + 2]
    lines = [
        "# Training throughput",
        "",
        f"`{shlex.join(['python', '-m', 'benchmarks.train_throughput', *shown])}`",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, load average {m['load_before'][0]:.2f} before the runs; torch {m['torch']}; "
        + (f"GPU: {m['cuda']}." if m["cuda"] else "no CUDA device (GPU rows not run)."),
        f"Data: {s['data']}; {s['seconds']:g} s segments; {s['threads']} thread(s) per process, {s['workers']} data-loading workers; "
        f"throughput over steps {s['steps'] + 1}-{2 * s['steps']} of each run (the first {s['steps']} warm up).",
        "Audio s/s: seconds of training audio per second of wall time, all processes together. Ratio: against one CPU process (CPU rows) or "
        "fp32 (GPU rows), measured beside it.",
        "",
        "| preset | device | processes | precision | batch | steps/s | audio s/s | ratio | run wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['preset']} | {r['device']} | {r['processes']} | {r['precision']} | {r['batch']} | failed: {r['error']} | | | {r['wall_s']} |")
            continue
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        lines.append(f"| {r['preset']} | {r['device']} | {r['processes']} | {r['precision']} | {r['batch']} | {r['steps_per_s']:.3f} | "
                     f"{r['audio_s_per_s']:.1f} | {ratio} | {r['wall_s']} |")  # fmt: skip
    if result["note"]:
        lines += ["", result["note"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=list(PRESETS), help="model presets to train")
    p.add_argument("--steps", type=int, default=4, help="steps measured, after as many warm-up steps")
    p.add_argument("--batch", type=int, default=8, help="mixtures per step on the CPU (all processes together)")
    p.add_argument("--cuda-batch", type=int, default=32, help="mixtures per step on the GPU")
    p.add_argument("--seconds", type=float, default=2.0, help="segment length")
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="CPU process counts")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--workers", type=int, default=0, help="data-loading workers per process")
    p.add_argument("--repeats", type=int, default=1, help="measure every row this many times, in turn")
    p.add_argument("--clean", help="clean speech folder or index (default: synthetic mixtures)")
    p.add_argument("--noise", help="noise folder or index")
    p.add_argument("--rir", help="room impulse responses, folder or index")
    p.add_argument("--rooms", type=int, default=200, help="simulated rooms (real data)")
    p.add_argument("--room-cache", default="data/rooms", help="where simulated rooms are cached")
    p.add_argument("--no-cuda", action="store_true", help="CPU rows only")
    p.add_argument("--note", default="", help="a line for the Markdown table (e.g. what else ran on the machine)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train_throughput")
    args = p.parse_args(argv)
    if bool(args.clean) != bool(args.noise):
        p.error("--clean and --noise go together")
    if args.steps < 1 or any(args.batch % n for n in args.processes):
        p.error(f"--steps must be at least 1 and --batch {args.batch} a multiple of every --processes count")
    import torch

    cuda = torch.cuda.is_available() and not args.no_cuda
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "load_before": [round(x, 2) for x in os.getloadavg()], "torch": torch.__version__,
               "cuda": torch.cuda.get_device_name(0) if cuda else None}  # fmt: skip
    rows = []
    for repeat, *run in plan(args, cuda):
        row = {**measure(args, *run), "repeat": repeat}
        rows.append(row)
        print(json.dumps(row), flush=True)
    ratios(rows)
    result = {
        "argv": list(argv if argv is not None else sys.argv[1:]),
        "machine": machine,
        "settings": {"data": "synthetic" if not args.clean else f"{args.clean} + {args.noise}", "seconds": args.seconds, "steps": args.steps,
                     "threads": args.threads, "workers": args.workers},  # fmt: skip
        "note": args.note,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_throughput.json").write_text(json.dumps(result, indent=1))
    (args.out / "train_throughput.md").write_text(markdown(result))
    print(f"wrote {args.out}/train_throughput.md and .json")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
