"""Export of a two-stage model, a student then its MeanFlow corrector (MeCo), as one bundle whose
stages are separate graphs chained frame by frame.

- ``student``: features [1, 3, 1, F] and its states -> ``z`` [1, 2, 1, F] and its states (the
  student's core graph, as in gated bundles);
- ``corrector``: ``estimate``, ``noisy`` and ``eps`` [1, 2, 1, F] (channel 0 real, 1 imaginary)
  and its states -> ``corrected`` [1, 2, 1, F] and its states: the one-step inference
  z_1 - (1 - t_eps) u(z_1, t_eps, 1) with z_1 = estimate + sigma_max eps, the time embedding folded
  into constants since (r, t) = (t_eps, 1) is fixed.

The features, the mask bound, the mask applied to the frame and the corrector's compressed domain
(``flow``, and back) are computed between the graphs in float, as the manifest's ``transforms``
say; eps comes from ``runtime.noise`` (or is zero). The manifest's ``chain`` section is the
protocol a runtime (``runtime.backends.ChainRunner``, or firmware in C) follows. Each stage comes
in fp32, int8 (float I/O) and, for TFLite, int8io (integer I/O) with its C array and golden calls;
``firmware/`` holds the chain of the int8io stages as a plain-C99 streaming loop
(``export.c_reference``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from distill.dsp import predict_mask
from distill.meanflow import from_flow, one_step
from distill.meco import Chain
from distill.models import _count_macs, config_to_dict, cost, model_name
from export import build, c_reference, calibration, firmware, quiet, verify, verify_tflm
from export.build import ExportError, Options, check_card, passed
from export.gated import Recorder, TorchSession, _save_calls
from export.graph import Core, prepare
from export.parts import PRECISIONS, Part, c_models, export_fp32, quality_attempts, quantise_part
from runtime.backends import SESSIONS, ChainRunner, IntegerSession, part_sessions
from runtime.bundle import MANIFEST, Bundle, StateSpec, seal, sha256
from runtime.noise import FORMULA, gaussian

SEEDED = "splitmix64_box_muller"  # the manifest's name of runtime.noise.gaussian
ATTEMPTS = {  # ever less aggressive settings, tried in order until the quality budget holds (as for gated parts)
    "onnx": [("int8", ()), ("int8, GRUs in float", ("model.rnns",))],
    "tflite": [("int8", 8, None), ("int8, GRU activations int16", 8, "GroupedGRU"), ("int16 activations", 16, None)],
}
CHAIN_PROTOCOL = (
    "Per frame X (the analysis frame, [bins, 2]): features = transforms.features(X); run 'student' on features and its "
    "states; mask = transforms.mask_bound(z); estimate = mask * X (complex, per bin). Then noisy_c = flow(X) and "
    "estimate_c = flow(estimate) (transforms.flow), each as [1, 2, 1, bins] (channel 0 real, channel 1 imaginary); "
    "eps = this frame's noise (chain.eps) in the same layout; run 'corrector' on estimate_c, noisy_c, eps and its states; "
    "the enhanced frame is unflow(corrected), which is overlap-added in place of mask * X. Each part sets each of its "
    "'states' to its output '<state>_out'. Both stages see only this frame and their states: the chain adds no latency. "
    "Bypassing the corrector (the student alone) means: the enhanced frame is the estimate, the corrector is not called "
    "and its states keep their value. MACs per frame: the sum of the stages that ran."
)
INTEGER_PROTOCOL = (
    "The int8io parts follow the same protocol with integer tensors, each with the scale and zero point of its file's io. "
    "quantise(x) = clamp(rint(x / scale) + zero_point) to the tensor's integer range; dequantise(q) = float32(q - zero_point) * scale; "
    "float32 arithmetic, rint rounding half to even (C: rintf). Every input that is not a state (features, estimate, noisy, eps) "
    "is a float computed between the stages, quantised with that input's parameters; z and corrected are dequantised with their "
    "own. A state is kept in its part's input parameters, which its '<state>_out' carries too: copied back as is, starting at "
    "its zero point. No integer tensor passes from one stage to the other."
)


class CorrectorPart(nn.Module):
    """The corrector's one-step inference on one frame, the time embedding of (t_eps, 1) folded
    into constant per-layer shifts (buffers).

    Shape: estimate, noisy, eps [1, 2, 1, F], *states -> corrected [1, 2, 1, F], *states
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        c = model.config
        with torch.no_grad():
            enc, dec = model._shifts(torch.full((1,), c.t_eps), torch.ones(1))  # [1, C, 1, 1] each
        for i, v in enumerate(enc):
            self.register_buffer(f"enc_shift{i}", v)
        for i, v in enumerate(dec):
            self.register_buffer(f"dec_shift{i}", v)
        self.n_enc, self.n_dec = len(enc), len(dec)

    def forward(self, estimate, noisy, eps, *state):
        c = self.model.config
        z1 = estimate + c.sigma_max * eps  # [1, 2, 1, F]; sigma at t = 1 is sigma_max
        shifts = [getattr(self, f"enc_shift{i}") for i in range(self.n_enc)], [getattr(self, f"dec_shift{i}") for i in range(self.n_dec)]
        u, new = self.model.core_step(torch.cat([z1, estimate, noisy], dim=1), state, shifts)  # [1, 2, 1, F]
        return (z1 - (1 - c.t_eps) * u, *new)


def parts(chain: Chain, tflite: bool = False) -> dict[str, Part]:
    """The graphs of a chain in call order; state tensors are named after their stage."""
    bins = chain.config.stft.bins
    stages = (("student", Core(prepare(chain.student, tflite)), ["features"], ["z"]),
              ("corrector", CorrectorPart(prepare(chain.corrector, tflite)), ["estimate", "noisy", "eps"], ["corrected"]))
    out = {}
    for name, module, first_in, first_out in stages:
        model = module.model
        states = [f"{name}_{s}" for s in model.state_names()]
        # one tensor per input: exporters merge aliased ones
        firsts = tuple(torch.zeros(1, 3 if name == "student" else 2, 1, bins) for _ in first_in)
        out[name] = Part(module, [*first_in, *states], [*first_out, *(f"{s}_out" for s in states)], (*firsts, *model.initial_state(1)))
    return out


def eps_spec(chain: Chain) -> dict:
    bins = chain.config.stft.bins
    common = {"input": "eps", "shape": [1, 2, 1, bins], "layout": "eps[0, 0, 0, f] real, eps[0, 1, 0, f] imaginary part of bin f"}
    if chain.noise == "zero":
        return {**common, "generator": "zero", "formula": "eps = 0 every frame: z_1 is the student's estimate (deterministic)"}
    return {**common, "generator": SEEDED, "seed": int(chain.seed), "distribution": "standard normal per real and imaginary part",
            "formula": FORMULA, "golden": "golden/eps.npy holds its first frames from seed, for a port to check its generator"}  # fmt: skip


def section(chain: Chain, graphs: dict[str, Part]) -> dict:
    """The manifest's chain section from the chain's (ONNX) ``parts``: call order, per stage its
    tensors, states, MACs and model; how the tensors between the stages are made; the eps input
    and its generator."""
    c = chain.corrector.config
    part = graphs["corrector"]
    macs = {"student": cost(chain.student).macs_per_frame, "corrector": _count_macs(list(part.module.modules()), lambda: part.module(*part.example))}
    out = {"order": list(graphs), "parts": {}}
    for (name, p), model in zip(graphs.items(), (chain.student, chain.corrector)):
        out["parts"][name] = {
            "model": model_name(model),
            "config": config_to_dict(model.config),
            "params": sum(q.numel() for q in model.parameters()),
            "inputs": p.inputs,
            "outputs": p.outputs,
            "states": [n for n in p.inputs if f"{n}_out" in p.outputs],
            "macs_per_frame": int(macs[name]),
        }
    out["parts"]["corrector"].update(
        sigma_max=c.sigma_max, t_eps=c.t_eps,
        one_step=f"corrected = z_1 - (1 - t_eps) u(z_1, t_eps, 1), z_1 = estimate + sigma_max eps (t_eps = {c.t_eps:g}, sigma_max = {c.sigma_max:g}), "
                 "inside the graph; the time embedding of (t_eps, 1) is folded into constants, so its MACs are not executed",
    )  # fmt: skip
    out["edges"] = [
        {"to": "student.features", "from": "frame", "transform": "features"},
        {"to": "corrector.estimate", "from": "student.z", "transform": "flow(mask_bound(z) * frame)"},
        {"to": "corrector.noisy", "from": "frame", "transform": "flow(frame)"},
        {"to": "corrector.eps", "from": "chain.eps", "transform": "none"},
        {"to": "output", "from": "corrector.corrected", "transform": "unflow(corrected): the enhanced frame"},
    ]
    out["eps"] = eps_spec(chain)
    out["protocol"] = CHAIN_PROTOCOL
    return out


def state_specs(graphs: dict[str, Part]) -> tuple[StateSpec, ...]:
    return tuple(
        StateSpec(n, f"{n}_out", tuple(v.shape), 0.0) for p in graphs.values() for n, v in zip(p.inputs, p.example) if f"{n}_out" in p.outputs
    )


def torch_runner(chain: Chain, section: dict, graphs: dict[str, Part], records: dict | None = None) -> ChainRunner:
    """The protocol run on the PyTorch part graphs (``records``: part name -> list that collects inputs)."""
    sessions = {n: TorchSession(p, (records or {}).get(n)) for n, p in graphs.items()}
    return ChainRunner(section, state_specs(graphs), (chain.student.config.compress, chain.corrector.config.compress), sessions)


def run(runner: ChainRunner, spec: np.ndarray) -> dict[str, np.ndarray]:
    """Every stage's result over a whole signal, frame by frame with the states fed back.
    Shape: spec [T, F, 2] -> mask, corrected, enhanced [T, F, 2] each"""
    states, out = runner.initial_state(), {"mask": [], "corrected": [], "enhanced": []}
    for frame in spec:
        res, states = runner.run(frame, states)
        for k in out:
            out[k].append(res[k])
    return {k: np.stack(v) for k, v in out.items()}


@torch.no_grad()
def reference(chain: Chain, spec: np.ndarray) -> dict[str, np.ndarray]:
    """The PyTorch chain over the whole signal (offline ``forward`` of both stages, the eps the
    bundle feeds): the student's mask, the corrector's output and the enhanced spectrum.
    Shape: spec [T, F, 2] -> each [T, F, 2]"""
    x = torch.from_numpy(spec)[None]
    _, (noisy_c, est_c) = chain.estimates(x)
    corrected = one_step(chain.corrector, est_c, noisy_c, chain.eps(est_c))
    return {"mask": predict_mask(chain.student, x)[0].numpy(), "corrected": corrected[0].numpy(),
            "enhanced": from_flow(corrected, chain.corrector.config.compress)[0].numpy()}  # fmt: skip


def _calibration_samples(chain: Chain, section: dict, graphs: dict[str, Part], signals: list[np.ndarray], limit: int) -> dict:
    """Inputs of every part while streaming real audio through the chain, ``limit`` frames per
    part spread over the signals. eps is always drawn (also for a bundle that runs with eps = 0):
    its range must be calibrated, and zero is exact in any asymmetric int8 range."""
    seeded = {**section, "eps": {**section["eps"], "generator": SEEDED, "seed": section["eps"].get("seed", 0)}}
    records = {n: [] for n in graphs}
    runner = torch_runner(chain, seeded, graphs, records)
    for x in tqdm(signals, desc="calibration", leave=False, dynamic_ncols=True, disable=None):
        verify.stream(runner, calibration.frames(chain, x).numpy())
    out = {}
    for name, rows in records.items():
        pick = np.linspace(0, len(rows) - 1, min(limit, len(rows))).round().astype(int)
        out[name] = [dict(zip(graphs[name].inputs, (np.ascontiguousarray(v, np.float32) for v in rows[i]))) for i in pick]
    return out


def build_chain(chain: Chain, checkpoint_info: dict, out: Path, opt: Options) -> dict:
    """Export, verify and describe ``chain`` (student, then corrector) into the (empty) folder ``out``."""
    log = opt.log
    chain = chain.eval()
    graphs = {"onnx": parts(chain), "tflite": parts(chain, tflite=True)}
    sec = section(chain, graphs["onnx"])
    files: dict[str, dict] = {}
    states = state_specs(graphs["onnx"])
    log(f"calibration: streaming {len(opt.calibration)} file(s) through the PyTorch stages")
    samples = _calibration_samples(chain, sec, graphs["onnx"], opt.calibration, opt.calibration_frames)

    def add(name, kind, **info):
        files[name] = {"kind": kind, **info, "sha256": sha256(out / name), "bytes": (out / name).stat().st_size}

    for fmt in opt.formats:
        export_fp32(out, fmt, graphs[fmt], {"chain_protocol": CHAIN_PROTOCOL}, add, log)

    def quantise(fmt, attempt):
        for name, p in graphs[fmt].items():
            pairs = [(s, f"{s}_out") for s in sec["parts"][name]["states"]]
            for precision in PRECISIONS[fmt][1:]:
                dst = out / f"{name}.{precision}.{fmt}"
                fields = quantise_part(out / f"{name}.{fmt}", dst, p, samples[name], attempt, precision == "int8io", pairs)
                add(dst.name, "part", part=name, format=fmt, precision=precision, **fields)

    for fmt in opt.formats:
        log(f"{fmt}: quantising both stages ({ATTEMPTS[fmt][0][0]})")
        quantise(fmt, ATTEMPTS[fmt][0])

    verification = {"model": opt.check, "parity": {}, "quality": None, "passed": False, "parity_audio": opt.parity_name}

    def write_manifest():
        for name, entry in files.items():
            entry["sha256"] = sha256(out / name)
            entry["bytes"] = (out / name).stat().st_size
        (out / MANIFEST).write_text(json.dumps(seal(manifest(chain, sec, states, checkpoint_info, files, verification)), indent=1))

    def open_bundle() -> Bundle:
        write_manifest()
        return Bundle(out)

    def runner(bundle, fmt, precision):
        with quiet():  # interpreters announce their delegates
            return ChainRunner.open(bundle, {"onnx": "onnxruntime", "tflite": "litert"}[fmt], precision)

    spec = calibration.frames(chain, opt.parity_audio).numpy()
    ref = reference(chain, spec)
    mine = run(torch_runner(chain, sec, graphs["onnx"]), spec)
    if any(np.abs(mine[k] - ref[k]).max() > opt.parity_tolerance for k in ("mask", "corrected")):
        raise ExportError("the stage graphs do not reproduce the PyTorch chain; this is a bug in export/chain.py")

    def check_parity():
        log(f"parity: streaming {len(spec)} frames of {opt.parity_name} through both stages of every set")
        bundle = open_bundle()
        for fmt in opt.formats:
            for precision in PRECISIONS[fmt]:
                got = run(runner(bundle, fmt, precision), spec)
                err = {k: float(np.abs(got[k] - ref[k]).max()) for k in ("mask", "corrected")}
                tol = opt.parity_tolerance if precision == "fp32" else None
                verification["parity"][f"{fmt}/{precision}"] = {
                    "frames": len(spec), "mask_max_abs_error": err["mask"], "corrected_max_abs_error": err["corrected"],
                    "mask_snr_db": verify.snr_db(got["mask"], ref["mask"]), "corrected_snr_db": verify.snr_db(got["corrected"], ref["corrected"]),
                    "enhanced_snr_db": verify.snr_db(got["enhanced"], ref["enhanced"]), "tolerance": tol,
                    "passed": bool(tol is None or max(err.values()) <= tol),
                }  # fmt: skip

    ref_scores = opt.check["reference"]  # the PyTorch chain, fp32, with the bundle's eps
    verification["quality"] = quality_attempts(chain, opt, ATTEMPTS, quantise, open_bundle, runner, "chains")
    check_parity()  # after quality, which may have re-quantised the int8 files
    log("eps = 0 and the student alone: PyTorch fp32 on the verification pairs")
    other = "zero" if chain.noise == "seeded" else "seeded"
    verification["stages"] = {
        "pairs": opt.pairs_name, "files": len(opt.pairs), "eps": chain.noise,
        "student": verify.quality(chain.student, {}, opt.pairs)["pytorch"],
        f"chain_eps_{chain.noise}": ref_scores,
        f"chain_eps_{other}": verify.quality(Chain(chain.student, chain.corrector, other, chain.seed), {}, opt.pairs)["pytorch"],
    }  # fmt: skip

    if "tflite" in opt.formats:
        log("firmware: C arrays of the int8 and int8io TFLite stages and golden vectors")
        c_models(out, graphs["tflite"], add)
        _golden(out, spec[: opt.golden_frames], open_bundle(), sec, files, add)
        if not c_reference.skip_loop(open_bundle().parts("tflite", "int8io"), verification, log):
            log("firmware: the C loop around the int8io stages (firmware/) and its golden audio")
            c_reference.write_chain(out, runner(open_bundle(), "tflite", "int8io"), opt.parity_audio, add)
        write_manifest()  # the TFLM check reads the bundle as firmware's build would: sealed, checksums verified
        verify_tflm.record(out, files, verification, log)

    verification["passed"] = passed(verification)
    (out / "README.md").write_text(model_card(manifest(chain, sec, states, checkpoint_info, files, verification)))
    add("README.md", "model_card")
    write_manifest()
    return json.loads((out / MANIFEST).read_text())


def _golden(out: Path, frames: np.ndarray, bundle: Bundle, sec: dict, files: dict, add) -> None:
    """Golden vectors of the TFLite int8 and int8io stages run by the protocol on the golden
    frames: the frames, eps and the enhanced frames of each set (.npy, and C arrays of the int8io
    run), and per stage the inputs and outputs of every call (``<stage>.npz`` for int8,
    ``<stage>.int8io.npz`` with integers, named in the stage file's manifest entry)."""
    (out / "golden").mkdir()
    n, bins = frames.shape[:2]
    eps = gaussian(sec["eps"]["seed"], 0, n, bins) if sec["eps"]["generator"] == SEEDED else np.zeros((n, bins, 2), np.float32)
    arrays = {"frames_fp32": frames.astype(np.float32), "eps": eps}
    order = sec["order"]
    for precision in ("int8", "int8io"):
        calls = {name: [] for name in order}
        if precision == "int8":
            sessions = {name: Recorder(s, calls[name]) for name, s in part_sessions(bundle, sec, "litert", "int8").items()}
        else:
            sessions = {}
            for name, f in bundle.parts("tflite", "int8io").items():
                with quiet():  # the interpreter announces its delegate
                    session = SESSIONS["litert"](f.path, sec["parts"][name]["inputs"], sec["parts"][name]["outputs"], 1)
                sessions[name] = IntegerSession(session, f.io, calls[name])
        t = bundle.manifest["transforms"]
        runner = ChainRunner(sec, bundle.states, (t["features"]["power"], t["flow"]["power"]), sessions)
        arrays[f"enhanced_{precision}"] = verify.stream(runner, frames)
        for name, c in calls.items():
            stem = name if precision == "int8" else f"{name}.int8io"
            path = _save_calls(out, stem, files[f"{name}.{precision}.tflite"]["io"], c, list(range(n)))
            file = path.relative_to(out).as_posix()
            add(file, "golden", part=name, precision=precision, calls=len(c))
            if precision == "int8io":
                files[f"{name}.int8io.tflite"]["golden"] = {"format": "npz", "file": file}
    for name, a in arrays.items():
        np.save(out / "golden" / f"{name}.npy", a)
        add(f"golden/{name}.npy", "golden", shape=list(a.shape), dtype=a.dtype.name)
    firmware.c_arrays(
        {"golden_frames": arrays["frames_fp32"], "golden_eps": eps, "golden_enhanced": arrays["enhanced_int8io"]},
        out / "golden" / "golden_chain.h",
        out / "golden" / "golden_chain.cc",
        f"Golden vectors of the int8io TFLite stages run by the chain protocol: {n} frames [bins, 2], the eps each frame "
        "took and the enhanced frames.",
    )
    add("golden/golden_chain.h", "golden_c")
    add("golden/golden_chain.cc", "golden_c")


def manifest(chain: Chain, sec: dict, states: tuple[StateSpec, ...], checkpoint_info: dict, files: dict, verification: dict) -> dict:
    """A plain bundle's manifest (``export.build.manifest`` of the student: signal, features, mask
    bound) with the model as both stages, the corrector's domain (``transforms.flow``), every state
    with its stage, and the chain protocol (``chain``; with int8io parts, ``chain.integer_io``)."""
    m = build.manifest(chain.student, checkpoint_info, files, verification)
    macs = sum(p["macs_per_frame"] for p in sec["parts"].values())
    m["model"] = {
        "name": checkpoint_info["name"],
        "config": config_to_dict(chain.corrector.config),
        "checkpoint": checkpoint_info,
        "stages": sec["order"],
        "params": sum(p["params"] for p in sec["parts"].values()),
        "macs_per_frame": macs,
        "mmacs_per_second": round(macs * chain.config.stft.frames_per_second / 1e6, 3),
    }
    t = m["transforms"]
    for key in ("features", "mask_bound"):
        t[key]["used_by"] = "the student stage: computed outside its graph, in float"
    t["apply"] = "estimate = mask * X (complex multiplication per bin): the student's enhanced frame"
    t["flow"] = {
        "power": chain.corrector.config.compress,
        "formula": "flow(Y) = Y * m^(power - 1), m = sqrt(max(re^2 + im^2, 1e-12)) per bin; its inverse unflow(C) = C * m^(1/power - 1), "
                   "m = sqrt(max(re^2 + im^2, 1e-12)) of C",
        "used_by": "the corrector stage: its inputs estimate and noisy and its output corrected are in this domain; computed outside its graph, in float",
    }  # fmt: skip
    owner = {s: name for name, p in sec["parts"].items() for s in p["states"]}
    m["states"] = [{"name": s.name, "output": s.output, "shape": list(s.shape), "init": s.init, "part": owner[s.name]} for s in states]
    m["chain"] = sec
    if any(e.get("kind") == "part" and e["precision"] == "int8io" for e in files.values()):
        m["chain"] = {**sec, "integer_io": {"precision": "int8io", "protocol": INTEGER_PROTOCOL}}
    m["call_protocol"] = CHAIN_PROTOCOL
    return m


FIRMWARE_NOTE = (
    "`firmware/` is the whole streaming loop around the int8io stages in plain C99 (`denoise_chain.h`: framing, FFT, features, "
    "the student, mask and estimate, flow, eps from the generator above, the corrector, unflow, overlap-add, with one caller-supplied "
    "invoke per stage), `denoise_config.h` generated from this manifest, and `denoise_chain_replay`, which checks it against "
    "`golden/`: `audio_in.npy`, and the engine's output for it with these stages (`audio_out.npy`) and with every stage call "
    "answered by its golden outputs (`audio_out_replay.npy`)."
)


def model_card(m: dict) -> str:
    """The two-stage bundle's README.md, written from its manifest."""
    mod, sig, c, ver = m["model"], m["signal"], m["chain"], m["verification"]
    ck = mod["checkpoint"]
    total = mod["macs_per_frame"]
    eps = c["eps"]
    lines = [
        f"# {ck.get('file', 'model')}: two-stage streaming speech denoiser bundle",
        "",
        f"A causal student ({c['parts']['student']['model'].upper()}) and a causal one-step MeanFlow corrector after it "
        f"({mod['params'] / 1e3:.1f} k parameters, {total / 1e3:.1f} k MACs per frame together, {mod['mmacs_per_second']:.1f} MMAC/s) that return "
        f"the enhanced spectrum of each {1000 * sig['hop'] / sig['sample_rate']:.0f} ms frame of a {sig['sample_rate']} Hz mono signal. "
        f"Algorithmic latency {sig['latency_ms']:.0f} ms, no look-ahead; the corrector adds none. "
        f"Everything below is in `manifest.json` (schema {m['schema']} v{m['schema_version']}), which is the authority.",
        "",
        "## Stages",
        "",
        "| stage | model | params | MACs/frame | share | inputs (besides states) | states |",
        "|---|---|---:|---:|---:|---|---|",
        *[f"| `{n}` | {p['model']} | {p['params']} | {p['macs_per_frame']} | {p['macs_per_frame'] / total:.0%} | "
          f"{', '.join(i for i in p['inputs'] if i not in p['states'])} | {len(p['states'])} |" for n, p in c["parts"].items()],  # fmt: skip
        "",
        "## Protocol",
        "",
        c["protocol"],
        "",
        f"- features: {m['transforms']['features']['formula']}",
        f"- mask bound: {m['transforms']['mask_bound']['formula']}",
        f"- flow: {m['transforms']['flow']['formula']} (power {m['transforms']['flow']['power']})",
        f"- corrector: {c['parts']['corrector']['one_step']}",
        f"- eps ({eps['generator']}{', seed ' + str(eps['seed']) if 'seed' in eps else ''}): {eps['formula']}",
        "",
        *(["### Integer set (int8io)", "", c["integer_io"]["protocol"], ""] if "integer_io" in c else []),
        *([FIRMWARE_NOTE, ""] if any(f["kind"] == "c_reference" for f in m["files"].values()) else []),
        "## Verification (run by this export)",
        "",
        check_card(ver["model"]),
        "",
        f"Parity: {ver.get('parity_audio', '')} streamed frame by frame through both stages against the PyTorch chain: largest absolute "
        "error of the student's mask and of the corrector's output (compressed domain; fp32: must be within the tolerance), and SNRs "
        "(int8: judged by quality instead):",
        "",
        "| set | mask max abs error | corrected max abs error | mask / corrected / enhanced SNR (dB) | tolerance | passed |",
        "|---|---:|---:|---|---:|---|",
        *[f"| {n} | {r['mask_max_abs_error']:.2e} | {r['corrected_max_abs_error']:.2e} | {r['mask_snr_db']:.1f} / {r['corrected_snr_db']:.1f} / "
          f"{r['enhanced_snr_db']:.1f} | {r['tolerance'] or '-'} | {r['passed'] if r['tolerance'] else 'see quality'} |" for n, r in ver["parity"].items()],  # fmt: skip
        "",
    ]
    q = ver["quality"]
    lines += [f"Int8 chains against the fp32 PyTorch chain on {q['files']} pair(s) of {q['devset']} (budget: PESQ drop <= {q['budget']['pesq_drop']}, "
              f"SI-SDR drop <= {q['budget']['si_sdr_drop']} dB, same polarity as fp32):", ""]  # fmt: skip
    lines += [f"- {n}: PESQ {r['pesq']:.3f} ({r['pesq_drop']:+.3f}), SI-SDR {r['si_sdr']:.2f} dB ({r['si_sdr_drop']:+.2f}), "
              f"correlation {r['correlation']:+.3f}, [{r['setting']}] passed {r['passed']}" for n, r in q["results"].items()]  # fmt: skip
    if "stages" in ver:
        s = ver["stages"]
        lines += ["", f"PyTorch fp32 on the same pairs, the student alone and the chain with either eps (this bundle runs eps {s['eps']}):", ""]
        lines += [f"- {k.replace('_', ' ')}: PESQ {v['pesq']:.3f}, SI-SDR {v['si_sdr']:.2f} dB, correlation {v['correlation']:+.3f}"
                  for k, v in s.items() if isinstance(v, dict)]  # fmt: skip
    lines += ["", *build.tflm_card(m["files"], ver.get("tflm"))]
    lines += ["", "## Training", "", f"Checkpoint `{ck.get('file')}` (sha256 `{ck.get('sha256', '')[:16]}...`, step {ck.get('step')}). " + ck.get("note", ""), ""]
    return "\n".join(lines)
