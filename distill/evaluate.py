"""Evaluate checkpoints on noisy/clean folders: PESQ (WB), ESTOI, SI-SDR, DNSMOS SIG/BAK/OVRL.

``python -m distill.evaluate --data data/devset --checkpoint a.pt [b.pt ...] --json results.json``
scores the noisy input and each checkpoint's offline enhancement of it; ``--enhanced NAME=DIR``
scores files enhanced elsewhere (an exported model, the streaming runtime). A table goes to stdout,
overall and per input SNR when the folder has a ``meta.csv`` (as rendered by ``distill.devset``).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from distill import checkpoint
from distill.data import paired_files
from distill.dsp import enhance
from distill.metrics import SAMPLE_RATE, all_metrics
from runtime.audio import AudioError, load, write

METRICS = ("pesq", "estoi", "si_sdr", "dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl")
HEADERS = {"pesq": "PESQ", "estoi": "ESTOI", "si_sdr": "SI-SDR", "dnsmos_sig": "SIG", "dnsmos_bak": "BAK", "dnsmos_ovrl": "OVRL"}


def read_set(noisy_dir: Path, clean_dir: Path, limit: int | None = None, sample_rate: int = SAMPLE_RATE) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, noisy, clean) of every readable pair, cut to a common length; ``limit`` takes that
    many pairs spread evenly over the set."""
    pairs = paired_files(noisy_dir, clean_dir)
    if limit and limit < len(pairs):
        pairs = [pairs[i] for i in np.linspace(0, len(pairs) - 1, limit).round().astype(int)]
    items = []
    for noisy_path, clean_path in pairs:
        try:
            noisy, clean = load(noisy_path, sample_rate), load(clean_path, sample_rate)
        except AudioError as e:
            tqdm.write(f"skipping {noisy_path.name}: {e}")
            continue
        n = min(len(noisy), len(clean))
        items.append((noisy_path.stem, noisy[:n], clean[:n]))
    return items


def read_snrs(data: Path | None) -> dict[str, float]:
    """Input SNR per file name from a rendered dev set's meta.csv (empty without one)."""
    meta = data / "meta.csv" if data else None
    if not meta or not meta.is_file():
        return {}
    with meta.open() as f:
        return {Path(r["file"]).stem: float(r["snr_db"]) for r in csv.DictReader(f)}


def enhancer(model):
    """Offline enhancement of one signal with a model's ``forward``."""

    def run(noisy: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return enhance(model, torch.from_numpy(noisy)[None])[0].numpy()

    return run


def score(items, enhance_fn=None, with_dnsmos: bool = True, desc: str = "evaluate", save: Path | None = None) -> dict[str, dict]:
    """Metrics per file of ``enhance_fn(noisy)`` (of the noisy input itself when None); with
    ``save``, the enhanced signals are also written there as ``<name>.wav``."""
    out = {}
    if save:
        save.mkdir(parents=True, exist_ok=True)
    for key, noisy, clean in tqdm(items, desc=desc, dynamic_ncols=True, leave=False):
        est = noisy if enhance_fn is None else enhance_fn(noisy)
        if save:
            write(save / f"{key}.wav", est, SAMPLE_RATE)
        out[key] = all_metrics(est, clean, with_dnsmos)
    return out


def summarise(per_file: dict[str, dict], snr_of: dict[str, float]) -> dict:
    names = sorted(per_file)
    mean = {m: float(np.nanmean([per_file[n][m] for n in names])) for m in METRICS if m in per_file[names[0]]}
    by_snr = {}
    for snr in sorted({snr_of[n] for n in names if n in snr_of}):
        sel = [n for n in names if snr_of.get(n) == snr]
        by_snr[f"{snr:g}"] = {m: float(np.nanmean([per_file[n][m] for n in sel])) for m in mean}
    return {"mean": mean, "by_snr": by_snr, "per_file": per_file}


def table(systems: dict[str, dict], key=lambda s: s["mean"]) -> str:
    cols = [m for m in METRICS if m in key(next(iter(systems.values())))]
    lines = ["| system | " + " | ".join(HEADERS[m] for m in cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, s in systems.items():
        lines.append(f"| {name} | " + " | ".join(f"{key(s)[m]:.3f}" if m in ("pesq", "estoi") else f"{key(s)[m]:.2f}" for m in cols) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m distill.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="folder with noisy/ and clean/ (and optionally meta.csv)")
    p.add_argument("--noisy", type=Path, help="noisy folder (instead of --data)")
    p.add_argument("--clean", type=Path, help="clean folder (instead of --data)")
    p.add_argument("--checkpoint", nargs="*", default=[], type=Path, help="checkpoints to enhance with (offline forward)")
    p.add_argument("--enhanced", nargs="*", default=[], metavar="NAME=DIR", help="already-enhanced folders, named")
    p.add_argument("--json", type=Path, help="write all results (per file, per SNR, means) here")
    p.add_argument("--save-enhanced", type=Path, help="write each checkpoint's outputs to DIR/<checkpoint stem>/")
    p.add_argument("--no-dnsmos", action="store_true")
    p.add_argument("--limit", type=int, help="only the first N files (quick checks)")
    args = p.parse_args(argv)
    noisy_dir = args.noisy or (args.data / "noisy" if args.data else None)
    clean_dir = args.clean or (args.data / "clean" if args.data else None)
    if noisy_dir is None or clean_dir is None:
        p.error("give --data DIR, or --noisy DIR and --clean DIR")
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be at least 1")
    try:
        if args.json and args.json.is_dir():
            raise AudioError(f"--json {args.json}: is a folder; give a file name")
        if args.save_enhanced and args.save_enhanced.exists() and not args.save_enhanced.is_dir():
            raise AudioError(f"--save-enhanced {args.save_enhanced}: is a file; give a folder")
        items = read_set(noisy_dir, clean_dir, args.limit)
        if not items:
            raise AudioError(f"{noisy_dir}: no readable noisy/clean pairs (files are matched by name in noisy/ and clean/)")
        stems = [ck.stem for ck in args.checkpoint]
        names = [ck.stem if stems.count(ck.stem) == 1 else f"{ck.parent.name}/{ck.stem}" for ck in args.checkpoint]
        models = {name: checkpoint.load_model(ck) for name, ck in zip(names, args.checkpoint)}
        enhanced_dirs = {}
        for item in args.enhanced:
            name, sep, d = item.partition("=")
            if not sep or not Path(d).is_dir():
                raise AudioError(f"--enhanced wants NAME=DIR with an existing folder, got {item!r}")
            enhanced_dirs[name] = Path(d)
    except (AudioError, checkpoint.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    snr_of = read_snrs(args.data)
    with_dnsmos = not args.no_dnsmos
    results = {"noisy": score(items, None, with_dnsmos, "noisy")}
    for name, model in models.items():
        save = args.save_enhanced / name if args.save_enhanced else None  # name may hold a '/': nested folders
        results[name] = score(items, enhancer(model), with_dnsmos, name, save)
    for name, d in enhanced_dirs.items():
        found = {}
        for key, noisy, clean in items:
            path = next((c for c in (d / f"{key}.wav", d / f"{key}.flac") if c.is_file()), None)
            if path is None:
                tqdm.write(f"{name}: no enhanced file for {key}; skipped")
                continue
            try:
                est = load(path, SAMPLE_RATE)[: len(noisy)]
            except AudioError as e:
                tqdm.write(f"{name}: {e}; skipped")
                continue
            found[key] = all_metrics(np.pad(est, (0, len(noisy) - len(est))), clean, with_dnsmos)
        results[name] = found

    systems = {name: summarise(r, snr_of) for name, r in results.items() if r}
    print(f"\n{len(results['noisy'])} files from {noisy_dir}\n")
    print(table(systems))
    if snr_of:
        for snr in next(iter(systems.values()))["by_snr"]:
            print(f"\ninput SNR {snr} dB")
            print(table(systems, key=lambda s, snr=snr: s["by_snr"][snr]))
    if args.json:
        out = {"data": str(noisy_dir), "files": len(results["noisy"]), "systems": systems}
        for name, ck in zip(models, args.checkpoint):
            out["systems"][name]["checkpoint"] = str(ck)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
