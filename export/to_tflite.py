"""PyTorch -> LiteRT conversion and int8 quantisation.

The only module that imports litert-torch, ai-edge-quantizer and ai-edge-litert's flatbuffer
tools: these packages are young and get renamed, so every call into them lives here, against the
versions pinned in pyproject.toml (litert-torch 0.10, ai-edge-quantizer 0.10, ai-edge-litert 2.3).

Quantisation runs ai-edge-quantizer on the fp32 flatbuffer with min/max calibration over graph
inputs recorded while streaming real audio, then repairs what that release gets wrong (a
signature that points at a tensor the quantiser replaced; float outputs left integer) and, for
integer I/O, makes every state's output carry exactly its input's scale and zero point, so
firmware copies the output state buffer straight back into the input.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch.nn as nn

from export import quiet

SIGNATURE = "serving_default"


def convert(module: nn.Module, sample_kwargs: dict, path: Path) -> None:
    """fp32 flatbuffer of ``module`` (keyword inputs, dict outputs: the names become the
    signature's)."""
    with quiet():
        import litert_torch

        litert_torch.convert(module.eval(), sample_args=(), sample_kwargs=sample_kwargs).export(str(path))


def quantize(
    fp32: Path,
    out: Path,
    samples: list[dict[str, np.ndarray]],
    integer_io: bool,
    keep_float: tuple[str, ...] = (),
    state_pairs: list[tuple[str, str]] = (),
    activation_bits: int = 8,
    wide: str | None = None,
) -> dict:
    """Static int8-weight quantisation of ``fp32`` into ``out``; returns what was done.

    ``keep_float``: class names of submodules whose ops stay in float. ``integer_io``: integer
    graph inputs and outputs (else float, with (de)quantise ops inside). ``activation_bits`` 8
    or 16 (a16w8); ``wide``: class name of a submodule whose activations get 16 bits anyway.
    """
    with quiet():
        from ai_edge_quantizer import calibrator, qtyping, quantizer, recipe, recipe_manager
        from ai_edge_quantizer.utils import qsv_utils

        op = qtyping.TFLOperationName
        qt = quantizer.Quantizer(str(fp32))
        qt.load_quantization_recipe(recipe.static_wi8_ai8() if activation_bits == 8 else recipe.static_wi8_ai16())
        for name in keep_float:
            qt.update_quantization_recipe(regex=f".*{name}.*", operation_name=op.ALL_SUPPORTED, algorithm_key="no_quantize")
        if wide:
            qt.add_static_config(regex=f".*{wide}.*", operation_name=op.ALL_SUPPORTED, activation_num_bits=16, weight_num_bits=8)
        if not integer_io:
            for which in (op.INPUT, op.OUTPUT):
                qt.update_quantization_recipe(regex=".*", operation_name=which, algorithm_key="no_quantize")
        manager = recipe_manager.RecipeManager()
        manager.load_quantization_recipe(qt.get_quantization_recipe())
        # The default calibration update is a moving average dominated by the last few samples,
        # which clips the recurrent states; the global min/max keeps every range seen.
        cal = calibrator.Calibrator(fp32.read_bytes(), num_threads=1, qsv_update_func=qsv_utils.min_max_update)
        cal.calibrate({SIGNATURE: samples}, manager)
        qsvs = cal.get_model_qsvs()
        if integer_io:
            _unify(qsvs, state_pairs, _signature_tensors(_read(fp32.read_bytes())))
        result = qt.quantize(qsvs)
    model = _read(result.quantized_model)
    _fix_signature_outputs(model)
    if not integer_io:
        _dequantize_outputs(model)
    else:
        _force_state_qparams(model, state_pairs)
    out.write_bytes(_write(model))
    return {
        "method": "ai-edge-quantizer static, min/max calibration",
        "weights": "int8 symmetric, per output channel",
        "activations": f"int{activation_bits}" + (" symmetric" if activation_bits == 16 else " asymmetric") + ", per tensor",
        "calibration_frames": len(samples),
        "kept_float": list(keep_float),
        "int16_activations": "all" if activation_bits == 16 else ([wide] if wide else []),
        "io": "integer" if integer_io else "float",
    }


def interpreter(path: Path, threads: int = 1):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(path), num_threads=threads)


def io_details(path: Path) -> dict[str, dict]:
    """Signature tensors by name: shape, dtype and, when quantised, scale and zero point."""
    with quiet():  # the interpreter announces its delegate
        sig = interpreter(path).get_signature_runner(SIGNATURE)
    out = {}
    for d in (*sig.get_input_details().items(), *sig.get_output_details().items()):
        name, info = d
        entry = {"shape": [int(v) for v in info["shape"]], "dtype": np.dtype(info["dtype"]).name}
        scale, zero = info["quantization"]
        if scale:
            entry.update(scale=float(scale), zero_point=int(zero))
        out[name] = entry
    return out


def op_list(path: Path) -> dict[str, int]:
    """Operator counts, as ``NAME`` for float ops and ``NAME(INT8)`` etc. for integer ones."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    model = _read(path.read_bytes())
    counts = Counter()
    for sg in model.subgraphs:
        for o in sg.operators:
            name = names.get(fbu.get_builtin_code_from_operator_code(model.operatorCodes[o.opcodeIndex]), "CUSTOM")
            kind = types[sg.tensors[o.outputs[0]].type]
            counts[name if kind == "FLOAT32" else f"{name}({kind})"] += 1
    return dict(sorted(counts.items()))


# ---------------------------------------------------------------- flatbuffer repairs


def _read(data: bytes):
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    return fbu.read_model_from_bytearray(bytearray(data))


def _write(model) -> bytes:
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    return bytes(fbu.convert_object_to_bytearray(model))


def _name(t) -> str:
    return t.name.decode() if isinstance(t.name, bytes) else t.name


def _signature_tensors(model) -> dict[str, str]:
    """Signature input/output name -> tensor name (an output can be an input tensor itself)."""
    sd = next(s for s in model.signatureDefs if s.signatureKey.decode() == SIGNATURE)
    sg = model.subgraphs[sd.subgraphIndex]
    return {t.name.decode(): _name(sg.tensors[t.tensorIndex]) for t in (*sd.inputs, *sd.outputs)}


def _unify(qsvs: dict, pairs, tensors: dict[str, str]) -> None:
    """Give each state's input and output tensor the union of their calibrated ranges, so the
    quantiser derives one scale and zero point for both. Groups connect through shared tensors
    (the first conv's state output is the features input itself), so they are merged first."""
    parent: dict[str, str] = {}

    def root(x):
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for a, b in pairs:
        parent[root(tensors[a])] = root(tensors[b])
    groups: dict[str, list[str]] = {}
    for name in parent:
        groups.setdefault(root(name), []).append(name)
    for names in groups.values():
        lo = np.min([np.min(qsvs[n]["min"]) for n in names])
        hi = np.max([np.max(qsvs[n]["max"]) for n in names])
        for n in names:
            qsvs[n] = {"min": np.full_like(qsvs[n]["min"], lo), "max": np.full_like(qsvs[n]["max"], hi)}


def _fix_signature_outputs(model) -> None:
    """The quantiser can put a requantise op in front of a graph output that is also used inside
    the graph and update the subgraph's outputs but not the signature: re-point the signature."""
    for sd in model.signatureDefs or []:
        sg = model.subgraphs[sd.subgraphIndex]
        outs = list(sg.outputs)
        for t in sd.outputs:
            if t.tensorIndex in outs:
                continue
            old = _name(sg.tensors[t.tensorIndex])
            candidates = [o for o in outs if _name(sg.tensors[o]).startswith(old)]
            if len(candidates) != 1:
                raise RuntimeError(f"cannot resolve quantised signature output {t.name!r}")
            t.tensorIndex = candidates[0]


def _append_unary(model, sg, sig_tensor, builtin, tensor_type, qparams, suffix) -> None:
    """Append ``op(output) -> new tensor`` and make the new tensor the graph/signature output."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    old = sig_tensor.tensorIndex
    t = schema.TensorT()
    t.shape, t.type, t.buffer = list(sg.tensors[old].shape), tensor_type, 0
    t.name = (_name(sg.tensors[old]) + suffix).encode()
    if qparams is not None:
        t.quantization = schema.QuantizationParametersT()
        t.quantization.scale, t.quantization.zeroPoint = list(qparams[0]), list(qparams[1])
    sg.tensors.append(t)
    new = len(sg.tensors) - 1
    code = next((i for i, c in enumerate(model.operatorCodes) if fbu.get_builtin_code_from_operator_code(c) == builtin), None)
    if code is None:
        c = schema.OperatorCodeT()
        c.builtinCode, c.deprecatedBuiltinCode, c.version = builtin, min(builtin, 127), 1
        model.operatorCodes.append(c)
        code = len(model.operatorCodes) - 1
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = code, [old], [new]
    sg.operators.append(op)
    sg.outputs = [new if o == old else o for o in sg.outputs]
    sig_tensor.tensorIndex = new


def _dequantize_outputs(model) -> None:
    """Float-I/O models: an output the quantiser left integer gets a DEQUANTIZE."""
    from ai_edge_litert import schema_py_generated as schema

    for sd in model.signatureDefs:
        sg = model.subgraphs[sd.subgraphIndex]
        for t in sd.outputs:
            if sg.tensors[t.tensorIndex].type in (schema.TensorType.INT8, schema.TensorType.INT16):
                _append_unary(model, sg, t, schema.BuiltinOperator.DEQUANTIZE, schema.TensorType.FLOAT32, None, "_dequantized")


def _qparams(t):
    q = t.quantization
    if q is None or q.scale is None or len(q.scale) == 0:
        return None
    return list(np.asarray(q.scale, np.float32)), list(np.asarray(q.zeroPoint, np.int64))


def _force_state_qparams(model, pairs) -> None:
    """Each state output gets exactly its input's scale and zero point (a requantise op where
    they differ, even in the last bit)."""
    from ai_edge_litert import schema_py_generated as schema

    sd = next(s for s in model.signatureDefs if s.signatureKey.decode() == SIGNATURE)
    sg = model.subgraphs[sd.subgraphIndex]
    ins = {t.name.decode(): t for t in sd.inputs}
    outs = {t.name.decode(): t for t in sd.outputs}
    for a, b in pairs:
        t_in, t_out = sg.tensors[ins[a].tensorIndex], sg.tensors[outs[b].tensorIndex]
        q_in = _qparams(t_in)
        if q_in is None or q_in == _qparams(t_out):
            continue
        if t_in.type != t_out.type:
            raise RuntimeError(f"state {a}: input and output types differ after quantisation")
        _append_unary(model, sg, outs[b], schema.BuiltinOperator.QUANTIZE, t_out.type, q_in, "_requantized")
