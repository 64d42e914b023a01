"""A fixed pool of training mixtures, rendered once with a teacher's outputs and kept on disk.

``distill.train --pool N`` trains on N mixtures drawn once from its data source (the same mixer,
augmentation and seed as on-the-fly training) instead of new ones at every step, and with
``--teacher`` on the teacher's enhanced outputs of them, rendered once too: a black-box teacher
(a bundle, a peer, DeepFilterNet3) then costs nothing per training step, and methods compared on
one pool differ only in their loss (``--pool`` without ``--teacher`` trains the supervised
baseline on the same mixtures). ``python -m distill.pool render`` renders a pool ahead of
training, from the training command's own options.

On disk, ``POOL_DIR/<key>/``:

- ``pool.json``: the pool's definition and, for the mixtures and for each teacher, every shard's
  rows and sha256;
- ``mix-00000.npy``: a shard of up to ``SHARD`` mixtures, float16 ``[rows, 2, L]`` (noisy, clean);
- ``<teacher>-00000.npy``: that teacher's aligned outputs of those mixtures, float16 ``[rows, L]``,
  named by the first 16 hex digits of the teacher's identity (``distill.teachers.Spec.identity``).

``key`` is the first 16 hex digits of the sha256 of the definition: the data files (names,
lengths, rates), the mixing and augmentation settings, the rooms (their impulse responses), the
seed, the segment length and sample rate, the shard size and the format. Another definition is
another folder, so nothing of an earlier pool is overwritten. Shard ``k`` holds the first rows of
the sampler's batch ``k`` of a random stream training never draws from; a batch's first rows do
not depend on its size, so a pool of N mixtures is the start of any larger one and a larger
``--pool`` renders only what it adds.

Opening a pool checks every shard's sha256; a missing, damaged or short shard is rendered again,
with a warning naming it. Rendering goes shard by shard, each written atomically and recorded in
``pool.json`` at once, so an interrupted render continues where it stopped; a lock keeps two
renders of one pool apart.

Training draws step ``s``'s batch of ``B`` as positions ``s*B .. s*B+B-1`` of a sequence of epochs,
each a permutation of the pool seeded by ``(seed, epoch)``: every mixture once per epoch, every
batch a function of ``(seed, step)``.
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import io
import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np

from distill.data import MixtureSampler, PairedSampler, SyntheticSampler
from runtime.bundle import sha256

log = logging.getLogger("distill.pool")

FORMAT = "tiny-denoise-pool"
VERSION = 1
SHARD = 64  # mixtures per file: the unit of rendering, checking and resuming
STREAM = 3  # the samplers' random stream pools draw from (0: training, 1: validation, 2: metric-guided pools)
ORDER = 5  # the random stream of the epochs' permutations
DTYPE = "float16"  # half the disk of float32; its 11-bit mantissa keeps every sample within -66 dB of itself
INDEX = "pool.json"


class PoolError(ValueError):
    """A pool that cannot be used or made; the message says why and what to do."""


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _files(folder) -> dict:
    listing = [(e.name, e.frames, e.sample_rate) for e in folder.entries]
    return {"files": len(listing), "sha256": _digest(listing)}


def _rooms(bank) -> str | None:
    """sha256 of the room bank's impulse responses (measured, then simulated speech/noise pairs)."""
    if bank is None:
        return None
    h = hashlib.sha256()
    for rir in [*bank.measured, *(r for pair in bank.simulated for r in pair)]:
        h.update(np.ascontiguousarray(rir, np.float32).tobytes())
    return h.hexdigest()


def data_definition(sampler) -> dict:
    """What the sampler draws from: the files (names, lengths, rates), augmentation and rooms."""
    if isinstance(sampler, SyntheticSampler):
        return {"kind": "synthetic"}
    if isinstance(sampler, PairedSampler):
        pairs = [(e.name, e.frames, e.sample_rate, c.name, c.frames, c.sample_rate) for e, c in sampler.pairs]
        return {"kind": "paired", "pairs": len(pairs), "sha256": _digest(pairs)}
    if isinstance(sampler, MixtureSampler):
        return {"kind": "mixture", "clean": _files(sampler.clean), "noise": _files(sampler.noise), "augment": asdict(sampler.augment),
                "rooms": _rooms(sampler.rooms)}  # fmt: skip
    raise PoolError(f"a pool cannot be drawn from a {type(sampler).__name__}")


def definition(sampler, seed: int) -> dict:
    return {"format": FORMAT, "version": VERSION, "seed": seed, "shard": SHARD, "dtype": DTYPE, "mix": asdict(sampler.config), "data": data_definition(sampler)}


def _sha256(path: Path) -> str | None:
    try:
        return sha256(path)
    except OSError:
        return None


def _write(path: Path, array: np.ndarray) -> str:
    """Write ``array`` as .npy atomically; returns the file's sha256."""
    buf = io.BytesIO()
    np.save(buf, array)
    data = buf.getvalue()
    tmp = path.with_name(f".{path.name}.part")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise PoolError(f"cannot write {path}: {e.strerror}") from None
    return hashlib.sha256(data).hexdigest()


class Pool:
    """The first ``size`` mixtures of ``sampler`` at ``seed``, in ``root/<key>``."""

    def __init__(self, root: str | os.PathLike, sampler, seed: int, size: int):
        if size < 1:
            raise PoolError(f"a pool holds at least one mixture, not {size}")
        self.sampler, self.seed, self.size = sampler, seed, size
        self.definition = json.loads(json.dumps(definition(sampler, seed)))  # as pool.json holds it: tuples become lists
        self.key = _digest(self.definition)[:16]
        self.dir = Path(root) / self.key
        self.length = sampler.config.length
        self.shards = [(k, min(SHARD, size - k * SHARD)) for k in range(-(-size // SHARD))]  # (number, rows used)

    def mix_path(self, k: int) -> Path:
        return self.dir / f"mix-{k:05d}.npy"

    def teacher_path(self, field: str, k: int) -> Path:
        return self.dir / f"{field}-{k:05d}.npy"

    def _index(self) -> dict:
        """pool.json, or a fresh one when it is missing, unreadable or of another definition."""
        fresh = {"format": FORMAT, "version": VERSION, "key": self.key, "definition": self.definition, "mixtures": {}, "teachers": {}}
        path = self.dir / INDEX
        if not path.exists():
            return fresh
        try:
            index = json.loads(path.read_text())
            if index.get("format") != FORMAT or index.get("version") != VERSION or index.get("definition") != self.definition:
                raise ValueError("not this pool's definition")
            if not isinstance(index.get("mixtures"), dict) or not isinstance(index.get("teachers"), dict):
                raise ValueError("no shard table")
        except (OSError, UnicodeDecodeError, ValueError) as e:
            log.warning("%s is damaged (%s): every shard is checked against a new index and rendered again", path, e)
            return fresh
        return index

    def _save(self, index: dict) -> None:
        path = self.dir / INDEX
        tmp = path.with_name(f".{INDEX}.part")
        tmp.write_text(json.dumps(index, indent=1))
        os.replace(tmp, path)

    def _good(self, table: dict, path: Path, k: int, rows: int) -> bool:
        """Shard ``k`` is recorded with at least ``rows`` rows and its file has the recorded sha256."""
        entry = table.get(f"{k:05d}")
        if entry is None:
            return False
        if entry.get("rows", 0) < rows:
            return False
        if _sha256(path) != entry.get("sha256"):
            log.warning("%s is missing or damaged (sha256 differs from %s): rendering it again", path, INDEX)
            return False
        return True

    @contextmanager
    def _locked(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"pool {self.key}: waiting for another process rendering it", file=sys.stderr)
                fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def ready(self, teacher=None, progress: bool = True, threads: int = 1) -> str | None:
        """Check every shard and render those missing or damaged: the mixtures, and with
        ``teacher`` (a ``distill.teachers.Spec``) its outputs, the teacher opened only if some
        must be rendered. Returns the file prefix of the teacher's outputs (None without one).
        Raises PoolError (an interrupted render too: what was rendered stays)."""
        from tqdm import tqdm

        try:
            with self._locked():
                index = self._index()
                field = entry = None
                if teacher is not None:
                    identity = teacher.identity()
                    field = identity[:16]
                    entry = index["teachers"].setdefault(field, {"teacher": teacher.text, "identity": identity, "shards": {}, "render_s": 0.0, "rendered": 0})
                todo = []
                for k, rows in self.shards:
                    mix_ok = self._good(index["mixtures"], self.mix_path(k), k, rows)
                    out_ok = field is None or (mix_ok and self._good(entry["shards"], self.teacher_path(field, k), k, rows))
                    if not (mix_ok and out_ok):
                        todo.append((k, rows, mix_ok))
                if not todo:
                    return field
                opened = None
                bar = tqdm(total=sum(r for _, r, _ in todo), desc=f"pool {self.key}", unit="mix", disable=not progress, dynamic_ncols=True)
                done = 0
                try:
                    for k, rows, mix_ok in todo:
                        if mix_ok:
                            mix = np.load(self.mix_path(k))[:rows]  # [rows, 2, L]
                        else:
                            noisy, clean = self.sampler.batch(k, rows, stream=STREAM)[:2]
                            mix = np.stack([noisy, clean], 1).astype(DTYPE)  # [rows, 2, L]
                            index["mixtures"][f"{k:05d}"] = {"rows": rows, "sha256": _write(self.mix_path(k), mix)}
                            self._save(index)
                        mix = mix.astype(np.float32)  # the teacher hears what training will read
                        if field is not None:
                            if opened is None:
                                opened = teacher.open(threads)
                                entry.update(opened.describe())
                                for w in getattr(opened, "warnings", []):
                                    print(f"warning: {w}", file=sys.stderr)
                            t0 = time.perf_counter()
                            out = opened.enhance(mix[:, 0])  # [rows, L]
                            entry["render_s"] += time.perf_counter() - t0
                            entry["rendered"] += rows
                            entry["shards"][f"{k:05d}"] = {"rows": rows, "sha256": _write(self.teacher_path(field, k), out.astype(DTYPE))}
                            self._save(index)
                        done += 1
                        bar.update(rows)
                except KeyboardInterrupt:
                    raise PoolError(f"rendering of pool {self.dir} interrupted after {done} of {len(todo)} shards; what was rendered is kept: "
                                    f"the same command continues") from None  # fmt: skip
                finally:
                    bar.close()
                return field
        except OSError as e:
            raise PoolError(f"pool {self.dir}: {e.strerror or e}") from None

    def summary(self, field: str | None) -> str:
        index = json.loads((self.dir / INDEX).read_text())
        text = f"pool {self.dir}: {self.size} mixtures of {self.length / self.sampler.config.sample_rate:g} s"
        if field is not None:
            e = index["teachers"][field]
            speed = f", rendered at {e['render_s'] / e['rendered']:.3f} s per mixture" if e["rendered"] else ""
            text += f" with the outputs of {e['about']}{speed}"
        return text


class PoolSampler:
    """Training batches from a ready pool: ``(noisy, clean)``, plus the teacher's outputs
    (``taught``) when it holds them. Other streams (validation) come from the pool's own sampler,
    so they stay mixtures training never sees."""

    def __init__(self, pool: Pool, field: str | None, seed: int):
        self.base, self.seed, self.size = pool.sampler, seed, pool.size
        self.config = pool.sampler.config
        self.fields = () if field is None else ("taught",)  # names of the batch's extra arrays, as train.Objective takes them
        self.files = [(pool.mix_path(k), None if field is None else pool.teacher_path(field, k)) for k, _ in pool.shards]
        self._maps = None
        self._orders = {}

    def __getstate__(self):  # data-loading workers open their own maps
        return {**self.__dict__, "_maps": None, "_orders": {}}

    def order(self, start: int, count: int) -> np.ndarray:
        """Pool rows at positions ``start .. start+count-1`` of the epochs' permutations. Shape: -> [count]"""
        pos = start + np.arange(count)
        epochs, within = np.divmod(pos, self.size)
        out = np.empty(count, np.int64)
        for e in np.unique(epochs):
            if e not in self._orders:
                self._orders = {e: np.random.default_rng([self.seed, ORDER, int(e)]).permutation(self.size)}  # one epoch at a time
            out[epochs == e] = self._orders[e][within[epochs == e]]
        return out

    def batch(self, step: int, size: int, stream: int = 0):
        if stream:
            return self.base.batch(step, size, stream)[:2]
        if self._maps is None:
            self._maps = [(np.load(m, mmap_mode="r"), None if t is None else np.load(t, mmap_mode="r")) for m, t in self.files]
        rows = [divmod(int(i), SHARD) for i in self.order(step * size, size)]
        mix = np.stack([self._maps[k][0][r] for k, r in rows]).astype(np.float32)  # [B, 2, L]
        if not self.fields:
            return mix[:, 0], mix[:, 1]
        return mix[:, 0], mix[:, 1], np.stack([self._maps[k][1][r] for k, r in rows]).astype(np.float32)


def sampler(base, size: int, seed: int, root, teacher=None, progress: bool = True) -> PoolSampler:
    """The pool of ``size`` mixtures of ``base`` (with ``teacher``'s outputs), made ready: what
    ``distill.train --pool`` trains on."""
    pool = Pool(root, base, seed, size)
    field = pool.ready(teacher, progress)
    print(pool.summary(field))
    return PoolSampler(pool, field, seed)


def listing(root: Path) -> list[str]:
    """One line per pool in ``root``: key, mixtures, teachers (as pool.json records them)."""
    lines = []
    for path in sorted(root.glob(f"*/{INDEX}")):
        try:
            index = json.loads(path.read_text())
            d = index["definition"]
            rows = sum(e["rows"] for e in index["mixtures"].values())
            teachers = ", ".join(f"{e.get('teacher')} ({sum(s['rows'] for s in e['shards'].values())})" for e in index["teachers"].values()) or "none"
            size = sum(f.stat().st_size for f in path.parent.glob("*.npy")) / 1e6
            lines.append(f"{path.parent.name}  {rows} mixtures of {d['mix']['seconds']:g} s, {d['data']['kind']} data, seed {d['seed']}; "
                         f"teacher outputs: {teachers}; {size:.0f} MB")  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError) as e:
            lines.append(f"{path.parent.name}  unreadable {INDEX} ({e}); it is rendered again when used")
    return lines


def score(folder: Path, checkpoints: list[Path], mixtures: int = 256) -> list[dict]:
    """SI-SDR against the clean targets on the first ``mixtures`` mixtures of the pool in ``folder``
    (those with speech): the noisy input, every teacher's stored outputs, and every checkpoint's
    offline enhancement. A KD loss on the pool can only pass on what a teacher does better than the
    student there, on the training material, which the dev sets do not show. Raises PoolError."""
    import torch

    from distill.checkpoint import CheckpointError, load_model
    from distill.dsp import enhance
    from distill.metrics import si_sdr

    try:
        index = json.loads((folder / INDEX).read_text())
        shards = sorted(index["mixtures"])
        outputs = {field: e for field, e in index["teachers"].items() if set(shards) <= set(e["shards"])}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise PoolError(f"{folder}: not a readable pool ({e}); give a folder with {INDEX}, as `python -m distill.pool list` shows them") from None
    models = {}
    for path in checkpoints:
        try:
            models[str(path)] = load_model(path)
        except CheckpointError as e:
            raise PoolError(str(e)) from None
    rows = {"noisy input": [], **{f"teacher {e['teacher']}": [] for e in outputs.values()}, **{f"checkpoint {n}": [] for n in models}}
    left = mixtures
    for k in shards:
        if left <= 0:
            break
        mix = np.load(folder / f"mix-{k}.npy")[:left].astype(np.float32)  # [rows, 2, L]
        left -= len(mix)
        speech = (mix[:, 1] ** 2).sum(-1) > 1e-6
        noisy, clean = mix[speech, 0], mix[speech, 1]  # [n, L] each
        taught = {f"teacher {e['teacher']}": np.load(folder / f"{field}-{k}.npy")[: len(mix)][speech].astype(np.float32) for field, e in outputs.items()}
        with torch.no_grad():
            est = {f"checkpoint {n}": enhance(m, torch.from_numpy(noisy)).numpy() for n, m in models.items()}  # [n, L] each
        for name, signals in {"noisy input": noisy, **taught, **est}.items():
            rows[name] += [si_sdr(e, c) for e, c in zip(signals, clean)]
    base = np.mean(rows["noisy input"])
    return [{"system": name, "mixtures": len(v), "mean": float(np.mean(v)), "median": float(np.median(v)), "gain": float(np.mean(v) - base)}
            for name, v in rows.items()]  # fmt: skip


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m distill.pool", description="Render and list pools of training mixtures with teacher outputs.")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("render", add_help=False,
                   help="render the pool a training command will use: give that command's options (python -m distill.train --help), --pool N included")  # fmt: skip
    ls = sub.add_parser("list", help="the pools in a folder")
    ls.add_argument("folder", nargs="?", default="data/pools", type=Path)
    sc = sub.add_parser("score", help="SI-SDR on a pool's mixtures: the noisy input, its teachers' outputs and checkpoints' enhancement")
    sc.add_argument("folder", type=Path, help="one pool: POOL_DIR/KEY")
    sc.add_argument("--checkpoint", nargs="*", default=[], type=Path, help="models to enhance the same mixtures with (students, say)")
    sc.add_argument("--mixtures", type=int, default=256, help="score the pool's first N mixtures (default: 256)")
    if argv[:1] == ["render"]:
        return render(argv[1:])
    args = p.parse_args(argv)
    if not args.folder.is_dir():
        print(f"error: {args.folder}: no such folder", file=sys.stderr)
        return 2
    if args.cmd == "score":
        try:
            rows = score(args.folder, args.checkpoint, args.mixtures)
        except PoolError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print("| system | mixtures | SI-SDR mean (dB) | median | gain over noisy |\n|---|---:|---:|---:|---:|")
        print("\n".join(f"| {r['system']} | {r['mixtures']} | {r['mean']:.2f} | {r['median']:.2f} | {r['gain']:+.2f} |" for r in rows))
        return 0
    print("\n".join(listing(args.folder)) or f"no pools in {args.folder}")
    return 0


def render(argv: list[str]) -> int:
    """Render the pool of the training command whose options are ``argv`` (its --out unused)."""
    from distill import train
    from runtime.audio import AudioError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = train.parse_args(argv if "--out" in argv else [*argv, "--out", os.devnull])
    if not args.pool:
        print("error: give --pool N, the number of mixtures to render", file=sys.stderr)
        return 2
    try:
        train.make_sampler(args, args.seed)
    except (AudioError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
