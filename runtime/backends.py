"""Backends that run one streaming step of a bundle model: ``(frame, states) -> (mask, states)``.

``frame`` and ``mask`` are float32 ``[bins, 2]`` (re, im). States are whatever the model file
takes, kept by the caller and passed back unchanged: float32 arrays for float I/O, raw int8 arrays
for integer I/O, whose state input and output scales are equal so nothing is requantised between
frames. A file whose graph is the ``core`` (the quantised TFLite models) leaves the float feature
transform and mask bound to the backend, which computes them exactly as the manifest's
``transforms`` describe. A gated bundle runs through ``GatedRunner``, which follows the manifest's
gating protocol and calls a branch's graph only on frames its gate is open. A two-stage bundle (a
student, then a MeanFlow corrector) runs through ``ChainRunner``, which returns the enhanced
spectrum itself rather than a mask (``returns``), and feeds the corrector its noise from
``runtime.noise``.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from contextlib import contextmanager
from operator import itemgetter

import numpy as np

from runtime.bundle import Bundle, BundleError, ModelFile, StateSpec
from runtime.noise import gaussian

BACKENDS = ("onnxruntime", "litert", "pytorch")
FORMAT = {"onnxruntime": "onnx", "litert": "tflite", "pytorch": "pytorch"}
# What ``auto`` runs, the first the bundle has at the chosen precision. benchmarks.latency, every
# backend interleaved frame by frame: LiteRT's median frame took 0.45x (fp32) and 0.44x (int8) of
# ONNX Runtime's on the shipped default bundle, 0.54x and 0.38x on the gated one; only LiteRT has
# integer I/O (int8io). The reference (pytorch) is never picked.
AUTO = ("litert", "onnxruntime")


def compressed_features(frame: np.ndarray, power: float) -> np.ndarray:
    """Magnitude**power and re/im rescaled to it. Shape: [F, 2] -> [3, F]"""
    mag = np.sqrt(np.maximum(np.square(frame).sum(-1), np.float32(1e-12)))  # [F]
    comp = mag**power
    return np.stack([comp, frame[:, 0] * (comp / mag), frame[:, 1] * (comp / mag)]).astype(np.float32)


def bounded_mask(z: np.ndarray) -> np.ndarray:
    """Complex mask with magnitude tanh(|z|) and the phase of z. Shape: [2, F] -> [F, 2]"""
    r = np.sqrt(np.maximum(np.square(z).sum(0), np.float32(1e-12)))  # [F]
    return (z * (np.tanh(r) / r)).T.astype(np.float32)


def flow(x: np.ndarray, power: float) -> np.ndarray:
    """Power-law compression of a complex spectrum, phase kept: x |x|^(power - 1), the corrector's
    domain. Shape: [F, 2] -> [F, 2]"""
    mag = np.sqrt(np.maximum(np.square(x).sum(-1, keepdims=True), np.float32(1e-12)))  # [F, 1]
    return (x * mag ** np.float32(power - 1)).astype(np.float32)


def unflow(z: np.ndarray, power: float) -> np.ndarray:
    """Inverse of ``flow``. Shape: [F, 2] -> [F, 2]"""
    mag = np.sqrt(np.maximum(np.square(z).sum(-1, keepdims=True), np.float32(1e-12)))  # [F, 1]
    return (z * mag ** np.float32(1 / power - 1)).astype(np.float32)


def apply_mask(frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Complex product per bin. Shape: [F, 2], [F, 2] -> [F, 2]"""
    (xr, xi), (mr, mi) = frame.T, mask.T
    return np.stack([xr * mr - xi * mi, xr * mi + xi * mr], -1).astype(np.float32)


def quantizer(spec: dict):
    """``x -> clamp(rint(x / scale) + zero_point)`` in ``spec``'s integer type, float32 arithmetic,
    with the parameters looked up once (a per-frame path calls it for every tensor)."""
    info = np.iinfo(spec["dtype"])
    scale, zero, lo, hi = (np.float32(v) for v in (spec["scale"], spec["zero_point"], info.min, info.max))
    dtype = np.dtype(spec["dtype"])

    def run(x: np.ndarray) -> np.ndarray:
        return np.minimum(np.maximum(np.rint(x / scale) + zero, lo), hi).astype(dtype)

    return run


def dequantizer(spec: dict):
    """``q -> float32(q - zero_point) * scale`` with ``spec``'s parameters looked up once."""
    scale, zero = np.float32(spec["scale"]), np.float32(spec["zero_point"])

    def run(q: np.ndarray) -> np.ndarray:
        x = q.astype(np.float32)
        x -= zero
        x *= scale
        return x

    return run


def requantizer(src: dict, dst: dict):
    """``quantize(dequantize(q, src), dst)`` as a table over every integer of ``src``'s type, so
    requantising a tensor is one lookup and gives exactly what the two steps give."""
    bits = np.iinfo(src["dtype"]).bits
    every = np.arange(2**bits, dtype=f"uint{bits}").view(src["dtype"])  # 0, 1, ..., max, min, ..., -1
    table = quantizer(dst)(dequantizer(src)(every))  # a negative q indexes from the end: table.take(q) is its entry
    return table.take


def quantize(x: np.ndarray, spec: dict) -> np.ndarray:
    return quantizer(spec)(x)


def dequantize(q: np.ndarray, spec: dict) -> np.ndarray:
    return dequantizer(spec)(q)


def band_energies(frame: np.ndarray, bands: int, width: int) -> np.ndarray:
    """log10 of the mean power of ``bands`` bands of ``width`` bins from bin 0 (the gating policy's
    input). The mean is numpy's (pairwise sum, then divided), as firmware's golden vectors record it.
    Shape: [F, 2] -> [bands]"""
    x = frame[: bands * width]  # [bands * width, 2]
    power = x[:, 0] * x[:, 0]
    power += x[:, 1] * x[:, 1]
    e = np.add.reduce(power.reshape(bands, width), axis=1)  # [bands]
    e /= np.float32(width)
    e += np.float32(1e-8)
    return np.log10(e, out=e)


class OnnxSession:
    """One ONNX file run by tensor names: ``run(values in input order) -> outputs in order``."""

    def __init__(self, path, inputs: list[str], outputs: list[str], threads: int = 1):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BundleError("the onnxruntime backend needs the onnxruntime package: pip install onnxruntime") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.inputs, self.outputs = inputs, outputs

    def run(self, values: list[np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self.outputs, dict(zip(self.inputs, values)))


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise BundleError("the litert backend needs ai-edge-litert (or tflite-runtime): pip install ai-edge-litert") from None
    return Interpreter


# LiteRT's C++ side announces its CPU delegate on stderr on every run.
LITERT_CHATTER = ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",)


@contextmanager
def stderr_without(lines: tuple[str, ...]):
    """Hold back what C code writes to file descriptor 2 meanwhile, then pass it on less ``lines``:
    its errors still show, its known chatter does not."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to filter
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            rest = [ln for ln in held.read().decode(errors="replace").splitlines(keepends=True) if ln.rstrip("\n") not in lines]
            if rest:
                sys.stderr.write("".join(rest))
                sys.stderr.flush()


class LiteRTSession:
    """One TFLite file run through its signature's tensor names (see ``OnnxSession``)."""

    def __init__(self, path, inputs: list[str], outputs: list[str], threads: int = 1):
        self.interpreter = _interpreter_class()(model_path=str(path), num_threads=threads)
        with stderr_without(LITERT_CHATTER):
            self.interpreter.allocate_tensors()
        self.inputs, self.outputs = inputs, outputs
        sig = self.interpreter.get_signature_runner()
        ins, outs = sig.get_input_details(), sig.get_output_details()
        self.in_idx = [ins[n]["index"] for n in inputs]
        self.out_idx = [outs[n]["index"] for n in outputs]
        del sig  # it holds views into the interpreter, which then refuses set_tensor

    def run(self, values: list[np.ndarray]) -> list[np.ndarray]:
        it = self.interpreter
        for i, v in zip(self.in_idx, values):
            it.set_tensor(i, v)
        it.invoke()
        return [it.get_tensor(i) for i in self.out_idx]


SESSIONS = {"onnxruntime": OnnxSession, "litert": LiteRTSession}


class Runner:
    """Common part: tensor names, state initial values, integer I/O conversion."""

    returns = "mask"  # what a call gives per frame: a mask for the frame (a ChainRunner: the enhanced spectrum)

    def __init__(self, bundle: Bundle, model: ModelFile):
        self.bundle, self.model = bundle, model
        io = model.io
        self.inputs = [io["input"]["name"]] + [s.name for s in bundle.states]
        self.outputs = [io["output"]["name"]] + [s.output for s in bundle.states]
        self.core = io["graph"] == "core"
        self.power = bundle.manifest["transforms"]["features"]["power"]
        self.in_spec, self.out_spec = io["input"], io["output"]
        self.state_specs = [io["states"][s.name] for s in bundle.states]
        self.integer = self.in_spec["dtype"] != "float32"

    def initial_state(self) -> list[np.ndarray]:
        states = []
        for s, spec in zip(self.bundle.states, self.state_specs):
            x = np.full(s.shape, s.init, np.float32)
            states.append(quantize(x, spec) if spec["dtype"] != "float32" else x)
        return states

    def __call__(self, frame: np.ndarray, states: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        if not self.core:
            out = self.run(frame[None], states)
            return out[0][0], out[1:]
        x = compressed_features(frame, self.power)[:, None, :][None]  # [1, 3, 1, F]
        out = self.run(quantize(x, self.in_spec) if self.integer else x, states)
        z = dequantize(out[0], self.out_spec) if self.integer else out[0]  # [1, 2, 1, F]
        return bounded_mask(z[0, :, 0, :]), out[1:]

    def run(self, x: np.ndarray, states: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def usage(self) -> dict | None:
        """What gating skipped since the last ``reset_usage`` (None: this model has no gates)."""
        return None

    def reset_usage(self) -> None:
        pass


class OnnxRunner(Runner):
    def __init__(self, bundle: Bundle, model: ModelFile, threads: int = 1):
        super().__init__(bundle, model)
        self.session = OnnxSession(model.path, self.inputs, self.outputs, threads)

    def run(self, x, states):
        return self.session.run([x, *states])


class LiteRTRunner(Runner):
    def __init__(self, bundle: Bundle, model: ModelFile, threads: int = 1):
        super().__init__(bundle, model)
        self.session = LiteRTSession(model.path, self.inputs, self.outputs, threads)

    def run(self, x, states):
        return self.session.run([x, *states])


class TorchRunner(Runner):
    """The reference: the bundle's ``torch.export`` program of the PyTorch step. Needs torch, which
    the runtime itself never imports otherwise."""

    def __init__(self, bundle: Bundle, model: ModelFile, threads: int = 1):
        super().__init__(bundle, model)
        try:
            import torch
        except ImportError:
            raise BundleError("the pytorch backend needs torch (pip install torch); the other backends do not") from None
        torch.set_num_threads(threads)
        self.torch = torch
        self.module = torch.export.load(str(model.path)).module()

    def run(self, x, states):
        torch = self.torch
        with torch.no_grad():
            out = self.module(torch.from_numpy(x), *(torch.from_numpy(s) for s in states))
        return [o.numpy() for o in out]


GATE_MODES = ("policy", "on", "off")


class IntegerSession:
    """An int8io part behind the float session interface: ``run`` quantises each input with its
    own scale and zero point and dequantises each output with its own. Chained by the protocol this
    is the requantisation of ``INTEGER_PROTOCOL`` (a dequantised state quantises back to the same
    integers, a float zero to the zero point). ``run_integer`` takes and gives the integers
    themselves (``GatedRunner`` chains the parts so). ``calls`` collects the integer inputs and
    outputs of every call."""

    def __init__(self, session, io: dict, calls: list | None = None):
        self.session, self.inputs, self.outputs, self.calls = session, session.inputs, session.outputs, calls
        specs = {t["name"]: t for t in [*io["inputs"], *io["outputs"]]}
        self.in_specs = [specs[n] for n in self.inputs]
        self.out_specs = [specs[n] for n in self.outputs]
        self.quantizers = [quantizer(s) for s in self.in_specs]
        self.dequantizers = [dequantizer(s) for s in self.out_specs]

    def run(self, values):
        res = self.run_integer([q(np.asarray(v, np.float32)) for q, v in zip(self.quantizers, values)])
        return [d(r) for d, r in zip(self.dequantizers, res)]

    def run_integer(self, q: list[np.ndarray]) -> list[np.ndarray]:
        """The part on integer inputs in its own parameters; its integer outputs."""
        res = self.session.run(q)
        if self.calls is not None:
            self.calls.append([np.array(v) for v in [*q, *res]])
        return res


def part_sessions(bundle: Bundle, protocol: dict, backend: str, precision: str, threads: int = 1) -> dict:
    """A session per part of a gated or two-stage bundle at one format and precision, run by the
    protocol's tensor names (``Bundle`` checked that the files have them); int8io parts quantise
    their inputs and dequantise their outputs (``IntegerSession``)."""
    sessions = {}
    for name, f in bundle.parts(FORMAT[backend], precision).items():
        part = protocol["parts"][name]
        sessions[name] = SESSIONS[backend](f.path, part["inputs"], part["outputs"], threads)
        if precision == "int8io":
            sessions[name] = IntegerSession(sessions[name], f.io)
    return sessions


class PartsRunner:
    """What the gated and the two-stage runners share: per part (in ``order``) its session and
    which of its outputs become which states, and a part called on the frame's tensors by name."""

    returns = "mask"

    def __init__(self, protocol: dict, order: list[str], states: tuple[StateSpec, ...], sessions: dict):
        """``protocol``: the manifest's gating or chain section; ``sessions``: per part, an object
        with ``inputs``, ``outputs`` (tensor names) and ``run(values) -> outputs``."""
        self.states, self.names = states, [s.name for s in states]
        index = {n: i for i, n in enumerate(self.names)}
        output = {s.name: s.output for s in states}
        self.parts = {}
        for name in order:
            session = sessions[name]
            self.parts[name] = (session, [(index[st], session.outputs.index(output[st])) for st in protocol["parts"][name]["states"]])

    def initial_state(self) -> list[np.ndarray]:
        return [np.full(s.shape, s.init, np.float32) for s in self.states]

    def _run(self, name: str, env: dict, new: list) -> None:
        """Part ``name`` on its inputs from ``env``, which gains its outputs; its states' new
        values go into ``new``."""
        session, updates = self.parts[name]
        res = session.run([env[n] for n in session.inputs])
        env.update(zip(session.outputs, res))
        for i, j in updates:
            new[i] = res[j]


def _converter(src: dict | None, dst: dict):
    """How a value in ``src``'s parameters (None: float) becomes an input in ``dst``'s: quantised,
    requantised, or nothing where the parameters are equal."""
    if src is None:
        return quantizer(dst)
    same = (src["scale"], src["zero_point"], src["dtype"]) == (dst["scale"], dst["zero_point"], dst["dtype"])
    return None if same else requantizer(src, dst)


class GatedRunner(PartsRunner):
    """A gated bundle run as its manifest's gating protocol says: per frame the trunk, whose graph
    also runs the policy, then only the branches whose gate is open (the policy's ``logits > 0``,
    or all / none when ``gates`` forces them). A skipped branch's graph is not called at all.
    Counts gate usage and the MACs executed (the trunk's, policy included, + branches that ran).

    Every value of a frame has a slot, resolved once: the features, the energies, each state at the
    start of the frame and each part output; a part reads its inputs from slots and fills its
    outputs' slots. Integer parts (``IntegerSession``) are chained in integers as
    ``INTEGER_PROTOCOL`` says: states stay in their owner's parameters, an input from elsewhere is
    requantised by a table, or copied where the parameters are equal; only the features and
    energies are quantised and the z terms and logits dequantised.
    """

    def __init__(self, gating: dict, states: tuple[StateSpec, ...], power: float, sessions: dict, gates: str = "policy"):
        """``gating``: the manifest's gating section; ``sessions``: per part, an object with
        ``inputs``, ``outputs`` (tensor names) and ``run(values) -> outputs``."""
        if gates not in GATE_MODES:
            raise BundleError(f"unknown gate mode {gates!r}; choose from {', '.join(GATE_MODES)}")
        order = gating["order"]
        super().__init__(gating, order, states, sessions)
        self.power = power
        self.bands, self.width = gating["energies"]["bands"], gating["energies"]["width"]
        self.branches = [n for n in order if n.startswith("branch")]
        self.always = [n for n in order if n not in self.branches]
        self.integer = all(isinstance(sessions[n], IntegerSession) for n in order)
        slot = {"features": 0, "energies": 1, **{n: 2 + i for i, n in enumerate(self.names)}}
        for name in order:
            slot.update((o, len(slot)) for o in sessions[name].outputs)
        self.values: list = [None] * len(slot)
        spec: dict[int, dict | None] = dict.fromkeys(range(len(slot)))  # integer parts: the parameters of each slot's integers
        if self.integer:
            for name in order:
                session = sessions[name]
                spec.update((slot[n], t) for n, t in zip(session.inputs, session.in_specs) if n in gating["parts"][name]["states"])
                spec.update((slot[o], t) for o, t in zip(session.outputs, session.out_specs))
        self.plan = {}
        for name in order:
            session, updates = self.parts[name]
            ins = [slot[n] for n in session.inputs]
            convert = [(j, _converter(spec[i], t)) for j, (i, t) in enumerate(zip(ins, session.in_specs))] if self.integer else []
            states_out = [(i, j, _converter(spec[slot[session.outputs[j]]], spec[2 + i]) if self.integer else None) for i, j in updates]
            gather = itemgetter(*ins) if len(ins) > 1 else lambda v, i=ins[0]: (v[i],)
            self.plan[name] = (gather, [(j, f) for j, f in convert if f is not None], slot[session.outputs[0]], states_out)
        read = ["logits", *(f"z_{n}" for n in order if f"z_{n}" in slot)]  # the floats the loop itself uses
        self.read = {t: (slot[t], dequantizer(spec[slot[t]]) if self.integer else None) for t in read}
        index = {n: i for i, n in enumerate(self.names)}
        self.zeroed = [[index[st] for st in gating["parts"][b]["zeroed_when_skipped"]] for b in self.branches]
        self.zeros = [np.zeros(s.shape, np.float32) for s in states]
        self.state_specs = [spec[2 + i] for i in range(len(states))]
        if self.integer:
            self.zeros = [quantize(z, t) for z, t in zip(self.zeros, self.state_specs)]
        self.macs_fixed = sum(gating["parts"][n]["macs_per_frame"] for n in self.always)
        self.macs_branch = np.array([gating["parts"][b]["macs_per_frame"] for b in self.branches], np.int64)
        self.gates = gates
        self.forced = np.full(len(self.branches), gates == "on")
        self.reset_usage()

    @classmethod
    def open(cls, bundle: Bundle, backend: str, precision: str, threads: int = 1, gates: str = "policy") -> "GatedRunner":
        if backend not in SESSIONS:
            raise BundleError(f"gated bundles run on {' or '.join(SESSIONS)}, not {backend}")
        sessions = part_sessions(bundle, bundle.gating, backend, precision, threads)
        power = bundle.manifest["transforms"]["features"]["power"]
        return cls(bundle.gating, bundle.states, power, sessions, gates)

    def initial_state(self) -> list[np.ndarray]:
        """float32 states, or for integer parts each state's integers in its owner's parameters."""
        states = super().initial_state()
        return [quantize(x, t) for x, t in zip(states, self.state_specs)] if self.integer else states

    def __call__(self, frame: np.ndarray, states: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        v = self.values
        v[0] = compressed_features(frame, self.power)[:, None, :][None]  # [1, 3, 1, F]
        v[1] = band_energies(frame, self.bands, self.width)[None]  # [1, bands]
        v[2 : 2 + len(states)] = states
        new = list(states)
        for name in self.always:
            self._call(name, new)
        on = self._read("logits")[0] > 0 if self.gates == "policy" else self.forced  # [K]
        z = self._read("z_trunk")  # [1, 2, 1, F]
        for k, name in enumerate(self.branches):
            if on[k]:
                self._call(name, new)
                z = z + self._read(f"z_{name}")
            else:  # outputs zero, GRU held (the states not listed keep their value)
                for i in self.zeroed[k]:
                    new[i] = self.zeros[i]
        self.frames += 1
        self.on += on
        self.macs += self.macs_fixed + int(self.macs_branch[on].sum())
        return bounded_mask(z[0, :, 0, :]), new

    def _call(self, name: str, new: list) -> None:
        """Part ``name`` on its inputs' slots; fills its outputs' slots and its states' new values."""
        v, (gather, convert, first, states_out) = self.values, self.plan[name]
        args = list(gather(v))
        for j, f in convert:
            args[j] = f(args[j])
        session = self.parts[name][0]
        res = session.run_integer(args) if self.integer else session.run(args)
        v[first : first + len(res)] = res  # a part's outputs have consecutive slots
        for i, j, f in states_out:
            new[i] = res[j] if f is None else f(res[j])

    def _read(self, tensor: str) -> np.ndarray:
        i, f = self.read[tensor]
        return self.values[i] if f is None else f(self.values[i])

    def usage(self) -> dict:
        n = max(self.frames, 1)
        full = self.macs_fixed + int(self.macs_branch.sum())
        return {
            "gates": self.gates,
            "frames": self.frames,
            "branch_usage": [round(float(c) / n, 4) for c in self.on],
            "macs_per_frame": self.macs / n,
            "macs_all_on": full,
            "mac_ratio": self.macs / n / full,
        }

    def reset_usage(self) -> None:
        self.frames, self.macs = 0, 0
        self.on = np.zeros(len(self.branches), np.int64)


STAGES = ("all", "student")


class ChainRunner(PartsRunner):
    """A two-stage bundle run as its manifest's chain protocol says, frame by frame: the student's
    graph on the compressed features, its mask bound and applied to the frame (the student's
    estimate), then the corrector's graph on the estimate and the frame in its compressed domain
    and on this frame's eps, and its output taken back to the linear domain. Nothing waits for a
    later frame, so the chain adds no latency. ``stages="student"`` stops after the student (the
    corrector is not called) for A/B listening. Returns the enhanced spectrum (``returns``).

    The state list is every stage state in manifest order, then the frame counter that eps is
    drawn at (a stream's frame index), so streams that share the runner keep their own eps.
    Per stage the MACs (static, per frame it ran) and the compute time of every frame are kept.
    """

    returns = "spectrum"

    def __init__(self, chain: dict, states: tuple[StateSpec, ...], powers: tuple[float, float], sessions: dict, stages: str = "all"):
        """``chain``: the manifest's chain section; ``powers``: the student's feature power and the
        corrector's flow power; ``sessions``: per stage, an object with ``inputs``, ``outputs``
        (tensor names) and ``run(values) -> outputs``."""
        if stages not in STAGES:
            raise BundleError(f"unknown stages {stages!r}; choose from {', '.join(STAGES)}")
        self.run_order = chain["order"] if stages == "all" else chain["order"][:1]
        super().__init__(chain, self.run_order, states, sessions)
        self.power, self.flow_power = powers
        self.macs = {name: chain["parts"][name]["macs_per_frame"] for name in chain["order"]}
        eps = chain["eps"]
        self.seed = eps["seed"] if eps["generator"] == "splitmix64_box_muller" else None
        self.stages = stages
        self.reset_usage()

    @classmethod
    def open(cls, bundle: Bundle, backend: str, precision: str, threads: int = 1, stages: str = "all") -> "ChainRunner":
        if backend not in SESSIONS:
            raise BundleError(f"two-stage bundles run on {' or '.join(SESSIONS)}, not {backend}")
        sessions = part_sessions(bundle, bundle.chain, backend, precision, threads)
        t = bundle.manifest["transforms"]
        return cls(bundle.chain, bundle.states, (t["features"]["power"], t["flow"]["power"]), sessions, stages)

    def initial_state(self) -> list[np.ndarray]:
        return [*super().initial_state(), np.zeros((), np.int64)]

    def eps(self, t: int, bins: int) -> np.ndarray:
        """The corrector's eps at frame ``t`` of a stream. Shape: -> [1, 2, 1, bins]"""
        if self.seed is None:
            return np.zeros((1, 2, 1, bins), np.float32)
        return gaussian(self.seed, t, 1, bins)[0].T[None, :, None, :]

    def run(self, frame: np.ndarray, states: list[np.ndarray]) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
        """Every stage's result for one frame: the student's ``mask`` and ``estimate``, the
        corrector's ``corrected`` (its compressed domain) and ``enhanced`` (the estimate itself with
        the student alone). Shape: frame [F, 2] -> each [F, 2]"""
        t0 = time.perf_counter_ns()
        env = {"features": compressed_features(frame, self.power)[:, None, :][None]}  # [1, 3, 1, F]
        env.update(zip(self.names, states))
        new = list(states)
        self._run("student", env, new)
        mask = bounded_mask(env["z"][0, :, 0, :])  # [F, 2]
        out = {"mask": mask, "estimate": apply_mask(frame, mask)}
        t1 = time.perf_counter_ns()
        self.times["student"].append(t1 - t0)
        if "corrector" in self.parts:
            env["estimate"] = flow(out["estimate"], self.flow_power).T[None, :, None, :]  # [1, 2, 1, F]
            env["noisy"] = flow(frame, self.flow_power).T[None, :, None, :]
            env["eps"] = self.eps(int(states[-1]), len(frame))
            self._run("corrector", env, new)
            out["corrected"] = env["corrected"][0, :, 0, :].T  # [F, 2]
            out["enhanced"] = unflow(out["corrected"], self.flow_power)
            self.times["corrector"].append(time.perf_counter_ns() - t1)
        else:
            out["enhanced"] = out["estimate"]
        new[-1] = states[-1] + 1
        return out, new

    def __call__(self, frame: np.ndarray, states: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        out, new = self.run(frame, states)
        return out["enhanced"], new

    def usage(self) -> dict:
        """The stages run since ``reset_usage``: per stage its MACs per frame and compute time per
        frame (its graph and the float transforms around it), and the MACs a frame executed."""
        per = {}
        for name, macs in self.macs.items():
            t = np.asarray(self.times.get(name, []), np.float64) / 1e3
            times = {"mean": float(t.mean()), **{f"p{q}": float(np.percentile(t, q)) for q in (50, 95)}} if len(t) else None
            per[name] = {"ran": name in self.parts, "macs_per_frame": macs, "compute_us": times}
        return {"stages": self.stages, "frames": len(self.times["student"]), "per_stage": per,
                "macs_per_frame": sum(self.macs[n] for n in self.parts), "macs_all_stages": sum(self.macs.values())}  # fmt: skip

    def reset_usage(self) -> None:
        self.times = {name: [] for name in self.parts}


def _has(bundle: Bundle, format: str, precision: str) -> bool:
    """Whether the bundle has a runnable ``format`` model at ``precision``: a plain bundle's model
    file, or a gated or two-stage bundle's parts; a set with only some of its parts there is
    damaged, and refused."""
    kinds = [e for e in bundle.files.values() if e.get("format") == format and e.get("precision") == precision]
    if any(e.get("kind") == "model" for e in kinds):
        return True
    if not any(e.get("kind") == "part" for e in kinds):
        return False
    bundle.parts(format, precision)  # raises for an incomplete set
    return True


def choose_backend(bundle: Bundle, backend: str, precision: str) -> str:
    """``backend`` itself, or for ``auto`` the first of ``AUTO`` that the bundle has at ``precision``."""
    if backend != "auto":
        return backend
    for b in AUTO:
        if _has(bundle, FORMAT[b], precision):
            return b
    have = sorted({f"{e['format']}/{e['precision']}" for e in bundle.files.values() if e.get("kind") in ("model", "part")})
    raise BundleError(f"{bundle.root}: no model at precision {precision} for any backend (this bundle has {', '.join(have)})")


def open_runner(
    bundle: Bundle, backend: str, precision: str, threads: int = 1, gates: str = "policy", stages: str | None = None
) -> Runner | GatedRunner | ChainRunner:
    """The runner of one model of the bundle (a ``GatedRunner`` for a gated bundle, a
    ``ChainRunner`` for a two-stage one), checked by one step on silence. ``gates`` forces a gated
    bundle's branches ``on`` or ``off``; ``stages`` picks a two-stage bundle's ``all`` (its default)
    or ``student`` alone."""
    backend = choose_backend(bundle, backend, precision)
    if backend not in BACKENDS:
        raise BundleError(f"unknown backend {backend!r}; choose from auto, {', '.join(BACKENDS)}")
    if bundle.gating is None and gates != "policy":
        raise BundleError(f"{bundle.root}: has no gates to force (it is not a gated bundle); leave out --gates")
    if bundle.chain is None and stages is not None:
        raise BundleError(f"{bundle.root}: has one stage (it is not a two-stage bundle); leave out --stages")
    try:
        if bundle.gating is not None:
            runner = GatedRunner.open(bundle, backend, precision, threads, gates)
        elif bundle.chain is not None:
            runner = ChainRunner.open(bundle, backend, precision, threads, stages or "all")
        else:
            cls = {"onnxruntime": OnnxRunner, "litert": LiteRTRunner, "pytorch": TorchRunner}[backend]
            runner = cls(bundle, bundle.model(FORMAT[backend], precision), threads)
        # One step on silence: a file that loads but does not fit the manifest fails here, not mid-stream.
        runner(np.zeros((bundle.signal["bins"], 2), np.float32), runner.initial_state())
        runner.reset_usage()
    except BundleError:
        raise
    except Exception as e:  # each backend library raises its own types for a bad model file
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise BundleError(f"{bundle.root}: cannot run its {FORMAT[backend]} {precision} model ({detail}); the bundle is damaged or inconsistent, re-export it") from None
    return runner
