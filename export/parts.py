"""What the exports of a model in separately callable parts share (a gated model's trunk, policy
and branches; a two-stage bundle's student and corrector): each part's fp32 file per format, its
quantised files with the tensors they take, and the C arrays of its TFLite files."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from export import firmware, verify
from export.graph import Named

PRECISIONS = {"onnx": ("fp32", "int8"), "tflite": ("fp32", "int8", "int8io")}  # the sets of parts per format


@dataclass
class Part:
    module: nn.Module
    inputs: list[str]
    outputs: list[str]
    example: tuple[torch.Tensor, ...]


def tensors(names: list[str], values) -> list[dict]:
    return [{"name": n, "shape": list(v.shape), "dtype": "float32"} for n, v in zip(names, values)]


def float_io(p: Part) -> dict:
    """Tensor names and shapes of a part; float32 throughout (int8 parts quantise inside)."""
    with torch.no_grad():
        results = p.module(*p.example)
    return {"inputs": tensors(p.inputs, p.example), "outputs": tensors(p.outputs, results)}


def export_fp32(out: Path, fmt: str, graphs: dict[str, Part], metadata: dict, add: Callable, log: Callable) -> None:
    """Every part of ``graphs`` as ``<part>.<fmt>`` in ``out`` (ONNX files carry ``metadata`` and
    their part's name), each added to the manifest's files by ``add``."""
    for name, p in graphs.items():
        log(f"{fmt}: exporting {name} (fp32)")
        path = out / f"{name}.{fmt}"
        if fmt == "onnx":
            from export import to_onnx

            to_onnx.export_fp32(p.module, p.example, p.inputs, p.outputs, path, {"part": name, **metadata})
            ops = to_onnx.op_list(path)
        else:
            from export import to_tflite

            to_tflite.convert(Named(p.module, p.inputs, p.outputs), dict(zip(p.inputs, p.example)), path)
            ops = to_tflite.op_list(path)
        add(path.name, "part", part=name, format=fmt, precision="fp32", io=float_io(p), ops=ops)


def quantise_part(
    src: Path, dst: Path, p: Part, samples: list[dict], attempt: tuple, integer: bool = False, pairs: list[tuple[str, str]] = (),
    keep_float: tuple[str, ...] = (),
) -> dict:  # fmt: skip
    """The fp32 part file ``src`` quantised into ``dst`` with calibration ``samples`` under one
    setting (``attempt``: ONNX (label, scopes kept in float), TFLite (label, activation bits,
    class with 16-bit activations)); ``integer``: integer inputs and outputs (TFLite), each state's
    output with its input's scale (``pairs``: state, output); ``keep_float``: names in the TFLite
    operators' output tensors that stay in float. Returns the file's manifest fields io, ops and
    quantization."""
    label = attempt[0]
    if src.suffix == ".onnx":
        from export import to_onnx

        info = to_onnx.quantize_int8(src, dst, samples, attempt[1])
        return {"io": float_io(p), "ops": to_onnx.op_list(dst), "quantization": {**info, "setting": label}}
    from export import to_tflite

    _, bits, wide = attempt
    info = to_tflite.quantize(src, dst, samples, integer_io=integer, keep_float=keep_float, state_pairs=pairs, activation_bits=bits, wide=wide)
    if integer:
        details = to_tflite.io_details(dst)
        io = {side: [{"name": n, **details[n]} for n in names] for side, names in (("inputs", p.inputs), ("outputs", p.outputs))}
    else:
        io = float_io(p)
    return {"io": io, "ops": to_tflite.op_list(dst), "quantization": {**info, "setting": label}}


def c_models(out: Path, names, add: Callable) -> None:
    """The int8 and int8io TFLite file of every part as a C array (``<part>_<precision>_tflite.h/.cc``)."""
    for name in names:
        for precision in ("int8", "int8io"):
            symbol, embeds = f"{name}_{precision}_tflite", f"{name}.{precision}.tflite"
            firmware.c_model((out / embeds).read_bytes(), symbol, out / f"{symbol}.h", out / f"{symbol}.cc")
            add(f"{symbol}.h", "c_header", embeds=embeds)
            add(f"{symbol}.cc", "c_source", embeds=embeds, symbol=symbol, alignment=16)


def quality_attempts(model: nn.Module, opt, attempts: dict, quantise: Callable, open_bundle: Callable, runner: Callable, what: str,
                     extra: Callable = lambda r: {}) -> dict:  # fmt: skip
    """The manifest's quality section: per format the quantised sets (every precision after fp32)
    judged against ``opt.check["reference"]`` on the verification pairs, re-quantised by
    ``quantise(fmt, attempt)`` with the next of ``attempts[fmt]`` while any is over budget; every
    attempt is kept, the last one's verdicts (with its setting and ``extra(runner)``) stand.
    ``runner(bundle, fmt, precision)`` runs a set of ``open_bundle()``; ``what`` names the sets in the log."""
    quality = verify.quality_record(opt, opt.check["reference"])
    for fmt in opt.formats:
        for i, attempt in enumerate(attempts[fmt]):
            if i:
                opt.log(f"{fmt}: over budget, re-quantising ({attempt[0]})")
                quantise(fmt, attempt)
            bundle = open_bundle()
            runners = {f"{fmt}/{precision}": runner(bundle, fmt, precision) for precision in PRECISIONS[fmt][1:]}
            opt.log(f"quality: {', '.join(runners)} {what} ({attempt[0]}) on {len(opt.pairs)} pair(s)")
            scores = verify.quality(model, runners, opt.pairs, reference=opt.check["reference"])
            verdicts = verify.judge(scores, opt.pesq_budget, opt.sisdr_budget)
            for name, r in runners.items():
                verdicts[name].update(extra(r), setting=attempt[0])
            quality["attempts"].append({"format": fmt, "setting": attempt[0], "results": verdicts})
            if all(v["passed"] for v in verdicts.values()):
                break
        quality["results"].update(verdicts)
    return quality
