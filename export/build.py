"""Build a verified bundle from a checkpoint into a folder (the CLI then moves it into place)."""
from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch.nn as nn

from distill import __version__
from distill.models import config_to_dict, cost
from export import c_reference, calibration, firmware, quiet, verify, verify_tflm
from export.graph import Core, Named, Step, io_names, prepare
from runtime.bundle import MANIFEST, SCHEMA, SCHEMA_VERSION, Bundle, seal, sha256
from runtime.backends import open_runner

KEEP_FLOAT_ONNX = ("model.features", "model.bound")  # pow/sqrt/div: int8 would flush quiet bins
GRU_ONNX = ("model.rnns",)
GRU_TFLITE = "GroupedGRU"


class ExportError(Exception):
    """An export that cannot be completed as asked; the message says why."""


@dataclass
class Options:
    formats: tuple[str, ...] = ("onnx", "tflite")
    parity_audio: np.ndarray | None = None  # real speech streamed for the parity check
    parity_name: str = ""
    calibration: list[np.ndarray] = field(default_factory=list)  # real audio for int8 calibration
    calibration_frames: int = 1000
    pairs: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (noisy, clean): verification pairs of the quality check
    pairs_name: str = ""
    check: dict = field(default_factory=dict)  # verify.model_check on the pairs: fp32 reference scores, verdict, override
    parity_tolerance: float = 1e-4
    pesq_budget: float = 0.10
    sisdr_budget: float = 0.5
    golden_frames: int = 200
    log: callable = print


def _spec(shape, dtype="float32", q=None) -> dict:
    d = {"shape": [int(v) for v in shape], "dtype": dtype}
    if q:
        d.update(scale=q["scale"], zero_point=q["zero_point"])
    return d


def _io(model: nn.Module, graph: str, details: dict | None = None) -> dict:
    """Tensor names, shapes and dtypes (and scale/zero point where integer) of one model file."""
    core = graph == "core"
    ins, outs = io_names(model, core)
    bins = model.config.stft.bins
    shapes_in = [(1, 3, 1, bins) if core else (1, bins, 2)] + [tuple(s.shape) for s in model.initial_state(1)]
    shapes_out = [(1, 2, 1, bins) if core else (1, bins, 2)] + shapes_in[1:]
    d = details or {}

    def spec(name, shape):
        info = d.get(name, {})
        return {"name": name, **_spec(shape, info.get("dtype", "float32"), info if "scale" in info else None)}

    return {
        "graph": graph,
        "input": spec(ins[0], shapes_in[0]),
        "output": spec(outs[0], shapes_out[0]),
        "states": {n: spec(n, s) for n, s in zip(ins[1:], shapes_in[1:])},
        "state_outputs": {n: spec(n, s) for n, s in zip(outs[1:], shapes_out[1:])},
    }


def _signal(model) -> dict:
    c = model.config.stft
    return {
        "sample_rate": c.sample_rate,
        "n_fft": c.n_fft,
        "win_length": c.win_length,
        "hop": c.hop,
        "bins": c.bins,
        "window": "sqrt_hann: w[n] = sqrt(0.5 - 0.5 cos(2 pi n / win_length)), n = 0 .. win_length-1 (periodic)",
        "analysis": "X_t = rfft(w * x[t*hop - (win_length-hop) : t*hop + hop], n_fft); the stream starts with win_length-hop zeros",
        "synthesis": "y += w * irfft(mask_t * X_t) overlap-added at t*hop; with this window no normalisation is needed",
        "frame_layout": "[bins, 2]: real and imaginary part per bin",
        "latency_ms": c.latency_ms,
        "lookahead_frames": 0,
    }


def _states(model) -> list[dict]:
    ins, outs = io_names(model)
    return [{"name": a, "output": b, "shape": list(s.shape), "init": 0.0} for a, b, s in zip(ins[1:], outs[1:], model.initial_state(1))]


def _transforms(model) -> dict:
    return {
        "features": {
            "power": model.config.compress,
            "formula": "m = sqrt(max(re^2 + im^2, 1e-12)); c = m^power; features = [c, re*c/m, im*c/m] as [1, 3, 1, bins]",
            "used_by": "core graphs: computed before the graph, in float",
        },
        "mask_bound": {
            "formula": "r = sqrt(max(z_re^2 + z_im^2, 1e-12)); mask = z * tanh(r) / r, z from the [1, 2, 1, bins] output",
            "used_by": "core graphs: computed after the graph, in float",
        },
        "apply": "enhanced = mask * X (complex multiplication per bin)",
    }


CALL_PROTOCOL = (
    "Per frame: feed the frame (or, for core graphs, its features) and every state; read the output and "
    "every <state>_out; feed each <state>_out back as <state> on the next frame. States start as tensors "
    "filled with 'init' (quantised with the input's scale and zero point on integer I/O)."
)


def manifest(model, checkpoint_info: dict, files: dict, verification: dict) -> dict:
    cst = cost(model)
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "producer": _versions(),
        "model": {
            "name": checkpoint_info["name"],
            "config": config_to_dict(model.config),
            "checkpoint": checkpoint_info,
            "params": cst.params,
            "macs_per_frame": cst.macs_per_frame,
            "mmacs_per_second": round(cst.mmacs_per_second, 3),
        },
        "signal": _signal(model),
        "transforms": _transforms(model),
        "states": _states(model),
        "call_protocol": CALL_PROTOCOL,
        "files": files,
        "verification": verification,
    }


def _versions() -> dict:
    out = {"tiny_denoise": __version__, "python": platform.python_version()}
    for pkg in ("torch", "onnx", "onnxruntime", "litert_torch", "ai_edge_quantizer", "ai_edge_litert"):
        try:
            out[pkg] = __import__(pkg).__version__
        except (ImportError, AttributeError):
            pass
    return out


def build(model: nn.Module, checkpoint_info: dict, out: Path, opt: Options) -> dict:
    """Export, verify and describe ``model`` into the (empty) folder ``out``; returns the manifest.
    ``manifest["verification"]["passed"]`` says whether the bundle may ship."""
    log = opt.log
    model = model.eval()
    ins, outs = io_names(model)
    cins, couts = io_names(model, core=True)
    state_pairs = list(zip(ins[1:], outs[1:]))
    log(f"calibration: tracing {len(opt.calibration)} file(s) and the parity audio through PyTorch")
    reference = calibration.trace(model, opt.parity_audio)
    traces = [calibration.trace(model, x) for x in opt.calibration]
    files: dict[str, dict] = {}
    example = model.initial_state(1)

    def add(name, kind, **info):
        files[name] = {"kind": kind, **info, "sha256": sha256(out / name), "bytes": (out / name).stat().st_size}

    def quantisation_attempts(fmt):
        """Ever less aggressive settings, tried in order until the quality budget holds."""
        if fmt == "onnx":
            return [("int8", KEEP_FLOAT_ONNX), ("int8, GRU in float", KEEP_FLOAT_ONNX + GRU_ONNX)]
        return [("int8", 8, None), ("int8, GRU activations int16", 8, GRU_TFLITE), ("int16 activations", 16, None)]

    log("pytorch: saving the reference step program")
    import torch

    with quiet():
        program = torch.export.export(Step(prepare(model)).eval(), (reference_frame(model), *example))
        torch.export.save(program, str(out / "model.pt2"))
    add("model.pt2", "model", format="pytorch", precision="fp32", io=_io(model, "step"), ops=["torch.export program (reference)"])

    if "onnx" in opt.formats:
        from export import to_onnx

        log("onnx: exporting fp32 step")
        g = prepare(model)
        meta = {"signal": _signal(model), "states": _states(model), "call_protocol": CALL_PROTOCOL}
        to_onnx.export_fp32(Step(g), (reference_frame(model), *example), ins, outs, out / "model.onnx", meta)
        add("model.onnx", "model", format="onnx", precision="fp32", io=_io(model, "step"), ops=to_onnx.op_list(out / "model.onnx"))

    if "tflite" in opt.formats:
        from export import to_tflite

        log("tflite: converting fp32 step and core")
        g = prepare(model, tflite=True)
        to_tflite.convert(Named(Step(g), ins, outs), dict(zip(ins, (reference_frame(model), *example))), out / "model.tflite")
        add("model.tflite", "model", format="tflite", precision="fp32", io=_io(model, "step"), ops=to_tflite.op_list(out / "model.tflite"))
        core_fp32 = out.parent / f".{out.name}.core.tflite"
        to_tflite.convert(Named(Core(g), cins, couts), dict(zip(cins, (reference_features(model), *example))), core_fp32)

    def write_manifest(verification):
        for name, entry in files.items():
            entry["sha256"] = sha256(out / name)
            entry["bytes"] = (out / name).stat().st_size
        (out / MANIFEST).write_text(json.dumps(seal(manifest(model, checkpoint_info, files, verification)), indent=1))

    def quantise(fmt, attempt):
        """(Re)write this format's int8 files with the given attempt; returns their names."""
        if fmt == "onnx":
            from export import to_onnx

            label, keep = attempt
            info = to_onnx.quantize_int8(out / "model.onnx", out / "model.int8.onnx", calibration.samples(traces, ins, False, opt.calibration_frames), keep)
            add("model.int8.onnx", "model", format="onnx", precision="int8", io=_io(model, "step"), ops=to_onnx.op_list(out / "model.int8.onnx"),
                quantization={**info, "setting": label})  # fmt: skip
            return ["model.int8.onnx"]
        from export import to_tflite

        label, bits, wide = attempt
        core_samples = calibration.samples(traces, cins, True, opt.calibration_frames)
        names = []
        for name, integer in (("model.int8.tflite", False), ("model.int8io.tflite", True)):
            info = to_tflite.quantize(core_fp32, out / name, core_samples, integer_io=integer, state_pairs=state_pairs, activation_bits=bits, wide=wide)
            precision = "int8io" if integer else "int8"
            add(name, "model", format="tflite", precision=precision, io=_io(model, "core", to_tflite.io_details(out / name)),
                ops=to_tflite.op_list(out / name), quantization={**info, "setting": label})  # fmt: skip
            names.append(name)
        return names

    verification = {"model": opt.check, "parity": {}, "quality": None, "passed": False}
    int8: dict[str, list[str]] = {}
    attempts = {fmt: quantisation_attempts(fmt) for fmt in opt.formats}
    for fmt in opt.formats:
        log(f"{fmt}: quantising ({attempts[fmt][0][0]})")
        int8[fmt] = quantise(fmt, attempts[fmt][0])

    def runners(names):
        write_manifest(verification)
        bundle = Bundle(out)
        backend = {"onnx": "onnxruntime", "tflite": "litert", "pytorch": "pytorch"}
        with quiet():  # interpreters announce their delegates
            return {n: open_runner(bundle, backend[files[n]["format"]], files[n]["precision"]) for n in names}

    log(f"parity: streaming {len(reference.frames)} frames of {opt.parity_name} through every model")
    for name, runner in runners(list(files)).items():
        res = verify.parity(runner, reference)
        res["tolerance"] = opt.parity_tolerance if files[name]["precision"] == "fp32" else None
        res["passed"] = res["tolerance"] is None or res["mask_max_abs_error"] <= opt.parity_tolerance
        verification["parity"][name] = res
    verification["parity_audio"] = opt.parity_name

    reference_scores = opt.check["reference"]
    quality = verify.quality_record(opt, reference_scores)
    for fmt in opt.formats:
        for i, attempt in enumerate(attempts[fmt]):
            if i:
                log(f"{fmt}: over budget, re-quantising ({attempt[0]})")
                int8[fmt] = quantise(fmt, attempt)
            log(f"quality: {', '.join(int8[fmt])} ({attempt[0]}) on {len(opt.pairs)} pair(s)")
            scores = verify.quality(model, runners(int8[fmt]), opt.pairs, reference=reference_scores)
            verdicts = verify.judge(scores, opt.pesq_budget, opt.sisdr_budget)
            quality["attempts"].append({"format": fmt, "setting": attempt[0], "results": verdicts})
            if all(v["passed"] for v in verdicts.values()):
                break
        quality["results"].update(verdicts)
        for name in int8[fmt]:  # the files may have been re-quantised since the parity pass
            entry = verification["parity"][name]
            entry.update(verify.parity(runners([name])[name], reference))
    verification["quality"] = quality

    if "tflite" in opt.formats:
        log("firmware: C array and golden vectors")
        int8io = runners(["model.int8io.tflite"])["model.int8io.tflite"]
        _firmware(model, out, files, reference, opt.golden_frames, int8io, add)
        if not c_reference.skip_loop({"model": int8io.model}, verification, log):
            c_reference.write(out, int8io, opt.parity_audio, add)
        core_fp32.unlink(missing_ok=True)
        write_manifest(verification)  # the TFLM check reads the bundle as firmware's build would: sealed, checksums verified
        verify_tflm.record(out, files, verification, log)

    verification["passed"] = passed(verification)
    card = out / "README.md"
    card.write_text(model_card(manifest(model, checkpoint_info, files, verification)))
    add("README.md", "model_card")
    write_manifest(verification)
    return json.loads((out / MANIFEST).read_text())


def passed(verification: dict) -> bool:
    """Every parity and quality check passed, the TFLM replay passed (where it ran: it is skipped
    where tflite-micro is not installed), and the model check passed or was overridden."""
    model_ok = verification["model"]["passed"] or verification["model"]["overridden"]
    checks = [*verification["parity"].values(), *verification["quality"]["results"].values()]
    tflm = verification.get("tflm", {"skipped": "no integer TFLite model"})
    return bool(model_ok and all(v["passed"] for v in checks) and ("skipped" in tflm or tflm["passed"]))


def reference_frame(model):
    import torch

    return torch.zeros(1, model.config.stft.bins, 2)


def reference_features(model):
    import torch

    return torch.zeros(1, 3, 1, model.config.stft.bins)


def _firmware(model, out: Path, files: dict, reference, n: int, runner, add) -> None:
    """C array of the integer-I/O model, and golden vectors: its int8 inputs, states and outputs
    over the first ``n`` frames of the parity audio, plus the fp32 frames and masks."""
    from runtime.backends import compressed_features, quantize

    data = (out / "model.int8io.tflite").read_bytes()
    firmware.c_model(data, "model_int8io_tflite", out / "model_int8io_tflite.h", out / "model_int8io_tflite.cc")
    add("model_int8io_tflite.h", "c_header", embeds="model.int8io.tflite")
    add("model_int8io_tflite.cc", "c_source", embeds="model.int8io.tflite", symbol="model_int8io_tflite", alignment=16)

    n = min(n, len(reference.frames))
    io = files["model.int8io.tflite"]["io"]
    states = runner.initial_state()
    x_in, z_out, s_in, s_out = [], [], [], []
    for t in range(n):
        x = quantize(compressed_features(reference.frames[t], runner.power)[:, None, :][None], io["input"])
        s_in.append(np.concatenate([s.ravel() for s in states]))
        res = runner.run(x, states)
        states = res[1:]
        x_in.append(x)
        z_out.append(res[0])
        s_out.append(np.concatenate([s.ravel() for s in states]))
    (out / "golden").mkdir()
    golden = {
        "frames_fp32": reference.frames[:n].astype(np.float32),
        "masks_fp32": reference.masks[:n].astype(np.float32),
        "int8io_input": np.stack(x_in),
        "int8io_output": np.stack(z_out),
        "int8io_states_in": np.stack(s_in),
        "int8io_states_out": np.stack(s_out),
    }
    layout = []
    offset = 0
    for s in model.state_names():
        size = int(np.prod(io["states"][s]["shape"]))
        layout.append({"state": s, "offset": offset, "size": size})
        offset += size
    for name, a in golden.items():
        np.save(out / "golden" / f"{name}.npy", a)
        add(f"golden/{name}.npy", "golden", shape=list(a.shape), dtype=a.dtype.name)
    firmware.c_arrays(
        {
            "golden_int8io_input": golden["int8io_input"],
            "golden_int8io_output": golden["int8io_output"],
            "golden_int8io_initial_states": golden["int8io_states_in"][0],
            "golden_int8io_final_states": golden["int8io_states_out"][-1],
        },
        out / "golden" / "golden_int8io.h",
        out / "golden" / "golden_int8io.cc",
        f"Golden vectors for model_int8io_tflite: {n} frames; states concatenated in manifest order.",
    )
    add("golden/golden_int8io.h", "golden_c")
    add("golden/golden_int8io.cc", "golden_c")
    files["golden/int8io_states_in.npy"]["layout"] = layout
    files["golden/int8io_states_out.npy"]["layout"] = layout


def check_card(check: dict) -> str:
    """The model check as a paragraph of a model card."""
    ref = check["reference"]
    verdict = f"**overridden** (`--allow-bad-model`): {'; '.join(check['problems'])}" if check["overridden"] else ("passed" if check["passed"] else "failed")
    return (
        f"Model check on {check['files']} pair(s) of {check['pairs']}, PyTorch fp32: SI-SDR {ref['si_sdr']:.2f} dB against "
        f"{check['input_si_sdr']:.2f} dB for the noisy input ({check['si_sdr_gain']:+.2f} dB), PESQ {ref['pesq']:.3f}, correlation with "
        f"the clean speech {ref['correlation']:+.3f} (polarity {check['polarity']}): {verdict}."
    )


def tflm_card(files: dict, tflm: dict | None) -> list[str]:
    """The model card's firmware section: what ``verify_tflm`` measured and replayed on TFLM."""
    if tflm is None:
        return []
    lines = ["## Firmware: TensorFlow Lite Micro", ""]
    if "skipped" in tflm:
        return lines + [f"Not checked by this export: {tflm['skipped']}. `python -m export.verify_tflm <this folder>` runs the check where tflite-micro installs."]
    tol = tflm["tolerance"]
    lines += [
        f"Checked with tflite-micro {tflm['tflite_micro']}, the interpreter firmware links (`python -m export.verify_tflm <this folder>` repeats it).",
        "",
        "| file | flash (bytes) | tensor arena: minimum (bytes) | recommended (bytes) | operators | invoke (x86-64 host) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    facts = {name: f["tflm"] for name, f in files.items() if "tflm" in f}
    for name, f in facts.items():
        a = f["arena"]
        lines.append(f"| `{name}` | {f['flash_bytes']:,} | {a['minimum_bytes']:,} | {a['recommended_bytes']:,} | {f['resolver_size']} | {f['invoke_ms']['median']:.2f} ms |")
    lines.append("")
    for name, f in facts.items():
        calls = " ".join(f"resolver.{m}();" for m in f["resolver"])
        lines += [f"`{name}` registers {f['resolver_size']} operators: `tflite::MicroMutableOpResolver<{f['resolver_size']}> resolver; {calls}`", ""]
    if facts:
        a = next(iter(facts.values()))["arena"]
        lines += [
            f"The arena minimum is the smallest size TFLM loads and runs the model in ({a['measured_on']}; one byte less fails). 32-bit targets "
            f"need less for the interpreter's own structures, but optimised kernels (CMSIS-NN) may ask for scratch buffers the reference kernels "
            f"do not: the recommendation is the minimum {a['margin']}. The invoke time is the host's (reference kernels), not a device number.",
            "",
        ]
    lines += [
        f"Golden vectors replayed on TFLM, in LSB (one step of a tensor's scale); a tensor passes within {tol['max_lsb']} LSB at most and "
        f"{tol['mean_lsb']:g} LSB on average. Open loop feeds the golden states every frame; closed loop feeds the model's own states back, "
        "as firmware does, and judges the outputs that are not states:",
        "",
        "| file | open loop | closed loop | passed |",
        "|---|---|---|---|",
    ]
    for name, r in tflm["files"].items():
        if "error" in r:
            lines.append(f"| `{name}` | {r['error']} | | False |")
            continue
        opened, closed = verify_tflm.describe(r)
        lines.append(f"| `{name}` | {opened} | {closed} | {r['passed']} |")
    lines += [
        "",
        "The golden vectors come from LiteRT, whose (XNNPACK) kernels round some requantisations (CONV_2D, FULLY_CONNECTED, MUL) by one LSB "
        "differently from TFLM's; later layers carry and grow such steps. Firmware on other kernels should expect differences of this "
        "size rather than bit-exact outputs.",
    ]
    return lines


def model_card(m: dict) -> str:
    """The bundle's README.md, written from its manifest."""
    mod, sig, ver = m["model"], m["signal"], m["verification"]
    ck = mod["checkpoint"]
    lines = [
        f"# {ck.get('file', 'model')}: streaming speech denoiser bundle",
        "",
        f"A causal {mod['name'].upper()} ({mod['params'] / 1e3:.1f} k parameters, {mod['macs_per_frame'] / 1e3:.1f} k MACs per frame, "
        f"{mod['mmacs_per_second']:.1f} MMAC/s) that returns a complex mask for each {1000 * sig['hop'] / sig['sample_rate']:.0f} ms frame "
        f"of a {sig['sample_rate']} Hz mono signal. Algorithmic latency {sig['latency_ms']:.0f} ms, no look-ahead. "
        f"Everything below is in `manifest.json` (schema {m['schema']} v{m['schema_version']}), which is the authority.",
        "",
        "## Files",
        "",
        "| file | what | precision | I/O | bytes |",
        "|---|---|---|---|---:|",
    ]
    for name, f in m["files"].items():
        if f["kind"] == "model":
            io = f["io"]
            what = "one step: spectral frame -> mask" if io["graph"] == "step" else "core: features -> z (float transforms outside)"
            lines.append(f"| `{name}` | {what} | {f['precision']} | {io['input']['dtype']} | {f.get('bytes', '')} |")
        elif f["kind"] in ("c_header", "c_source"):
            lines.append(f"| `{name}` | `{name.rsplit('.', 1)[0]}` as a C array (16-byte aligned) | | | {f.get('bytes', '')} |")
    lines += [
        "| `golden/` | int8 inputs, states and outputs of the integer model, fp32 frames and masks (.npy and C), the audio they come from and the engine's output | | | |",
        *(["| `firmware/` | the streaming loop in plain C99 around the integer model (`denoise.h`), and `denoise_replay`, which checks it against `golden/` | | | |"]
          if any(f["kind"] == "c_reference" for f in m["files"].values()) else []),
        "",
        "## Signal contract",
        "",
        f"- {sig['window']}",
        f"- analysis: {sig['analysis']}",
        f"- synthesis: {sig['synthesis']}",
        f"- frames: {sig['frame_layout']}; {sig['bins']} bins, FFT size {sig['n_fft']}, hop {sig['hop']}",
        f"- features (core graphs): {m['transforms']['features']['formula']}",
        f"- mask bound (core graphs): {m['transforms']['mask_bound']['formula']}",
        "",
        "## States",
        "",
        m["call_protocol"],
        "",
        "| input | output | shape |",
        "|---|---|---|",
        *[f"| `{s['name']}` | `{s['output']}` | {s['shape']} |" for s in m["states"]],
        "",
        "## Verification (run by this export)",
        "",
        check_card(ver["model"]),
        "",
        f"Parity: {ver.get('parity_audio', '')} streamed frame by frame; largest absolute mask error against PyTorch "
        "(fp32: must be within the tolerance) and the mask's SNR against it (int8: judged by quality instead):",
        "",
        "| file | max abs error | mask SNR (dB) | tolerance | passed |",
        "|---|---:|---:|---:|---|",
        *[f"| `{n}` | {r['mask_max_abs_error']:.2e} | {r['mask_snr_db']:.1f} | {r['tolerance'] if r['tolerance'] is not None else '-'} | {r['passed'] if r['tolerance'] is not None else 'see quality'} |"
          for n, r in ver["parity"].items()],  # fmt: skip
        "",
    ]
    q = ver["quality"]
    lines += [
        f"Quantised against fp32 on {q['files']} pair(s) of {q['devset']} (budget: PESQ drop <= {q['budget']['pesq_drop']}, "
        f"SI-SDR drop <= {q['budget']['si_sdr_drop']} dB, same polarity as fp32):",
        "",
        "| file | setting | PESQ | SI-SDR (dB) | PESQ drop | SI-SDR drop | correlation | passed |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in q["results"].items():
        setting = m["files"][name]["quantization"]["setting"]
        lines.append(f"| `{name}` | {setting} | {r['pesq']:.3f} | {r['si_sdr']:.2f} | {r['pesq_drop']:+.3f} | {r['si_sdr_drop']:+.2f} | {r['correlation']:+.3f} | {r['passed']} |")
    firmware_section = tflm_card(m["files"], ver.get("tflm"))
    if firmware_section:
        lines += ["", *firmware_section]
    lines += [
        "",
        "## Training",
        "",
        f"Checkpoint `{ck.get('file')}` (sha256 `{ck.get('sha256', '')[:16]}...`, step {ck.get('step')}). " + ck.get("note", ""),
        "",
    ]
    return "\n".join(lines)
