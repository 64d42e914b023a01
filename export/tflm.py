"""Integer-I/O TFLite files on TensorFlow Lite Micro (TFLM), the interpreter firmware links, run from
Python by the ``tflite-micro`` package (x86-64 Linux wheels only): golden-vector replay, the smallest
tensor arena, and the operators a firmware op resolver must register. Knows nothing of bundles; the
bundle-level check is ``export/verify_tflm.py``."""
from __future__ import annotations

import contextlib
import os
import re
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np

from export import _flush_all


class TflmError(Exception):
    """A model TFLM cannot load or run as the manifest describes it; the message says why."""


@dataclass(frozen=True)
class Tolerance:
    """How far TFLM's integer outputs may be from the golden vectors, in LSB (steps of each tensor's
    scale), per tensor over all frames. The golden vectors come from LiteRT, whose XNNPACK kernels
    round some requantisations differently from TFLM's reference kernels: with equal inputs a
    CONV_2D, FULLY_CONNECTED or MUL output differs by 1 LSB now and then (tensor by tensor against
    LiteRT; TFLite's own reference kernels differ from TFLM in FULLY_CONNECTED only), and the
    following layers carry and grow it within the frame. Measured on the shipped default bundle (200 golden
    frames): open loop, z 8 LSB (mean 0.24), states up to 17 LSB (gru0_h, mean 0.46); closed loop,
    z 10 LSB (mean 0.47), and z 15 LSB over the 1001 frames of the shipped sample, never a window of
    200 frames above 0.52 mean. A wrong kernel, tensor order or golden file moves whole tensors by
    tens of LSB, far outside both bounds."""

    max_lsb: int = 24  # largest |difference| of any element
    mean_lsb: float = 1.0  # mean |difference| over all elements and frames
    # A gated bundle's logits are judged in the closed loop by the gates they open (a logit above its
    # zero point): the trunk's and the policy's recurrent states both feed them, and their drift moves
    # the logits more than z. Measured on the shipped gated model (TFLM against LiteRT, the trunk and
    # policy in one closed loop, as firmware runs them whether one part holds both or two): logits up
    # to 19 LSB, mean 1.6, and 4 of 2,002 gates different over the 1001 frames of the shipped sample;
    # 2 of 400 over its first 200. The open loop still judges them by LSB.
    gate_flips: float = 0.02  # share of gate decisions that may differ in the closed loop


TOLERANCE = Tolerance()
# TFLM's arena minimum is measured on x86-64 with reference kernels. 32-bit targets need less for
# the interpreter's own structs (half-size pointers), but optimised kernels (CMSIS-NN) may request
# scratch buffers the reference kernels do not; the recommendation adds this margin, in KiB steps.
ARENA_MARGIN = 0.10
_AMPLE_ARENA = 64 << 20  # bytes: for loading before the minimum is known

# Builtin operator (schema name) -> the tflite::MicroMutableOpResolver method that registers it: every
# operator our integer models use, and the ones their layers convert to on other settings.
RESOLVER = {
    "ADD": "AddAdd",
    "CONCATENATION": "AddConcatenation",
    "CONV_2D": "AddConv2D",
    "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D",
    "DEQUANTIZE": "AddDequantize",
    "DIV": "AddDiv",
    "FULLY_CONNECTED": "AddFullyConnected",
    "LEAKY_RELU": "AddLeakyRelu",
    "LOGISTIC": "AddLogistic",
    "MAXIMUM": "AddMaximum",
    "MEAN": "AddMean",
    "MINIMUM": "AddMinimum",
    "MUL": "AddMul",
    "PAD": "AddPad",
    "QUANTIZE": "AddQuantize",
    "RELU": "AddRelu",
    "RESHAPE": "AddReshape",
    "RSQRT": "AddRsqrt",
    "SLICE": "AddSlice",
    "SPLIT": "AddSplit",
    "SPLIT_V": "AddSplitV",
    "SQRT": "AddSqrt",
    "SQUARE": "AddSquare",
    "STRIDED_SLICE": "AddStridedSlice",
    "SUB": "AddSub",
    "SUM": "AddSum",
    "TANH": "AddTanh",
    "TRANSPOSE": "AddTranspose",
    "TRANSPOSE_CONV": "AddTransposeConv",
}


def unavailable() -> str | None:
    """Why TFLM cannot run here, or None where it can."""
    try:
        from tflite_micro.python.tflite_micro import runtime  # noqa: F401
    except (ImportError, OSError) as e:
        return f"tflite-micro is not installed ({e}); it has wheels for x86-64 Linux only, where the export extra brings it"
    return None


def version() -> str:
    from importlib.metadata import version as installed

    return installed("tflite-micro")


@contextlib.contextmanager
def _printed(lines: list[str]):
    """Collect what TFLM prints to the C stdout and stderr (allocation reports, kernel errors) into
    ``lines`` instead of the terminal; the caller reports what matters."""
    _flush_all()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as f:
        try:
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            yield lines
        finally:
            _flush_all()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            f.seek(0)
            lines += f.read().decode(errors="replace").splitlines()


def _open(model: bytes, arena: int, messages: list[str]):
    """A TFLM interpreter of ``model`` in ``arena`` bytes; raises RuntimeError where it does not fit or load."""
    from tflite_micro.python.tflite_micro import runtime

    with _printed(messages):
        return runtime.Interpreter.from_bytes(model, arena_size=arena)


def _load(model: bytes, arena: int):
    """``_open`` for a size meant to fit: a failure is the model's, said in TFLM's words."""
    messages: list[str] = []
    try:
        return _open(model, arena, messages)
    except RuntimeError:
        said = "; ".join(m.strip() for m in messages if m.strip()) or "no message"
        raise TflmError(f"TFLM cannot load it in a {arena}-byte arena: {said}") from None


def _fits(model: bytes, arena: int) -> bool:
    try:
        ip = _open(model, arena, [])
        with _printed([]):
            ip.invoke()
        return True
    except RuntimeError:
        return False


@dataclass(frozen=True)
class Graph:
    """What the flatbuffer says about the main subgraph: its tensor names in graph order (from the
    signature, the names the manifest uses) and its operators."""

    inputs: list[str]
    outputs: list[str]
    operators: dict[str, int]  # builtin name -> uses


def graph(model: bytes) -> Graph:
    """Read the flatbuffer (TFLM's own schema module) without running it."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    m = schema.Model.GetRootAs(model, 0)
    builtin = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for i in range(m.OperatorCodesLength()):
        c = m.OperatorCodes(i)
        code = max(c.BuiltinCode(), c.DeprecatedBuiltinCode())  # codes above 127 live in the newer field only
        codes.append(f"CUSTOM:{c.CustomCode().decode()}" if code == schema.BuiltinOperator.CUSTOM else builtin.get(code, f"#{code}"))
    ops: Counter[str] = Counter()
    for s in range(m.SubgraphsLength()):
        g = m.Subgraphs(s)
        ops.update(codes[g.Operators(k).OpcodeIndex()] for k in range(g.OperatorsLength()))
    g = m.Subgraphs(0)
    names = {}
    if m.SignatureDefsLength():
        sig = m.SignatureDefs(0)
        names = {("in", sig.Inputs(i).TensorIndex()): sig.Inputs(i).Name().decode() for i in range(sig.InputsLength())}
        names |= {("out", sig.Outputs(i).TensorIndex()): sig.Outputs(i).Name().decode() for i in range(sig.OutputsLength())}

    def name(side, t):
        return names.get((side, t), g.Tensors(t).Name().decode())

    return Graph(
        [name("in", g.Inputs(i)) for i in range(g.InputsLength())],
        [name("out", g.Outputs(i)) for i in range(g.OutputsLength())],
        dict(sorted(ops.items())),
    )


def resolver(operators: dict[str, int] | list[str]) -> list[str]:
    """The ``tflite::MicroMutableOpResolver`` methods that register ``operators``, in order."""
    unknown = sorted(op for op in operators if op not in RESOLVER)
    if unknown:
        raise TflmError(f"operator(s) {', '.join(unknown)} have no MicroMutableOpResolver method in export/tflm.py RESOLVER; "
                        "add the method TFLM registers them with (tensorflow/lite/micro/micro_mutable_op_resolver.h)")  # fmt: skip
    return [RESOLVER[op] for op in sorted(operators)]


def arena(model: bytes) -> dict:
    """The smallest tensor arena TFLM loads and runs ``model`` in, found by bisection from the
    RecordingMicroAllocator's total (below the minimum every size fails, from it every size works:
    the interval keeps one failing and one working end until they are one byte apart)."""
    ip = _load(model, _AMPLE_ARENA)
    messages: list[str] = []
    try:
        with _printed(messages):
            ip.invoke()
            ip.print_allocations()
    except RuntimeError:
        raise TflmError(f"TFLM cannot run it: {'; '.join(m.strip() for m in messages if m.strip()) or 'no message'}") from None
    use = {k: int(v) for k, v in re.findall(r"Arena allocation (total|head|tail) (\d+) bytes", "\n".join(messages))}
    works, fails = use["total"], use["total"] - 1
    while not _fits(model, works):
        works *= 2
        if works > _AMPLE_ARENA:
            raise TflmError(f"no arena up to {_AMPLE_ARENA} bytes runs it")
    while fails > 0 and _fits(model, fails):  # the recorded use is not a lower bound after all
        works, fails = fails, fails // 2
    while works - fails > 1:
        mid = (works + fails) // 2
        works, fails = (mid, fails) if _fits(model, mid) else (works, mid)
    return {
        "minimum_bytes": works,
        "fails_at_bytes": fails,
        "recommended_bytes": -(-int(works * (1 + ARENA_MARGIN)) // 1024) * 1024,
        "margin": f"+{ARENA_MARGIN:.0%}, rounded up to 1 KiB",
        "in_use_bytes": use["total"],  # after loading: what the recording allocator reports
        "persistent_bytes": use["tail"],  # interpreter structs, kernel data, quantisation parameters
        "planned_bytes": use["head"],  # activations and scratch buffers, overlapped by the memory planner
        "measured_on": "x86-64, TFLM reference kernels",
    }


def details(model: bytes, arena_bytes: int = _AMPLE_ARENA) -> tuple[list[dict], list[dict]]:
    """TFLM's view of every graph input and output, in graph order: shape, dtype, scale, zero point."""
    n = graph(model)
    ip = _load(model, arena_bytes)

    def spec(d):
        q = d["quantization_parameters"]
        scale = [float(s) for s in q["scales"]]
        zero = [int(z) for z in q["zero_points"]]
        return {"shape": [int(v) for v in d["shape"]], "dtype": np.dtype(d["dtype"]).name,
                "scale": scale[0] if len(scale) == 1 else scale, "zero_point": zero[0] if len(zero) == 1 else zero}  # fmt: skip

    return [spec(ip.get_input_details(i)) for i in range(len(n.inputs))], [spec(ip.get_output_details(j)) for j in range(len(n.outputs))]


def _compare(got: np.ndarray, want: np.ndarray, judged: bool, tol: Tolerance) -> dict:
    """Differences in LSB of one tensor over all frames. Shape: got, want [frames, ...]"""
    d = np.abs(got.astype(np.int32) - want.astype(np.int32)).reshape(len(want), -1)  # [frames, elements]
    worst = d.max(1)  # [frames]
    top = int(worst.max())
    out = {
        "max_lsb": top,
        "mean_lsb": round(float(d.mean()), 4),
        "frames_differing": int((worst > 0).sum()),
        "worst_frames": np.flatnonzero(worst == top)[:5].tolist() if top else [],
        "judged": judged,
    }
    out["passed"] = not judged or (top <= tol.max_lsb and out["mean_lsb"] <= tol.mean_lsb)
    return out


def _gates(got: np.ndarray, want: np.ndarray, zero_point: int, tol: Tolerance) -> dict:
    """The closed loop's verdict on a gated bundle's logits: their LSB drift (reported), and the gates
    they open (a logit above ``zero_point``) against the golden ones (judged).

    Shape: got, want [frames, ...]"""
    out = _compare(got, want, True, tol)
    flips = int(((got > zero_point) != (want > zero_point)).sum())
    out.update(gates=int(want.size), gate_flips=flips, passed=flips <= tol.gate_flips * want.size)
    return out


def replay(
    model: bytes,
    inputs: list[np.ndarray],
    outputs: list[np.ndarray],
    feedback: list[tuple[int, int]] = (),
    names: tuple[list[str], list[str]] | None = None,
    tolerance: Tolerance = TOLERANCE,
    arena_bytes: int = _AMPLE_ARENA,
    gates: dict[int, int] | None = None,
) -> dict:
    """Run ``model`` on TFLM frame by frame and compare every output with the golden vectors, twice:
    open loop (the golden inputs, states included, fed every frame: what each invoke computes) and
    closed loop (each state output fed back as the next frame's state input, ``feedback`` pairs of
    (output index, input index), as the call protocol says: what firmware runs). Where the golden
    vectors themselves did not feed a state back (a gated branch's zeroed or held state while it
    was skipped), the closed loop takes it from them too. Open loop judges every output; closed loop
    judges the outputs that are not states, and reports the states' drift; ``gates`` (output index
    -> zero point: a gated bundle's logits) are judged there by the gates they open (``_gates``).

    Shape: inputs[i] [frames, *graph input i], outputs[j] [frames, *graph output j], graph order."""
    frames = len(inputs[0])
    in_names, out_names = names or ([f"input{i}" for i in range(len(inputs))], [f"output{j}" for j in range(len(outputs))])
    state_outs = {j for j, _ in feedback}
    ip = _load(model, arena_bytes)
    inputs = [np.ascontiguousarray(a) for a in inputs]
    times: list[float] = []

    def run(closed: bool) -> dict:
        ip.reset()
        got = [np.empty_like(o) for o in outputs]
        restarts = 0
        for t in range(frames):
            for i, a in enumerate(inputs):
                ip.set_input(a[t], i)
            if closed and t:
                for j, i in feedback:
                    if np.array_equal(inputs[i][t], outputs[j][t - 1]):
                        ip.set_input(got[j][t - 1], i)
                    else:
                        restarts += 1
            start = time.perf_counter()
            ip.invoke()
            times.append(time.perf_counter() - start)
            for j in range(len(outputs)):
                got[j][t] = ip.get_output(j)
        tensors = {
            out_names[j]: _gates(got[j], outputs[j], gates[j], tolerance) if closed and j in (gates or {})
            else _compare(got[j], outputs[j], not closed or j not in state_outs, tolerance)
            for j in range(len(outputs))
        }  # fmt: skip
        res = {
            "bit_exact": all(v["max_lsb"] == 0 for v in tensors.values()),
            "passed": all(v["passed"] for v in tensors.values()),
            "tensors": tensors,
        }
        if closed:
            res["golden_states_used"] = restarts
        return res

    open_loop = run(closed=False)
    invoke = sorted(times)
    closed_loop = run(closed=True) if feedback else None
    loops = [r for r in (open_loop, closed_loop) if r]
    return {
        "frames": frames,
        "inputs": in_names,
        "outputs": out_names,
        "tolerance": asdict(tolerance),
        "open_loop": open_loop,
        "closed_loop": closed_loop,
        "bit_exact": all(r["bit_exact"] for r in loops),
        "passed": all(r["passed"] for r in loops),
        "invoke_ms": {"median": round(1e3 * statistics.median(invoke), 4), "max": round(1e3 * invoke[-1], 4),
                      "measured_on": "x86-64 host, TFLM reference kernels: not a device number"},  # fmt: skip
    }
