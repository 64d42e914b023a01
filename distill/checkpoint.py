"""Self-describing checkpoints: model name, config, weights and software versions, plus the
training state needed to resume. A checkpoint alone rebuilds its model."""
from __future__ import annotations

import os
import platform
from pathlib import Path

from distill import need_torch

need_torch("train", __name__)  # before torch is imported: a runtime-only install gets one line naming the extra

import numpy as np
import torch

from distill import __version__
from distill.models import MODELS, build, config_from_dict, config_to_dict, model_name

FORMAT = "tiny-denoise-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message says which file and why."""


def versions() -> dict[str, str]:
    return {
        "tiny_denoise": __version__,
        "torch": str(torch.__version__),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def save(path: str | os.PathLike, model: torch.nn.Module, **extra) -> None:
    """Write atomically (temporary file, then rename) so a kill never leaves a half-written file."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": {"name": model_name(model), "config": config_to_dict(model.config)},
        "state_dict": model.state_dict(),
        "versions": versions(),
        **extra,
    }
    _write(payload, path)


def _write(payload: dict, path: Path) -> None:
    """Atomically: a temporary file, then a rename, so a kill never leaves a half-written file."""
    tmp = path.with_name(f".{path.name}.part")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"{path}: cannot write ({e.strerror})") from None


def read(path: str | os.PathLike) -> dict:
    """Load and validate a checkpoint dictionary (on the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}); the file may be truncated or corrupt") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} file")
    version = payload.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError(f"{path}: no format version; the file is damaged")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {version} is newer than this code reads ({FORMAT_VERSION}); update tiny-denoise")
    spec = payload.get("model")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(spec.get("config"), dict):
        raise CheckpointError(f"{path}: no model description (name and config); the file is damaged")
    if spec["name"] not in MODELS:
        raise CheckpointError(f"{path}: unknown model {spec['name']!r}")
    if not isinstance(payload.get("state_dict"), dict):
        raise CheckpointError(f"{path}: no weights; the file is damaged")
    return payload


def load_model(path: str | os.PathLike) -> torch.nn.Module:
    """Rebuild the model stored in a checkpoint, in eval mode."""
    payload = read(path)
    spec = payload["model"]
    try:
        model = build(spec["name"], config_from_dict(spec["name"], spec["config"]))
        model.load_state_dict(payload["state_dict"])
    except (TypeError, ValueError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"{path}: weights do not fit the stored {spec['name']} config ({str(e).splitlines()[0]})") from None
    return model.eval()


def strip(src: str | os.PathLike, dst: str | os.PathLike, update: dict | None = None) -> dict:
    """Copy a training checkpoint without its optimiser and resume state: what a release ships.
    ``update`` replaces entries of the copy (e.g. a corrector's ``meco`` settings)."""
    payload = read(src)
    dst = Path(dst)
    if dst.is_dir() or not dst.parent.is_dir():
        raise CheckpointError(f"{dst}: " + ("is a folder; give a file name" if dst.is_dir() else f"folder {dst.parent} does not exist"))
    keep = {k: payload[k] for k in ("model", "state_dict", "versions", "train_args", "step", "cost", "best_val_sisdr", "repairs", "student", "meco") if k in payload}
    keep.update(update or {})
    _write({"format": FORMAT, "format_version": FORMAT_VERSION, **keep}, dst)
    return keep


def compact(src: str | os.PathLike, dst: str | os.PathLike) -> dict:
    """Copy a training checkpoint without the optimiser's moments: a resume state a third the size
    of ``last.pt`` for an Adam-trained model. Everything else a resume needs is kept (step,
    schedule, RNG, best score); ``distill.train --resume`` starts fresh moments from it under a
    short learning-rate re-warm-up, so the continued run is close to, not bit-equal with, one that
    never stopped. ``moments_reset_at`` records the step."""
    payload = read(src)
    # distill.train and distill.meco keep a scheduler and the RNG; distill.rosecd draws every batch
    # from (seed, step) and keeps its online weights beside the EMA
    if not ({"scheduler", "torch_rng"} <= payload.keys() or "online" in payload):
        raise CheckpointError(f"{src}: holds no training state to resume (a shipped or stripped checkpoint)")
    dst = Path(dst)
    if dst.is_dir() or not dst.parent.is_dir():
        raise CheckpointError(f"{dst}: " + ("is a folder; give a file name" if dst.is_dir() else f"folder {dst.parent} does not exist"))
    keep = {k: v for k, v in payload.items() if k != "optimizer"}
    if "optimizer" in payload:
        keep["moments_reset_at"] = payload["step"]
    _write(keep, dst)
    return keep


def flip_polarity(src: str | os.PathLike, dst: str | os.PathLike) -> dict:
    """Copy a checkpoint with its model's output negated (``negate_output``): same quality, the
    right sign. The copy records the repair in ``repairs``."""
    payload = read(src)
    model = load_model(src)
    if not hasattr(model, "negate_output"):
        raise CheckpointError(f"{src}: a {payload['model']['name']} model has no output layer to negate")
    model.negate_output()
    keep = {k: payload[k] for k in ("train_args", "step", "cost", "best_val_sisdr") if k in payload}
    repairs = list(payload.get("repairs", [])) + ["output polarity negated (python -m distill.checkpoint flip-polarity)"]
    save(dst, model, **keep, repairs=repairs)
    return {"model": payload["model"], **keep}


def main(argv=None) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m distill.checkpoint", description="Inspect, strip, compact or repair checkpoints.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("strip", help="drop optimiser/resume state (for shipping)")
    s.add_argument("src", type=Path)
    s.add_argument("dst", type=Path)
    c = sub.add_parser("compact", help="drop the optimiser's moments, keep the rest of the resume state (a smaller last.pt)")
    c.add_argument("src", type=Path)
    c.add_argument("dst", type=Path)
    f = sub.add_parser("flip-polarity", help="negate the model's output (repairs an inverted model)")
    f.add_argument("src", type=Path)
    f.add_argument("dst", type=Path)
    i = sub.add_parser("info", help="print what a checkpoint holds")
    i.add_argument("path", type=Path)
    args = p.parse_args(argv)
    try:
        if args.cmd == "strip":
            kept = strip(args.src, args.dst)
            print(f"{args.dst}: {kept['model']['name']} at step {kept.get('step', '?')}, {args.dst.stat().st_size / 1e6:.2f} MB")
        elif args.cmd == "compact":
            kept = compact(args.src, args.dst)
            print(f"{args.dst}: resume state at step {kept['step']} without optimiser moments, {args.dst.stat().st_size / 1e6:.2f} MB")
        elif args.cmd == "flip-polarity":
            if args.dst.resolve() == args.src.resolve():
                raise CheckpointError(f"{args.dst}: give a new file; the source is kept as it is")
            kept = flip_polarity(args.src, args.dst)
            print(f"{args.dst}: {kept['model']['name']} with its output negated")
        else:
            payload = read(args.path)
            model = load_model(args.path)
            from distill.models import cost

            print(f"model    {payload['model']['name']} {payload['model']['config']}")
            print(f"cost     {cost(model)}")
            print(f"step     {payload.get('step', '?')}")
            print(f"versions {payload.get('versions', '?')}")
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
