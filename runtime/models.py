"""Which bundle ``--model`` means: a shipped bundle by name (``default``, ``gated``, any folder under
``runtime/bundles/``) or a bundle folder by path; and the table ``--list-models`` prints."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

from runtime.bundle import MANIFEST, Bundle, BundleError

SHIPPED = Path(__file__).resolve().parent / "bundles"
DEFAULT = SHIPPED / "default"
SAMPLE = Path(__file__).resolve().parent / "sample" / "noisy.wav"  # real speech in noise, for benchmarks
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


def shipped() -> list[str]:
    """Names of the shipped bundles, ``default`` first."""
    names = sorted(p.name for p in SHIPPED.iterdir() if (p / MANIFEST).is_file()) if SHIPPED.is_dir() else []
    return sorted(names, key=lambda n: n != "default")


def _is_checkpoint(path: Path) -> bool:
    """torch.save writes a zip archive holding ``<name>/data.pkl``."""
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        return True
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/data.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def resolve(spec: str | os.PathLike) -> Path:
    """The bundle folder ``spec`` names: an existing path first, else a shipped bundle's name."""
    path = Path(spec)
    if path.is_dir():
        return path
    if path.is_file():
        if path.name == MANIFEST:
            raise BundleError(f"{path}: give the bundle's folder ({path.parent}), not its manifest")
        if _is_checkpoint(path):
            raise BundleError(
                f"{path}: is a PyTorch checkpoint, not a bundle; the runtime runs exported bundles: "
                f"python -m export --checkpoint {path} --out DIR, then --model DIR"
            )
        raise BundleError(f"{path}: is a file, neither a bundle folder nor a checkpoint; --model takes a bundle folder or a shipped model's name (see --list-models)")
    if str(spec) in shipped():
        return SHIPPED / str(spec)
    names = ", ".join(shipped()) or "none"
    raise BundleError(f"{path}: no such bundle folder or shipped model (shipped: {names}; see --list-models)")


def open_bundle(spec: str | os.PathLike | Bundle) -> Bundle:
    return spec if isinstance(spec, Bundle) else Bundle(resolve(spec))


def describe(bundle: Bundle) -> dict:
    """Size, cost and the quality its export measured, as the manifest records them."""
    m = bundle.manifest["model"]
    quality = bundle.manifest.get("verification", {}).get("quality", {})
    files = [e for e in bundle.files.values() if e.get("kind") in ("model", "part")]
    return {
        "params": m.get("params"),
        "macs_per_frame": m.get("macs_per_frame"),
        "mmacs_per_second": m.get("mmacs_per_second"),
        "kind": "gated" if bundle.gating is not None else "two-stage" if bundle.chain is not None else "plain",
        "files": sorted({f"{e['format']}/{e['precision']}" for e in files}),
        "quality": {k: v for k, v in quality.get("reference", {}).items() if isinstance(v, (int, float))},
        "quality_set": f"{quality['devset']}, {quality['files']} files" if {"devset", "files"} <= set(quality) else None,
    }


def listing() -> str:
    """One row per shipped bundle; a bundle that does not load says why in its row."""
    rows = []
    for name in shipped():
        try:
            d = describe(Bundle(SHIPPED / name))
        except BundleError as e:
            rows.append(f"| {name} | unusable: {e} | | | | | |")
            continue
        quality = ", ".join(f"{k} {v:.2f}" for k, v in d["quality"].items()) or "-"
        if d["quality_set"]:
            quality += f" ({d['quality_set']})"
        precisions = ", ".join(sorted({f.split("/")[1] for f in d["files"]}))
        rows.append(
            f"| {name} | {d['kind']} | {d['params'] / 1e3:.1f} k | {d['macs_per_frame'] / 1e3:.1f} k | {d['mmacs_per_second']:.1f} | {precisions} | {quality} |"
        )
    head = ["| model | kind | params | MACs/frame | MMAC/s | precisions | quality (fp32, as its export measured it) |", "|---|---|---:|---:|---:|---|---|"]
    return "\n".join(head + rows) + f"\n\nshipped in {SHIPPED}; pass a name or a folder to --model"
