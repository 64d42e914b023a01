"""Evaluate checkpoints on noisy/clean folders: PESQ (WB), ESTOI, SI-SDR, DNSMOS SIG/BAK/OVRL.

``python -m distill.evaluate --set dev=data/devset --set dev-ood=data/dev-ood --checkpoint a.pt [b.pt ...] --json results.json``
scores the noisy input and each checkpoint's offline enhancement of it, set by set (``--data DIR``
is one set named after its folder); ``--enhanced NAME=DIR`` scores files enhanced elsewhere (an
exported model, the streaming runtime). One table per set goes to stdout, overall, per input SNR
when the set has a ``meta.csv`` (as rendered by ``distill.devset``) and dry against reverberant
when that names a room per file (dev-ood).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from distill import need_torch

need_torch("train", __name__)  # before torch is imported: a runtime-only install gets one line naming the extra

import numpy as np
import torch
from tqdm import tqdm

from distill import checkpoint
from distill.data import paired_files
from distill.dsp import enhance
from distill.meco import load_enhancer
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


def _meta_rows(data: Path | None) -> list[dict[str, str]]:
    """The rows of a rendered dev set's meta.csv (none without one)."""
    meta = data / "meta.csv" if data else None
    if not meta or not meta.is_file():
        return []
    with meta.open() as f:
        return list(csv.DictReader(f))


def read_snrs(data: Path | None) -> dict[str, float]:
    """Input SNR per file name from a rendered dev set's meta.csv (empty without one)."""
    return {Path(r["file"]).stem: float(r["snr_db"]) for r in _meta_rows(data)}


def read_rooms(data: Path | None) -> dict[str, str]:
    """"dry" or "reverberant" per file name from the ``room`` column of a rendered set's meta.csv
    (dev-ood names a measured or simulated room, or "dry"); empty without one."""
    return {Path(r["file"]).stem: "dry" if r["room"] == "dry" else "reverberant" for r in _meta_rows(data) if r.get("room")}


class SetError(Exception):
    """A test set given on the command line that cannot be scored; the message says why."""


def parse_sets(values: list[str], flag: str) -> dict[str, Path]:
    """``NAME=DIR`` values, or a bare ``DIR`` named after its folder (as ``--data DIR`` and
    ``--devset DIR`` have always been given) -> {NAME: DIR}; every DIR holds noisy/ and clean/."""
    sets = {}
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep:
            name, folder = Path(value).resolve().name, value
        if not name.strip() or not folder:
            raise SetError(f"{flag} takes NAME=DIR or DIR, got {value!r}")
        if name in sets:
            raise SetError(f"{flag}: two sets are named {name!r}; name them apart with NAME=DIR")
        root = Path(folder)
        if not (root / "noisy").is_dir() or not (root / "clean").is_dir():
            raise SetError(f"{flag} {value}: no noisy/ and clean/ folders in {root}")
        sets[name] = root
    return sets


@dataclass
class EvalSet:
    """One test set, read: its (name, noisy, clean) items and what its meta.csv says of each file."""

    noisy: Path
    items: list[tuple[str, np.ndarray, np.ndarray]]
    snr_of: dict[str, float]
    room_of: dict[str, str]

    def summarise(self, per_file: dict[str, dict]) -> dict:
        return summarise(per_file, self.snr_of, self.room_of)


def read_eval_set(noisy_dir: Path, clean_dir: Path, meta_dir: Path | None, limit: int | None = None) -> EvalSet:
    items = read_set(noisy_dir, clean_dir, limit)
    if not items:
        raise SetError(f"{noisy_dir}: no readable noisy/clean pairs (files are matched by name in noisy/ and clean/)")
    return EvalSet(noisy_dir, items, read_snrs(meta_dir), read_rooms(meta_dir))


def read_eval_sets(sets: dict[str, Path], limit: int | None = None) -> dict[str, EvalSet]:
    """Every set of ``parse_sets``, read (``limit`` files of each, spread over it)."""
    return {name: read_eval_set(root / "noisy", root / "clean", root, limit) for name, root in sets.items()}


def enhancer(model):
    """Offline enhancement of one signal with a model's ``forward`` (or a chain's ``enhance``)."""
    offline = getattr(model, "enhance", None) or (lambda wav: enhance(model, wav))

    def run(noisy: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return offline(torch.from_numpy(noisy)[None])[0].numpy()

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


def summarise(per_file: dict[str, dict], snr_of: dict[str, float], room_of: dict[str, str] | None = None) -> dict:
    """Means of every metric overall, per input SNR and, given ``room_of``, dry against reverberant."""
    names = sorted(per_file)
    metrics = [m for m in METRICS if m in per_file[names[0]]]

    def means(sel: list[str]) -> dict[str, float]:
        return {m: float(np.nanmean([per_file[n][m] for n in sel])) for m in metrics}

    snrs = sorted({snr_of[n] for n in names if n in snr_of})
    out = {"mean": means(names), "by_snr": {f"{snr:g}": means([n for n in names if snr_of.get(n) == snr]) for snr in snrs}}
    if room_of:
        groups = {kind: [n for n in names if room_of.get(n) == kind] for kind in ("dry", "reverberant")}
        out["by_room"] = {kind: means(sel) for kind, sel in groups.items() if sel}
    out["per_file"] = per_file
    return out


def table(systems: dict[str, dict], key=lambda s: s["mean"]) -> str:
    """A Markdown table of ``key(system)`` (a dict of means); a system without them is left out."""
    rows = {name: key(s) for name, s in systems.items() if key(s) is not None}
    cols = [m for m in METRICS if m in next(iter(rows.values()))]
    lines = ["| system | " + " | ".join(HEADERS[m] for m in cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, means in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{means[m]:.3f}" if m in ("pesq", "estoi") else f"{means[m]:.2f}" for m in cols) + " |")
    return "\n".join(lines)


def report(name: str, data: EvalSet, systems: dict[str, dict]) -> str:
    """One set's tables: overall, per input SNR and dry against reverberant, where known."""
    noisy = systems["noisy"]
    parts = [f"## {name}: {len(data.items)} files from {data.noisy}", table(systems)]
    for snr in noisy["by_snr"]:
        parts += [f"input SNR {snr} dB", table(systems, key=lambda s, snr=snr: s["by_snr"].get(snr))]
    for kind in noisy.get("by_room", {}):
        files = sum(data.room_of.get(key) == kind for key, _, _ in data.items)
        parts += [f"{kind} ({files} files)", table(systems, key=lambda s, kind=kind: s["by_room"].get(kind))]
    return "\n\n".join(parts)


def score_enhanced(name: str, folder: Path, data: EvalSet, with_dnsmos: bool) -> dict[str, dict]:
    """Metrics per file of the files in ``folder`` named as the set's noisy files."""
    found, missing = {}, 0
    for key, noisy, clean in data.items:
        path = next((c for c in (folder / f"{key}.wav", folder / f"{key}.flac") if c.is_file()), None)
        if path is None:
            missing += 1
            continue
        try:
            est = load(path, SAMPLE_RATE)[: len(noisy)]
        except AudioError as e:
            tqdm.write(f"{name}: {e}; skipped")
            continue
        found[key] = all_metrics(np.pad(est, (0, len(noisy) - len(est))), clean, with_dnsmos)
    if missing:  # one line, not one per file: a folder may well hold the files of one set only
        tqdm.write(f"{name}: {missing} of the {len(data.items)} files from {data.noisy} have no enhanced file in {folder}; skipped")
    return found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m distill.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--set", action="append", dest="sets", default=[], metavar="NAME=DIR",
                   help="test set: a folder with noisy/ and clean/ (and optionally meta.csv); repeatable")  # fmt: skip
    p.add_argument("--data", action="append", dest="sets", metavar="DIR", help="a test set named after its folder (--set DIR)")
    p.add_argument("--noisy", type=Path, help="noisy folder of one more set, named after it (with --clean)")
    p.add_argument("--clean", type=Path, help="clean folder matching --noisy")
    p.add_argument("--checkpoint", nargs="*", default=[], type=Path, help="checkpoints to enhance with (offline forward)")
    p.add_argument("--enhanced", nargs="*", default=[], metavar="NAME=DIR", help="already-enhanced folders, named, files named as the noisy ones")
    p.add_argument("--json", type=Path, help="write all results (per set: per file, per SNR, means) here")
    p.add_argument("--save-enhanced", type=Path, help="write each checkpoint's outputs (of every set) to DIR/<checkpoint stem>/")
    p.add_argument("--no-dnsmos", action="store_true")
    p.add_argument("--limit", type=int, help="N files of each set, spread evenly over it (quick checks)")
    args = p.parse_args(argv)
    if (args.noisy is None) != (args.clean is None):
        p.error("--noisy and --clean go together")
    if not args.sets and args.noisy is None:
        p.error("give --set NAME=DIR (repeatable), --data DIR, or --noisy DIR and --clean DIR")
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be at least 1")
    try:
        if args.json and args.json.is_dir():
            raise AudioError(f"--json {args.json}: is a folder; give a file name")
        if args.save_enhanced and args.save_enhanced.exists() and not args.save_enhanced.is_dir():
            raise AudioError(f"--save-enhanced {args.save_enhanced}: is a file; give a folder")
        sets = parse_sets(args.sets, "--set")
        data = read_eval_sets(sets, args.limit)
        if args.noisy is not None:
            label = args.noisy.resolve().name
            if label in data:
                raise SetError(f"--noisy {args.noisy}: a set is already named {label!r}; give that one as --set NAME=DIR")
            data[label] = read_eval_set(args.noisy, args.clean, None, args.limit)
        stems = [ck.stem for ck in args.checkpoint]
        names = [ck.stem if stems.count(ck.stem) == 1 else f"{ck.parent.name}/{ck.stem}" for ck in args.checkpoint]
        models = {name: load_enhancer(ck) for name, ck in zip(names, args.checkpoint)}
        enhanced_dirs = {}
        for item in args.enhanced:
            name, sep, d = item.partition("=")
            if not sep or not Path(d).is_dir():
                raise AudioError(f"--enhanced wants NAME=DIR with an existing folder, got {item!r}")
            enhanced_dirs[name] = Path(d)
        if args.save_enhanced or enhanced_dirs:  # one folder per system holds the files of every set
            seen = {}
            for label, ds in data.items():
                for key, _, _ in ds.items:
                    if seen.setdefault(key, label) != label:
                        raise SetError(f"sets {seen[key]} and {label} both have a file {key}, which one enhanced folder cannot hold twice; "
                                       "score them one at a time")
    except (AudioError, SetError, checkpoint.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with_dnsmos = not args.no_dnsmos
    out = {"sets": {}}
    for label, ds in data.items():
        results = {"noisy": score(ds.items, None, with_dnsmos, f"{label}: noisy")}
        for name, model in models.items():
            save = args.save_enhanced / name if args.save_enhanced else None  # name may hold a '/': nested folders
            results[name] = score(ds.items, enhancer(model), with_dnsmos, f"{label}: {name}", save)
        for name, folder in enhanced_dirs.items():
            results[name] = score_enhanced(name, folder, ds, with_dnsmos)
        systems = {name: ds.summarise(r) for name, r in results.items() if r}
        for name, ck in zip(models, args.checkpoint):
            systems[name]["checkpoint"] = str(ck)
        print("\n" + report(label, ds, systems) + "\n")
        out["sets"][label] = {"data": str(ds.noisy), "files": len(ds.items), "systems": systems}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
