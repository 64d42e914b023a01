"""Model bundles: a folder with ``manifest.json`` and the model files it lists.

The manifest is the contract between ``export/`` (which writes it) and whoever runs the model
(``runtime/``, firmware). It is documented field by field in docs/export.md ("Bundle format"). Loading
a bundle checks the schema, the manifest's own checksum (``manifest_sha256``) and the sha256 of
every listed file before anything is used.

The checksums catch accidents: a hand-edited manifest, a truncated copy, files of two bundles mixed
up. They are not a signature: anyone who edits the manifest can recompute ``manifest_sha256``.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

SCHEMA = "tiny-denoise-bundle"
SCHEMA_VERSION = 2  # 2: manifest_sha256, verification.model
MANIFEST = "manifest.json"
DIGEST = "manifest_sha256"
EPS_GENERATORS = ("splitmix64_box_muller", "zero")  # a two-stage bundle's eps sources (runtime.noise)
GATING_VERSION = 2  # the newest gating protocol: 2, the trunk part runs the policy too; 1, the policy was a part of its own
ALWAYS_RUN = {1: ["trunk", "policy"], 2: ["trunk"]}  # per gating version, the parts every frame calls before the branches


class BundleError(Exception):
    """A bundle that cannot be used; the message says what is wrong and what to do."""


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON without its own ``manifest_sha256``: keys sorted, no
    whitespace, ASCII only, so re-indenting the file keeps it and any change of a value does not."""
    body = {k: v for k, v in manifest.items() if k != DIGEST}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()).hexdigest()


def seal(manifest: dict) -> dict:
    """The manifest with its ``manifest_sha256`` (re)computed; what the exporter writes."""
    return {**{k: v for k, v in manifest.items() if k != DIGEST}, DIGEST: manifest_digest(manifest)}


@dataclass(frozen=True)
class StateSpec:
    name: str  # graph input name
    output: str  # graph output name holding the next value
    shape: tuple[int, ...]
    init: float  # every state starts as a tensor filled with this value


@dataclass(frozen=True)
class ModelFile:
    """One runnable model file of the bundle."""

    path: Path
    format: str  # "onnx" or "tflite"
    precision: str  # "fp32", "int8" (float I/O) or "int8io" (integer I/O, see io)
    io: dict  # tensor names, shapes, dtypes and (for integer I/O) scale/zero point


class Bundle:
    """A verified bundle: its manifest, signal contract, state layout and model files."""

    def __init__(self, root: str | os.PathLike, verify: bool = True):
        self.root = Path(root)
        path = self.root / MANIFEST
        if not self.root.is_dir():
            raise BundleError(f"{self.root}: no such bundle folder; pass --model DIR of an exported bundle")
        if not path.is_file():
            raise BundleError(f"{self.root}: no {MANIFEST}; this is not a model bundle (export one with python -m export)")
        try:
            self.manifest = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BundleError(f"{path}: not valid JSON ({e}); the bundle is damaged, re-export it") from None
        if not isinstance(self.manifest, dict) or self.manifest.get("schema") != SCHEMA:
            raise BundleError(f"{path}: not a {SCHEMA} manifest")
        version = self.manifest.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise BundleError(f"{path}: schema version {version} is newer than this runtime reads ({SCHEMA_VERSION}); update tiny-denoise")
        if version < SCHEMA_VERSION:
            raise BundleError(f"{path}: schema version {version} predates manifest checksums; re-export the bundle with python -m export")
        if DIGEST not in self.manifest:
            raise BundleError(f"{path}: no {DIGEST}, so the manifest cannot be checked; re-export the bundle")
        if self.manifest[DIGEST] != manifest_digest(self.manifest):
            raise BundleError(f"{path}: changed since export (its {DIGEST} does not match its content); re-export the bundle rather than editing it")
        try:
            self.signal = self.manifest["signal"]
            self.states = tuple(StateSpec(s["name"], s["output"], tuple(int(n) for n in s["shape"]), float(s["init"])) for s in self.manifest["states"])
            self.files = self.manifest["files"]
            self._check()
        except KeyError as e:
            raise BundleError(f"{path}: incomplete manifest (missing {e}); re-export the bundle") from None
        except (TypeError, ValueError, AttributeError) as e:
            raise BundleError(f"{path}: malformed manifest ({e}); re-export the bundle") from None
        if verify:
            self.verify()

    def _check(self) -> None:
        """Every field a runner or the engine reads is present and of the right kind, so a
        hand-edited manifest fails here rather than mid-stream."""
        for k in ("sample_rate", "n_fft", "win_length", "hop", "bins"):
            if not isinstance(self.signal[k], int) or self.signal[k] < 1:
                raise ValueError(f"signal.{k} must be a positive integer, not {self.signal[k]!r}")
        if str(self.signal["window"]).split(":")[0] != "sqrt_hann":
            raise ValueError(f"window {self.signal['window']!r} is not supported (sqrt_hann)")
        float(self.signal["latency_ms"])
        int(self.manifest["model"]["macs_per_frame"])
        float(self.manifest["transforms"]["features"]["power"])
        if not isinstance(self.files, dict):
            raise TypeError("files must map file names to entries")
        for m in self.models():
            for key in ("input", "output", "states", "graph"):
                m.io[key]
        if self.gating is not None and self.chain is not None:
            raise ValueError("gating and chain in one manifest; a bundle is gated or two-stage, not both")
        if self.gating is not None:
            self._check_gating()
        if self.chain is not None:
            self._check_chain()

    @property
    def gating(self) -> dict | None:
        """The gating protocol of a gated bundle (None for a plain one); see docs/slimming.md."""
        return self.manifest.get("gating")

    @property
    def chain(self) -> dict | None:
        """The chain protocol of a two-stage bundle (student, then corrector; None for any other);
        see docs/meco.md."""
        return self.manifest.get("chain")

    def _check_gating(self) -> None:
        """The gating protocol is complete and consistent: every state owned by exactly one part,
        skip rules that split a branch's states, part files whose tensors are the protocol's."""
        g = self.gating
        version = g.get("version", 1)  # version 1 had no field
        if isinstance(version, int) and version > GATING_VERSION:
            raise BundleError(f"{self.root}: gating protocol version {version} is newer than this runtime follows ({GATING_VERSION}); update tiny-denoise")
        if version not in ALWAYS_RUN:
            raise ValueError(f"gating.version {version!r} is not one of {', '.join(map(str, ALWAYS_RUN))}")
        branches = g["branches"]
        if not isinstance(branches, int) or branches < 1:
            raise ValueError(f"gating.branches must be a positive integer, not {branches!r}")
        always = ALWAYS_RUN[version]
        if g["order"] != [*always, *(f"branch{k}" for k in range(branches))]:
            raise ValueError(f"gating.order {g['order']!r} is not {', '.join(always)}, branch0..branch{branches - 1} (gating version {version})")
        if "z_trunk" not in g["parts"]["trunk"]["outputs"] or "logits" not in g["parts"][always[-1]]["outputs"]:
            raise ValueError(f"gating part trunk must give z_trunk and part {always[-1]} logits")
        bands, width = g["energies"]["bands"], g["energies"]["width"]
        if not all(isinstance(v, int) and v >= 1 for v in (bands, width)) or bands * width > self.signal["bins"]:
            raise ValueError(f"gating.energies needs positive integers with bands * width <= {self.signal['bins']} bins")
        self._check_parts("gating")
        for name in g["order"]:
            part = g["parts"][name]
            if name.startswith("branch") and sorted(part["zeroed_when_skipped"] + part["held_when_skipped"]) != sorted(part["states"]):
                raise ValueError(f"gating part {name}: zeroed_when_skipped and held_when_skipped must split its states")

    def _check_chain(self) -> None:
        """The chain protocol is the one runners follow: the student, then the corrector, with the
        tensors they exchange under the names the protocol gives them, an eps source the runtime
        can reproduce, the corrector's domain (flow power) and the parts' common checks."""
        c = self.chain
        if c["order"] != ["student", "corrector"]:
            raise ValueError(f"chain.order {c['order']!r} is not student, corrector")
        student, corrector = c["parts"]["student"], c["parts"]["corrector"]
        if student["inputs"][:1] != ["features"] or student["outputs"][:1] != ["z"]:
            raise ValueError("chain part student must take features first and give z first")
        if corrector["inputs"][:3] != ["estimate", "noisy", "eps"] or corrector["outputs"][:1] != ["corrected"]:
            raise ValueError("chain part corrector must take estimate, noisy and eps first and give corrected first")
        eps = c["eps"]
        if eps["generator"] not in EPS_GENERATORS:
            raise ValueError(f"chain.eps.generator {eps['generator']!r} is not one of {', '.join(EPS_GENERATORS)}")
        if eps["generator"] != "zero" and not (isinstance(eps["seed"], int) and 0 <= eps["seed"] < 2**64):
            raise ValueError(f"chain.eps.seed must be an integer in [0, 2^64), not {eps['seed']!r}")
        power = self.manifest["transforms"]["flow"]["power"]
        if isinstance(power, bool) or not (isinstance(power, (int, float)) and 0 < power <= 1):
            raise ValueError(f"transforms.flow.power must be in (0, 1], not {power!r}")
        self._check_parts("chain")

    def _check_parts(self, section: str) -> None:
        """What gated and two-stage bundles share: per part, MACs as a non-negative integer and
        states it reads and writes, each state owned by exactly one part; part files whose
        tensors are their part's."""
        g, states = self.manifest[section], {s.name: s for s in self.states}
        owner: dict[str, str] = {}
        for name in g["order"]:
            part = g["parts"][name]
            if not isinstance(part["macs_per_frame"], int) or part["macs_per_frame"] < 0:
                raise ValueError(f"{section} part {name}: macs_per_frame must be a non-negative integer")
            for st in part["states"]:
                if st not in states or st in owner:
                    raise ValueError(f"{section} part {name}: state {st!r} is unknown or owned by another part")
                if st not in part["inputs"] or states[st].output not in part["outputs"]:
                    raise ValueError(f"{section} part {name}: state {st!r} is not one of its inputs with its output")
                owner[st] = name
        if set(owner) != set(states):
            raise ValueError(f"states without a part: {sorted(set(states) - set(owner))}")
        for file, entry in self.files.items():
            if entry.get("kind") == "part":
                part = g["parts"][entry["part"]]
                if [t["name"] for t in entry["io"]["inputs"]] != part["inputs"] or [t["name"] for t in entry["io"]["outputs"]] != part["outputs"]:
                    raise ValueError(f"{file}: its tensors are not those of {section} part {entry['part']}")

    def parts(self, format: str, precision: str) -> dict[str, ModelFile]:
        """A gated or two-stage bundle's part files at one format and precision, by part name."""
        found = {
            e["part"]: ModelFile(self.root / name, e["format"], e["precision"], e["io"])
            for name, e in self.files.items()
            if e.get("kind") == "part" and e["format"] == format and e["precision"] == precision
        }
        order = (self.gating or self.chain)["order"]
        missing = [p for p in order if p not in found]
        if len(missing) == len(order):
            have = sorted({f"{e['format']}/{e['precision']}" for e in self.files.values() if e.get("kind") == "part"})
            kind = "gated" if self.gating else "two-stage"
            raise BundleError(f"{self.root}: no {format} parts at precision {precision} (this {kind} bundle has {', '.join(have)})")
        if missing:
            raise BundleError(f"{self.root}: the {format} {precision} set lacks part(s) {', '.join(missing)}; the bundle is incomplete, re-export it")
        return found

    def verify(self) -> None:
        """Every listed file exists and has the recorded sha256."""
        for name, entry in self.files.items():
            f = self.root / name
            if not f.is_file():
                raise BundleError(f"{self.root}: {name} is missing; the bundle is incomplete, re-export it")
            if sha256(f) != entry.get("sha256"):
                raise BundleError(f"{self.root}: {name} does not match its sha256 in {MANIFEST}; the file was modified or damaged, re-export the bundle")

    def models(self) -> list[ModelFile]:
        return [
            ModelFile(self.root / name, e["format"], e["precision"], e["io"])
            for name, e in self.files.items()
            if e.get("kind") == "model"
        ]

    def model(self, format: str, precision: str) -> ModelFile:
        for m in self.models():
            if m.format == format and m.precision == precision:
                return m
        have = ", ".join(f"{m.format}/{m.precision}" for m in self.models())
        raise BundleError(f"{self.root}: no {format} model at precision {precision} (this bundle has {have})")
