"""Backends that run one streaming step of a bundle model: ``(frame, states) -> (mask, states)``.

``frame`` and ``mask`` are float32 ``[bins, 2]`` (re, im). States are whatever the model file
takes, kept by the caller and passed back unchanged: float32 arrays for float I/O, raw int8 arrays
for integer I/O, whose state input and output scales are equal so nothing is requantised between
frames. A file whose graph is the ``core`` (the quantised TFLite models) leaves the float feature
transform and mask bound to the backend, which computes them exactly as the manifest's
``transforms`` describe.
"""
from __future__ import annotations

import numpy as np

from runtime.bundle import Bundle, BundleError, ModelFile

BACKENDS = ("onnxruntime", "litert", "pytorch")
FORMAT = {"onnxruntime": "onnx", "litert": "tflite", "pytorch": "pytorch"}


def compressed_features(frame: np.ndarray, power: float) -> np.ndarray:
    """Magnitude**power and re/im rescaled to it. Shape: [F, 2] -> [3, F]"""
    mag = np.sqrt(np.maximum(np.square(frame).sum(-1), np.float32(1e-12)))  # [F]
    comp = mag**power
    return np.stack([comp, frame[:, 0] * (comp / mag), frame[:, 1] * (comp / mag)]).astype(np.float32)


def bounded_mask(z: np.ndarray) -> np.ndarray:
    """Complex mask with magnitude tanh(|z|) and the phase of z. Shape: [2, F] -> [F, 2]"""
    r = np.sqrt(np.maximum(np.square(z).sum(0), np.float32(1e-12)))  # [F]
    return (z * (np.tanh(r) / r)).T.astype(np.float32)


def quantize(x: np.ndarray, spec: dict) -> np.ndarray:
    info = np.iinfo(spec["dtype"])
    q = np.round(x / spec["scale"]) + spec["zero_point"]
    return np.clip(q, info.min, info.max).astype(spec["dtype"])


def dequantize(q: np.ndarray, spec: dict) -> np.ndarray:
    return ((q.astype(np.float32) - spec["zero_point"]) * np.float32(spec["scale"])).astype(np.float32)


class Runner:
    """Common part: tensor names, state initial values, integer I/O conversion."""

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


class OnnxRunner(Runner):
    def __init__(self, bundle: Bundle, model: ModelFile, threads: int = 1):
        super().__init__(bundle, model)
        try:
            import onnxruntime as ort
        except ImportError:
            raise BundleError("the onnxruntime backend needs the onnxruntime package: pip install onnxruntime") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model.path), opts, providers=["CPUExecutionProvider"])

    def run(self, x, states):
        return self.session.run(self.outputs, dict(zip(self.inputs, [x, *states])))


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise BundleError("the litert backend needs ai-edge-litert (or tflite-runtime): pip install ai-edge-litert") from None
    return Interpreter


class LiteRTRunner(Runner):
    def __init__(self, bundle: Bundle, model: ModelFile, threads: int = 1):
        super().__init__(bundle, model)
        self.interpreter = _interpreter_class()(model_path=str(model.path), num_threads=threads)
        self.interpreter.allocate_tensors()
        sig = self.interpreter.get_signature_runner()
        ins, outs = sig.get_input_details(), sig.get_output_details()
        self.in_idx = [ins[n]["index"] for n in self.inputs]
        self.out_idx = [outs[n]["index"] for n in self.outputs]
        del sig  # it holds views into the interpreter, which then refuses set_tensor

    def run(self, x, states):
        it = self.interpreter
        for i, v in zip(self.in_idx, [x, *states]):
            it.set_tensor(i, v)
        it.invoke()
        return [it.get_tensor(i) for i in self.out_idx]


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


def open_runner(bundle: Bundle, backend: str, precision: str, threads: int = 1) -> Runner:
    if backend not in BACKENDS:
        raise BundleError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    model = bundle.model(FORMAT[backend], precision)
    cls = {"onnxruntime": OnnxRunner, "litert": LiteRTRunner, "pytorch": TorchRunner}[backend]
    try:
        runner = cls(bundle, model, threads)
        # One step on silence: a file that loads but does not fit the manifest fails here, not mid-stream.
        runner(np.zeros((bundle.signal["bins"], 2), np.float32), runner.initial_state())
    except BundleError:
        raise
    except Exception as e:  # each backend library raises its own types for a bad model file
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise BundleError(f"{model.path}: cannot run it ({detail}); the bundle is damaged or inconsistent, re-export it") from None
    return runner
