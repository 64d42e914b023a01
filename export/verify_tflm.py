"""``python -m export.verify_tflm BUNDLE [--json OUT]``: prove a bundle's integer-I/O TFLite files on
TensorFlow Lite Micro, the interpreter firmware runs.

Checks the bundle first (manifest and file checksums, as every loader does), then for each
integer-I/O TFLite file: that TFLM sees the inputs and outputs the manifest's ``io`` lists (order,
shapes, dtypes, scales, zero points), that every operator has a resolver method, and that TFLM
reproduces the golden vectors, open and closed loop, within ``export.tflm.TOLERANCE``. Reports
what firmware needs: the smallest tensor arena, flash bytes, the op resolver's methods and size,
the time per invoke (x86-64 reference kernels). Exit status 0: passed; 1: a check failed; 2: the
bundle could not be checked (one ``error:`` line says why).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from export import tflm
from runtime.bundle import Bundle, BundleError

INTEGER = ("int8", "int16")
# Golden vectors of a plain bundle's integer model, as export/build.py wrote them before manifests
# named a model's golden file: input and output per frame, states concatenated in manifest order.
PLAIN_MODEL = "model.int8io.tflite"
PLAIN_GOLDEN = {"input": "golden/int8io_input.npy", "output": "golden/int8io_output.npy",
                "states_in": "golden/int8io_states_in.npy", "states_out": "golden/int8io_states_out.npy"}  # fmt: skip


def tensors(io: dict) -> tuple[list[dict], list[dict]]:
    """A model file's input and output tensors in graph order (plain: frame or features, then the
    states in manifest order; gated part: as listed)."""
    if "inputs" in io:
        return io["inputs"], io["outputs"]
    return [io["input"], *io["states"].values()], [io["output"], *io["state_outputs"].values()]


def integer_models(bundle: Bundle) -> list[str]:
    """The bundle's TFLite model files whose every input and output is an integer tensor."""
    return [
        name
        for name, e in bundle.files.items()
        if e.get("kind") in ("model", "part") and e.get("format") == "tflite"
        and all(t["dtype"] in INTEGER for t in sum(tensors(e["io"]), []))
    ]


def _listed(bundle: Bundle, file: str) -> Path:
    if file not in bundle.files:
        raise tflm.TflmError(f"its golden file {file} is not listed in the manifest (so not checksummed); re-export the bundle")
    return bundle.root / file


def golden(bundle: Bundle, model: str) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """The golden inputs and outputs of ``model`` in graph order, and the files they came from.
    Shape: each [frames, *tensor shape]"""
    entry = bundle.files[model]
    ins, outs = tensors(entry["io"])
    spec = entry.get("golden")
    if spec is not None:
        if spec.get("format") != "npz":
            raise tflm.TflmError(f"golden format {spec.get('format')!r} is not one this check reads (npz)")
        path = _listed(bundle, spec["file"])
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise tflm.TflmError(f"{spec['file']}: not a readable npz ({e})") from None
        files = [spec["file"]]
    elif model == PLAIN_MODEL and PLAIN_GOLDEN["input"] in bundle.files:
        files = list(PLAIN_GOLDEN.values())
        a = {k: np.load(_listed(bundle, f), allow_pickle=False) for k, f in PLAIN_GOLDEN.items()}
        output_of = {s.name: s.output for s in bundle.states}
        arrays = {ins[0]["name"]: a["input"], outs[0]["name"]: a["output"]}
        for key, rename in (("states_in", lambda s: s), ("states_out", output_of.get)):
            for piece in bundle.files[PLAIN_GOLDEN[key]]["layout"]:
                shape = entry["io"]["states"][piece["state"]]["shape"]
                flat = a[key][:, piece["offset"] : piece["offset"] + piece["size"]]  # [frames, size]
                arrays[rename(piece["state"])] = flat.reshape(len(flat), *shape)
    else:
        raise tflm.TflmError("integer I/O but no golden vectors in the manifest (a 'golden' entry naming its npz); re-export the bundle")
    for t in ins + outs:
        a = arrays.get(t["name"])
        if a is None:
            raise tflm.TflmError(f"{', '.join(files)}: no golden array for tensor {t['name']}")
        if a.dtype.name != t["dtype"] or list(a.shape[1:]) != t["shape"]:
            want = f"{t['dtype']} [frames, {', '.join(map(str, t['shape']))}]"
            raise tflm.TflmError(f"{', '.join(files)}: golden {t['name']} is {a.dtype.name} {list(a.shape)}, the tensor is {want}")
    frames = {len(arrays[t["name"]]) for t in ins + outs}
    if len(frames) != 1 or 0 in frames:
        raise tflm.TflmError(f"{', '.join(files)}: golden arrays need one common, non-zero number of frames (have {sorted(frames)})")
    return [arrays[t["name"]] for t in ins], [arrays[t["name"]] for t in outs], files


def feedback(bundle: Bundle, ins: list[dict], outs: list[dict]) -> list[tuple[int, int]]:
    """(output index, input index) of every state the file both reads and writes (the call protocol:
    ``<state>_out`` becomes ``<state>`` on the next frame)."""
    i = {t["name"]: k for k, t in enumerate(ins)}
    o = {t["name"]: k for k, t in enumerate(outs)}
    return [(o[s.output], i[s.name]) for s in bundle.states if s.name in i and s.output in o]


def _same(a, b) -> bool:
    return np.array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def check_io(graph: tflm.Graph, seen: tuple[list[dict], list[dict]], listed: tuple[list[dict], list[dict]]) -> None:
    """TFLM's inputs and outputs are the manifest's, in the same order, with the same shape, dtype,
    scale and zero point (the firmware feeds tensors by index, with the manifest's quantisation)."""
    problems = []
    for side, names, got, want in (("input", graph.inputs, seen[0], listed[0]), ("output", graph.outputs, seen[1], listed[1])):
        if len(got) != len(want):
            problems.append(f"TFLM sees {len(got)} {side}s, the manifest's io lists {len(want)}")
            continue
        for k, (name, g, w) in enumerate(zip(names, got, want)):
            if name != w["name"]:
                problems.append(f"{side} {k} is {name} in the graph, {w['name']} in the manifest")
            for key in ("shape", "dtype"):
                if g[key] != w[key]:
                    problems.append(f"{side} {k} ({w['name']}): {key} {g[key]} under TFLM, {w[key]} in the manifest")
            for key in ("scale", "zero_point"):
                if w.get(key) is None or not _same(g[key], w[key]):
                    problems.append(f"{side} {k} ({w['name']}): {key} {g[key]} under TFLM, {w.get(key)} in the manifest")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise tflm.TflmError("TFLM and the manifest's io disagree: " + "; ".join(problems[:3]) + more)


def check_file(bundle: Bundle, name: str) -> dict:
    """Firmware facts and golden replay of one integer-I/O TFLite file of ``bundle``."""
    data = (bundle.root / name).read_bytes()
    graph = tflm.graph(data)
    ins, outs = tensors(bundle.files[name]["io"])
    check_io(graph, tflm.details(data), (ins, outs))
    methods = tflm.resolver(graph.operators)
    g_in, g_out, files = golden(bundle, name)
    arena = tflm.arena(data)
    # Replayed in the minimum arena: every golden frame runs in the size firmware is told.
    gates = {j: t["zero_point"] for j, t in enumerate(outs) if bundle.gating is not None and t["name"] == "logits"}  # branch k opens where logits[k] > it
    replay = tflm.replay(data, g_in, g_out, feedback(bundle, ins, outs), (graph.inputs, graph.outputs), arena_bytes=arena["minimum_bytes"], gates=gates)
    replay["golden"] = files
    facts = {
        "tflite_micro": tflm.version(),
        "flash_bytes": len(data),
        "arena": arena,
        "operators": graph.operators,
        "resolver": methods,
        "resolver_size": len(methods),
        "invoke_ms": replay["invoke_ms"],
    }
    return {"facts": facts, "replay": replay, "passed": replay["passed"]}


def check(root: str | Path) -> dict:
    """Every integer-I/O TFLite file of the bundle at ``root`` on TFLM. Raises BundleError where the
    bundle cannot be used (a checksum, a missing file) or has nothing for TFLM to run."""
    bundle = Bundle(root)
    names = integer_models(bundle)
    if not names:
        raise BundleError(f"{bundle.root}: no integer-I/O TFLite file (e.g. {PLAIN_MODEL}), so nothing for TFLM to run")
    files = {}
    for name in names:
        try:
            files[name] = check_file(bundle, name)
        except tflm.TflmError as e:
            files[name] = {"error": f"{name}: {e}", "passed": False}
    passed = all(f["passed"] for f in files.values())
    return {"tflite_micro": tflm.version(), "tolerance": asdict(tflm.TOLERANCE), "files": files, "passed": passed}


def record(root: Path, files: dict, verification: dict, log) -> None:
    """Run the check on a freshly sealed export at ``root``: each file's facts go into its manifest
    entry (``tflm``), the replays and the verdict into ``verification["tflm"]``. Without tflite-micro
    the check is recorded as skipped, with the reason, and fails nothing."""
    reason = tflm.unavailable()
    if reason:
        verification["tflm"] = {"skipped": reason}
        log(f"TFLM check skipped: {reason}")
        return
    log("tflm: golden vectors replayed under TensorFlow Lite Micro; arena, operators, invoke time")
    result = check(root)
    for name, f in facts(result).items():
        files[name]["tflm"] = f
    verification["tflm"] = replays(result)


def facts(result: dict) -> dict[str, dict]:
    """The firmware facts of every file the check could measure."""
    return {name: r["facts"] for name, r in result["files"].items() if "facts" in r}


def replays(result: dict) -> dict:
    """The check's verdict as the manifest's ``verification["tflm"]``: each file's replay, or why it could not run."""
    files = {name: r.get("replay") or {"error": r["error"], "passed": False} for name, r in result["files"].items()}
    return {"tflite_micro": result["tflite_micro"], "tolerance": result["tolerance"], "files": files, "passed": result["passed"]}


def _worst(tensors: dict) -> str:
    name, worst = max(tensors.items(), key=lambda kv: kv[1]["max_lsb"])
    return f"max {worst['max_lsb']} LSB ({name}, frame {worst['worst_frames'][0]})" if worst["max_lsb"] else "bit-exact"


def describe(replay: dict) -> tuple[str, str]:
    """The open and the closed loop of a replay in words: the largest difference and where, the
    closed loop's state drift and gates, and every tensor beyond the tolerance."""
    texts = []
    for res in (replay["open_loop"], replay["closed_loop"]):
        if res is None:
            texts.append("no states to feed back")
            continue
        judged = {n: v for n, v in res["tensors"].items() if v["judged"]}
        by_lsb = {n: v for n, v in judged.items() if "gates" not in v}
        drift = {n: v for n, v in res["tensors"].items() if not v["judged"]}
        parts = [_worst(by_lsb)] if by_lsb else []
        parts += [f"{n} up to {v['max_lsb']} LSB (mean {v['mean_lsb']:.2f}), {v['gate_flips']} of {v['gates']} gates differ"
                  for n, v in judged.items() if "gates" in v]  # fmt: skip
        if drift:
            parts.append(f"states drift {_worst(drift).replace('max ', 'up to ')}, not judged")
        text = "; ".join(parts)
        bad = [f"{n} {v['gate_flips']} of {v['gates']} gates" if "gates" in v else f"{n} {v['max_lsb']} LSB (mean {v['mean_lsb']:.2f}) at frames {v['worst_frames']}"
               for n, v in judged.items() if not v["passed"]]  # fmt: skip
        texts.append(text + (f"; FAILED: {', '.join(bad)}" if bad else ""))
    return texts[0], texts[1]


def summary(verification_tflm: dict, facts: dict[str, dict]) -> list[str]:
    """Lines that report the check: a heading, then per file its replay and its firmware facts."""
    v = verification_tflm
    if "skipped" in v:
        return [f"TFLM check skipped: {v['skipped']}"]
    tol = v["tolerance"]
    gated = f"; closed loop, gates differing <= {tol['gate_flips']:.0%}" if "gate_flips" in tol else ""
    lines = [f"TFLM (tflite-micro {v['tflite_micro']}): golden vectors replayed; "
             f"tolerance per tensor <= {tol['max_lsb']} LSB, mean <= {tol['mean_lsb']:g} LSB{gated}:"]  # fmt: skip
    for name, r in v["files"].items():
        if "error" in r:
            lines.append(f"  {name:22s} FAILED: {r['error']}")
            continue
        opened, closed = describe(r)
        lines.append(f"  {name:22s} open loop: {opened}; closed loop: {closed}: {'ok' if r['passed'] else 'FAILED'}")
        f = facts.get(name)
        if f:
            a = f["arena"]
            lines.append(f"  {'':22s} arena {a['minimum_bytes']:,} bytes minimum ({a['recommended_bytes']:,} recommended), "
                         f"flash {f['flash_bytes']:,} bytes, {f['resolver_size']} operators, "
                         f"{f['invoke_ms']['median']:.2f} ms per invoke (x86-64 reference kernels, not a device number)")  # fmt: skip
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.verify_tflm", description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    p.add_argument("bundle", type=Path, help="bundle folder (with manifest.json)")
    p.add_argument("--json", type=Path, help="write the full result (replays and firmware facts) to this JSON file")
    args = p.parse_args(argv)
    if not args.bundle.is_dir():
        print(f"error: {args.bundle}: no such folder; pass the folder of an exported bundle", file=sys.stderr)
        return 2
    if args.json is not None and not args.json.resolve().parent.is_dir():
        print(f"error: --json {args.json}: folder {args.json.resolve().parent} does not exist", file=sys.stderr)
        return 2
    try:
        Bundle(args.bundle)  # a damaged or foreign folder is reported as such, with or without TFLM
        reason = tflm.unavailable()
        if reason:
            raise BundleError(f"cannot check {args.bundle}: {reason}")
        result = check(args.bundle)
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in summary(replays(result), facts(result)):
        print(line)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))
    if not result["passed"]:
        print(f"error: TFLM verification of {args.bundle} failed (see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
