"""Export of a gated model as separately callable parts, so that a closed branch costs nothing.

Each part is its own graph file, per format and precision:

- ``trunk``: features [1, 3, 1, F], band energies [1, bands], the trunk's states and the policy's
  hidden -> ``z_trunk`` [1, 2, 1, F], the policy's ``logits`` [1, K] and those states: the trunk
  and the policy in one graph, so a frame's first call also decides its gates (gating protocol
  version 2; version 1 called the policy as a part of its own);
- ``branch<k>``: the trunk's conv states from the start of the frame and after the trunk ran, and
  the branch's own states -> ``z_branch<k>`` [1, 2, 1, F] and its states.

Features, energies, the sum of the z terms and the mask bound are computed outside the graphs in
float, as the manifest's ``transforms`` say. The manifest's ``gating`` section is the protocol a
runtime (``runtime.backends.GatedRunner``, or firmware in C) follows.

Each part also comes as an integer-I/O TFLite file (``<part>.int8io.tflite``, precision ``int8io``)
for microcontrollers, with its C array and its golden calls. ``gating.integer_io`` in the manifest
says how firmware chains them: which scale and zero point every part input comes from and how it is
requantised to the part's own. ``firmware/`` holds that chain as a plain-C99 streaming loop
(``export.c_reference``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from distill.models import gated_cost
from export import build, c_reference, calibration, firmware, quiet, verify, verify_tflm
from export.build import ExportError, Options, check_card, passed
from export.graph import prepare
from export.parts import PRECISIONS, Part, c_models, export_fp32, quality_attempts, quantise_part
from runtime.backends import GATE_MODES, SESSIONS, GatedRunner, IntegerSession
from runtime.bundle import GATING_VERSION, MANIFEST, Bundle, StateSpec, seal, sha256

GATE_PROTOCOL = (
    "Per frame: compute features and energies from the frame (transforms). Run the parts in 'order': the trunk, "
    "which also runs the policy and gives 'logits', then the branches. Every part input is named after either "
    "'features' or 'energies', a state (its value at the start of this frame), or an output of a part that already "
    "ran this frame. Branch k runs only if logits[k] > 0; a branch that does not run is not called at all: its states "
    "listed in 'zeroed_when_skipped' become zeros and its other states (its GRU hidden) keep their value. A part that "
    "ran sets each of its 'states' to its output '<state>_out'. z = z_trunk + the z_branch<k> of the branches that "
    "ran; mask = mask_bound(z). MACs executed = the trunk's (policy included) + those of the branches that ran."
)


class PolicyStep(nn.Module):
    """The policy's step as a module of its own, so exporters name its operators apart from the
    trunk's (the float-I/O int8 sets keep them in float). Its input projection is applied to the
    energies and to the trunk's GRU output apart and summed, the arithmetic of the projection of
    their concatenation: quantised, a concatenation would give the GRU output the energies' scale,
    and with it the trunk's recurrent state (the shipped model's integer set on 5 dev files: 0.42 dB
    SI-SDR below fp32 with the concatenation, 0.04 dB without).

    Shape: energies [1, bands], r [1, H], h [1, P] -> logits [1, K], h
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        proj, bands = model.policy.proj, model.policy.bands
        self.from_energies = nn.Linear(bands, proj.out_features)
        self.from_trunk = nn.Linear(proj.in_features - bands, proj.out_features, bias=False)
        with torch.no_grad():
            self.from_energies.weight.copy_(proj.weight[:, :bands])
            self.from_energies.bias.copy_(proj.bias)
            self.from_trunk.weight.copy_(proj.weight[:, bands:])

    def forward(self, energies, r, h):
        return self.model.policy.recur(torch.relu(self.from_energies(energies) + self.from_trunk(r)), h)


class TrunkPart(nn.Module):
    """The always-on part: the trunk's step, then the policy on the frame's band energies and the
    trunk's new GRU output, in one graph (one call decides the gates).

    Shape: features [1, 3, 1, F], energies [1, bands], *trunk states, policy_h [1, P]
        -> z_trunk [1, 2, 1, F], logits [1, K], *trunk states, policy_h
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.policy = model, PolicyStep(model)

    def forward(self, features, energies, *state):
        z, new = self.model.trunk_step(features, state[:-1])
        logits, h = self.policy(energies, new[-1], state[-1])
        return (z, logits, *new, h)


class BranchPart(nn.Module):
    """Shape: 2L trunk conv states before the frame, the same 2L after it, the branch's 2L own
    states -> z_branch [1, 2, 1, F], own states"""

    def __init__(self, model: nn.Module, k: int):
        super().__init__()
        self.model, self.k, self.n = model, k, 2 * len(model.encoder)

    def forward(self, *args):
        n = self.n
        z, new = self.model.branch_step(self.k, args[:n], args[n : 2 * n], args[2 * n :])
        return (z, *new)


def parts(model: nn.Module) -> dict[str, Part]:
    """The graphs of a (prepared) gated model, in call order."""
    L, names = len(model.encoder), model.state_names()
    trunk_states, conv = list(names[: 2 * L + 2]), list(names[: 2 * L])  # the trunk's states, then policy_h
    zeros = dict(zip(names, model.initial_state(1)))  # examples: one tensor per input, since exporters merge aliased ones
    features, energies = torch.zeros(1, 3, 1, model.config.stft.bins), torch.zeros(1, model.config.policy_bands)
    out = {"trunk": Part(TrunkPart(model), ["features", "energies", *trunk_states], ["z_trunk", "logits", *(f"{s}_out" for s in trunk_states)],
                         (features, energies, *(zeros[s] for s in trunk_states)))}  # fmt: skip
    nb = 2 * L
    for k in range(len(model.branches)):
        own = list(names[2 * L + 2 + k * nb : 2 * L + 2 + (k + 1) * nb])
        out[f"branch{k}"] = Part(BranchPart(model, k), [*conv, *(f"{c}_out" for c in conv), *own], [f"z_branch{k}", *(f"{s}_out" for s in own)],
                                 tuple(torch.zeros_like(zeros[c]) for c in conv + conv) + tuple(zeros[s] for s in own))  # fmt: skip
    return out


def gating(model: nn.Module) -> dict:
    """The manifest's gating section: call order, tensors, state ownership, skip rules, MACs."""
    macs = gated_cost(model)
    section = {"version": GATING_VERSION, "branches": len(model.branches), "order": [], "parts": {},
               "threshold": "branch k runs on a frame when logits[k] > 0",
               "energies": {"bands": model.config.policy_bands, "width": model.policy.band_width}}  # fmt: skip
    for name, p in parts(model).items():
        states = [n for n in p.inputs if f"{n}_out" in p.outputs]
        entry = {"inputs": p.inputs, "outputs": p.outputs, "states": states}
        if name.startswith("branch"):
            k = int(name[len("branch") :])
            entry["macs_per_frame"] = macs["branches"][k]
            entry["zeroed_when_skipped"] = [s for s in states if not s.endswith("gru_h")]
            entry["held_when_skipped"] = [s for s in states if s.endswith("gru_h")]
        else:  # the trunk part runs the policy too
            entry["macs_per_frame"] = macs["trunk"] + macs["policy"]
            entry["policy_macs_per_frame"] = macs["policy"]
        section["order"].append(name)
        section["parts"][name] = entry
    section["protocol"] = GATE_PROTOCOL
    return section


class TorchSession:
    """A part module behind the runtime's session interface; ``record`` collects its inputs."""

    def __init__(self, part: Part, record: list | None = None):
        self.part, self.inputs, self.outputs, self.record = part, part.inputs, part.outputs, record

    def run(self, values):
        if self.record is not None:
            self.record.append([np.array(v) for v in values])
        with torch.no_grad():
            out = self.part.module(*(torch.from_numpy(np.ascontiguousarray(v)) for v in values))
        return [o.numpy() for o in out]


INTEGER_PROTOCOL = (
    "The int8io parts follow the same protocol with integer tensors, each with the scale and zero point of its file's io. "
    "quantise(x) = clamp(rint(x / scale) + zero_point) to the tensor's integer range; dequantise(q) = float32(q - zero_point) * scale; "
    "float32 arithmetic, rint rounding half to even (C: rintf). Features and energies are quantised with the trunk's input "
    "parameters. A state is kept in its owning part's input parameters, which its '<state>_out' carries too: "
    "copied back as is. Every other part input (a trunk state a branch reads, an output of a part that ran earlier this frame) "
    "is requantised from its source's parameters to the consumer's own: q = quantise(dequantise(q_source)); 'edges' lists "
    "each with both, 'copy' where they are equal (the requantisation then returns its input). A skipped branch's "
    "'zeroed_when_skipped' states become their zero point; its held states keep their integers. Branch k runs when "
    "logits[k] > the zero point of logits. z = the sum of dequantise(z_trunk) and dequantise(z_branch<k>) of the branches "
    "that ran, in float32; mask = mask_bound(z)."
)


def integer_edges(section: dict, files: dict) -> list[dict]:
    """Where every input of an int8io part comes from, with the source's and the part's scale and
    zero point (own states, which need no conversion, are left out)."""
    io = {}
    for e in files.values():
        if e.get("kind") == "part" and e["precision"] == "int8io":
            io[e["part"]] = {"inputs": {t["name"]: t for t in e["io"]["inputs"]}, "outputs": {t["name"]: t for t in e["io"]["outputs"]}}
    owner = {s: name for name, p in section["parts"].items() for s in p["states"]}
    produced: dict[str, str] = {}
    edges = []
    for name in section["order"]:
        part = section["parts"][name]
        for tensor in part["inputs"]:
            dst = io[name]["inputs"][tensor]
            edge = {"part": name, "input": tensor, "scale": dst["scale"], "zero_point": dst["zero_point"], "dtype": dst["dtype"]}
            if tensor in ("features", "energies"):
                edges.append({**edge, "from": f"transforms.{tensor}", "from_kind": "float, computed outside the parts", "copy": False})
                continue
            src_part, side = (owner[tensor], "inputs") if tensor in owner else (produced[tensor], "outputs")
            if src_part == name:
                continue
            src = io[src_part][side][tensor]
            same = (src["scale"], src["zero_point"], src["dtype"]) == (dst["scale"], dst["zero_point"], dst["dtype"])
            kind = "state at the start of the frame" if side == "inputs" else "output this frame"
            edges.append({**edge, "from": f"{src_part}.{tensor}", "from_kind": kind, "from_scale": src["scale"], "from_zero_point": src["zero_point"], "copy": same})
        produced.update(dict.fromkeys(part["outputs"], name))
    return edges


def integer_runner(bundle: Bundle, gates: str = "policy", calls: dict | None = None) -> GatedRunner:
    """The gating protocol run on the bundle's int8io parts under LiteRT (``calls``: part name ->
    list that collects the integer inputs and outputs of its calls)."""
    g = bundle.gating
    sessions = {}
    for name, f in bundle.parts("tflite", "int8io").items():
        with quiet():  # the interpreter announces its delegate
            session = SESSIONS["litert"](f.path, g["parts"][name]["inputs"], g["parts"][name]["outputs"], 1)
        sessions[name] = IntegerSession(session, f.io, (calls or {}).get(name))
    return GatedRunner(g, bundle.states, bundle.manifest["transforms"]["features"]["power"], sessions, gates)


def state_specs(model: nn.Module) -> tuple[StateSpec, ...]:
    return tuple(StateSpec(n, f"{n}_out", tuple(s.shape), 0.0) for n, s in zip(model.state_names(), model.initial_state(1)))


def torch_runner(model: nn.Module, gates: str = "policy", records: dict | None = None) -> GatedRunner:
    """The protocol run on the PyTorch parts (``records``: part name -> list that collects inputs)."""
    g = gating(model)
    sessions = {n: TorchSession(p, (records or {}).get(n)) for n, p in parts(model).items()}
    return GatedRunner(g, state_specs(model), model.config.compress, sessions, gates)


@torch.no_grad()
def reference(model: nn.Module, spec: np.ndarray, gates: str) -> tuple[np.ndarray, np.ndarray]:
    """Masks [T, F, 2] and gates [T, K] of PyTorch's hard-gated ``model.step`` streamed over
    ``spec`` [T, F, 2]; policy gates as the offline pass thresholds them (equal, as tested)."""
    K, T = len(model.branches), len(spec)
    x = torch.from_numpy(spec)
    forced = {"on": torch.ones(1, K), "off": torch.zeros(1, K), "policy": None}[gates]
    used = model(x[None])[1][0] if forced is None else forced.expand(T, K)  # [T, K]
    state, masks = model.initial_state(1), []
    for t in range(T):
        mask, state = model.step(x[t : t + 1], state, forced)
        masks.append(mask[0].numpy())
    return np.stack(masks), used.numpy() > 0


def _calibration_samples(model: nn.Module, signals: list[np.ndarray], limit: int) -> dict[str, list[dict]]:
    """Inputs of every part while streaming real audio with all branches on (so every branch sees
    every kind of frame), ``limit`` frames per part spread over the signals."""
    graphs = parts(model)
    records = {n: [] for n in graphs}
    runner = torch_runner(model, "on", records)
    for x in tqdm(signals, desc="calibration", leave=False, dynamic_ncols=True, disable=None):
        verify.stream(runner, calibration.frames(model, x).numpy())
    out = {}
    for name, rows in records.items():
        names = graphs[name].inputs
        pick = np.linspace(0, len(rows) - 1, min(limit, len(rows))).round().astype(int)
        out[name] = [dict(zip(names, (np.ascontiguousarray(v, np.float32) for v in rows[i]))) for i in pick]
    return out


POLICY_FLOAT = (
    "the int8 sets keep the policy's operators in the trunk part in float: an int8 policy flips gate decisions near "
    "the threshold, and the policy is about 1 % of the MACs"
)
POLICY_SCOPE = ("policy",)  # TrunkPart's PolicyStep, as the ONNX exporter scopes its nodes
# the TFLite operators named after PolicyStep, and the two whose outputs the converter names after the policy's signature outputs
POLICY_TENSORS = ("PolicyStep", "serving_default_logits", "serving_default_policy_h_out")
GRU_SCOPES = ("model.gru",)  # the second ONNX attempt keeps the GRUs of the trunk (and branches) in float


def build_gated(model: nn.Module, checkpoint_info: dict, out: Path, opt: Options) -> dict:
    """Export, verify and describe a gated ``model`` into the (empty) folder ``out``."""
    log = opt.log
    model = model.eval()
    section = gating(model)
    files: dict[str, dict] = {}
    log(f"calibration: streaming {len(opt.calibration)} file(s) through the PyTorch parts with every branch on")
    samples = _calibration_samples(model, opt.calibration, opt.calibration_frames)

    def add(name, kind, **info):
        files[name] = {"kind": kind, **info, "sha256": sha256(out / name), "bytes": (out / name).stat().st_size}

    graphs = {"onnx": parts(prepare(model)), "tflite": parts(prepare(model, tflite=True))}
    for fmt in opt.formats:
        export_fp32(out, fmt, graphs[fmt], {"gating_protocol": GATE_PROTOCOL}, add, log)

    def quantise(fmt, attempt):
        for name, p in graphs[fmt].items():
            src, dst = out / f"{name}.{fmt}", out / f"{name}.int8.{fmt}"
            if fmt == "tflite":  # the integer set quantises the policy too: a microcontroller runs integers only
                # as the plain export makes model.int8io.tflite: same calibration, each state's output with its input's scale
                pairs = [(s, f"{s}_out") for s in section["parts"][name]["states"]]
                fields = quantise_part(src, out / f"{name}.int8io.tflite", p, samples[name], attempt, True, pairs)
                add(f"{name}.int8io.tflite", "part", part=name, format=fmt, precision="int8io", **fields)
            setting, keep = attempt, ()
            if fmt == "onnx":
                branch_grus = tuple(f"model.branches.{k}.gru" for k in range(len(model.branches))) if attempt[1] else ()
                setting = (attempt[0], attempt[1] + branch_grus + (POLICY_SCOPE if name == "trunk" else ()))
            elif name == "trunk":
                keep = POLICY_TENSORS
            fields = quantise_part(src, dst, p, samples[name], setting, keep_float=keep)
            if name == "trunk":
                fields["quantization"]["policy"] = POLICY_FLOAT
            add(dst.name, "part", part=name, format=fmt, precision="int8", **fields)

    attempts = {
        "onnx": [("int8", ()), ("int8, GRUs in float", GRU_SCOPES)],
        "tflite": [("int8", 8, None), ("int8, GRU activations int16", 8, "GroupedGRU"), ("int16 activations", 16, None)],
    }
    for fmt in opt.formats:
        log(f"{fmt}: quantising every part ({attempts[fmt][0][0]})")
        quantise(fmt, attempts[fmt][0])

    def write_manifest(verification):
        for name, entry in files.items():
            entry["sha256"] = sha256(out / name)
            entry["bytes"] = (out / name).stat().st_size
        (out / MANIFEST).write_text(json.dumps(seal(manifest(model, section, checkpoint_info, files, verification)), indent=1))

    def open_bundle() -> Bundle:
        write_manifest(verification)
        return Bundle(out)

    def runner(bundle, fmt, precision, gates="policy"):
        if precision == "int8io":
            return integer_runner(bundle, gates)
        with quiet():  # interpreters announce their delegates
            return GatedRunner.open(bundle, {"onnx": "onnxruntime", "tflite": "litert"}[fmt], precision, 1, gates)

    verification = {"model": opt.check, "parity": {}, "quality": None, "passed": False, "parity_audio": opt.parity_name}
    spec = calibration.frames(model, opt.parity_audio).numpy()
    refs = {g: reference(model, spec, g) for g in GATE_MODES}
    torch_masks = {g: verify.stream(torch_runner(model, g), spec) for g in GATE_MODES}
    if any(np.abs(torch_masks[g] - refs[g][0]).max() > 1e-5 for g in GATE_MODES):
        raise ExportError("the part graphs do not reproduce the model's step; this is a bug in export/gated.py")

    def check_parity():
        log(f"parity: streaming {len(spec)} frames of {opt.parity_name} with gates on, off and from the policy")
        bundle = open_bundle()
        for fmt in opt.formats:
            for precision in PRECISIONS[fmt]:
                res = {}
                for g in GATE_MODES:
                    r = runner(bundle, fmt, precision, g)
                    masks = verify.stream(r, spec)
                    res[g] = {"mask_max_abs_error": float(np.abs(masks - refs[g][0]).max()), "mask_snr_db": verify.snr_db(masks, refs[g][0]),
                              "branch_usage": r.usage()["branch_usage"]}  # fmt: skip
                tol = opt.parity_tolerance if precision == "fp32" else None
                passed = tol is None or all(v["mask_max_abs_error"] <= tol for v in res.values())
                pytorch_usage = refs["policy"][1].mean(0).round(4).tolist()
                verification["parity"][f"{fmt}/{precision}"] = {"frames": len(spec), "tolerance": tol, "passed": bool(passed), "gates": res, "pytorch_branch_usage": pytorch_usage}

    # judged against PyTorch fp32 with the policy's gates (opt.check["reference"])
    verification["quality"] = quality_attempts(
        model, opt, attempts, quantise, open_bundle, runner, "parts", lambda r: {"branch_usage": r.usage()["branch_usage"]}
    )
    check_parity()  # after quality, which may have re-quantised the int8 files

    if "tflite" in opt.formats:
        log("firmware: C arrays of the int8 and int8io TFLite parts and golden vectors")
        c_models(out, graphs["tflite"], add)
        _golden(out, spec[: opt.golden_frames], runner(open_bundle(), "tflite", "int8"), files, add)
        _golden_integer(out, spec[: opt.golden_frames], open_bundle(), files, add)
        if not c_reference.skip_loop(open_bundle().parts("tflite", "int8io"), verification, log):
            log("firmware: the C loop around the int8io parts (firmware/) and its golden audio")
            c_reference.write_gated(out, integer_runner(open_bundle()), opt.parity_audio, add)
        write_manifest(verification)  # the TFLM check reads the bundle as firmware's build would: sealed, checksums verified
        verify_tflm.record(out, files, verification, log)

    verification["passed"] = passed(verification)
    (out / "README.md").write_text(model_card(manifest(model, section, checkpoint_info, files, verification)))
    add("README.md", "model_card")
    write_manifest(verification)
    return json.loads((out / MANIFEST).read_text())


GOLDEN_NOTE = (
    "`golden/` holds that protocol run on the int8 TFLite parts with the policy's gates, for a firmware port to test "
    "against: the frames, gates and masks (`.npy`, and C arrays in `golden_gated.h/.cc`), and per part the inputs "
    "and outputs of every call with the frames it ran on (`<part>.npz`)."
)


INTEGER_NOTE = (
    "`<part>.int8io.tflite` is each part with integer inputs and outputs for microcontrollers (the policy quantised too), "
    "`<part>_int8io_tflite.h/.cc` its C array, and `golden/<part>.int8io.npz` the integer inputs and outputs of every call "
    "of the protocol below on the golden frames (keys: tensor names, and `frames`, the frames the part ran on); "
    "`golden/gates_int8io.npy` and `golden/masks_int8io_parts.npy` are that run's gates and masks."
)

FIRMWARE_NOTE = (
    "`firmware/` is the whole streaming loop around these parts in plain C99 (`denoise_gated.h`: framing, FFT, features and "
    "energies, the parts chained as above with one caller-supplied invoke per part, requantisation, skipped branches' states, "
    "mask, overlap-add), `denoise_config.h` generated from this manifest, and `denoise_gated_replay`, which checks it against "
    "`golden/`: `audio_in.npy`, and the engine's output for it with these parts (`audio_out.npy`) and with every part call "
    "answered by its golden outputs (`audio_out_replay.npy`)."
)


def _edge_rows(edges: list[dict]) -> list[str]:
    """The integer set's part inputs that come from elsewhere, as a markdown table."""
    rows = ["| part | input | from | scale, zero point | source's | conversion |", "|---|---|---|---|---|---|"]
    for e in edges:
        src = f"{e['from_scale']:.9g}, {e['from_zero_point']}" if "from_scale" in e else "float"
        how = "copy" if e["copy"] else ("quantise" if "from_scale" not in e else "requantise")
        rows.append(f"| {e['part']} | `{e['input']}` | `{e['from']}` ({e['from_kind']}) | {e['scale']:.9g}, {e['zero_point']} | {src} | {how} |")
    return rows


class Recorder:
    """A part session that keeps the inputs and outputs of every call."""

    def __init__(self, session, calls: list):
        self.session, self.inputs, self.outputs, self.calls = session, session.inputs, session.outputs, calls

    def run(self, values):
        res = self.session.run(values)
        self.calls.append([np.array(v) for v in [*values, *res]])
        return res


def _replay(runner: GatedRunner, frames: np.ndarray, calls: dict[str, list]) -> tuple[np.ndarray, dict[str, list[int]]]:
    """Masks [N, F, 2] of ``frames`` run by the protocol, and per part the frames it ran on (its
    sessions append each call to ``calls[part]``)."""
    ran = {name: [] for name in calls}
    states, masks = runner.initial_state(), []
    for t, frame in enumerate(frames):
        before = {name: len(c) for name, c in calls.items()}
        mask, states = runner(frame, states)
        masks.append(mask)
        for name, c in calls.items():
            if len(c) > before[name]:
                ran[name].append(t)
    return np.stack(masks), ran


def _save_calls(out: Path, stem: str, io: dict, calls: list, frames: list[int]) -> Path:
    """One part's calls as ``golden/<stem>.npz``: each tensor of its ``io`` [calls, *shape] in its
    type, and ``frames`` [calls]."""
    tensors = [*io["inputs"], *io["outputs"]]
    arrays = {t["name"]: np.array([call[i] for call in calls], t["dtype"]).reshape(len(calls), *t["shape"]) for i, t in enumerate(tensors)}
    path = out / "golden" / f"{stem}.npz"
    np.savez(path, frames=np.array(frames, np.int32), **arrays)
    return path


def _golden(out: Path, frames: np.ndarray, runner: GatedRunner, files: dict, add) -> None:
    """Golden vectors of the int8 TFLite parts run by the protocol with the policy's gates: the
    frames, the gates and the masks, as .npy and C arrays; and per part, the inputs and outputs of
    every call with the frames it ran on (``<part>.npz``, keys: tensor names and ``frames``)."""
    calls = {name: [] for name in runner.parts}
    for name, (session, updates) in list(runner.parts.items()):
        runner.parts[name] = (Recorder(session, calls[name]), updates)
    masks, ran = _replay(runner, frames, calls)
    (out / "golden").mkdir()
    gates = np.array([[t in ran[b] for b in runner.branches] for t in range(len(frames))], np.uint8)  # [N, K]
    arrays = {"frames_fp32": frames.astype(np.float32), "gates": gates, "masks_int8_parts": masks}
    for name, a in arrays.items():
        np.save(out / "golden" / f"{name}.npy", a)
        add(f"golden/{name}.npy", "golden", shape=list(a.shape), dtype=a.dtype.name)
    for name, c in calls.items():
        _save_calls(out, name, files[f"{name}.int8.tflite"]["io"], c, ran[name])
        add(f"golden/{name}.npz", "golden", part=name, calls=len(c))
    firmware.c_arrays(
        {"golden_frames": arrays["frames_fp32"], "golden_gates": gates, "golden_masks": arrays["masks_int8_parts"]},
        out / "golden" / "golden_gated.h",
        out / "golden" / "golden_gated.cc",
        f"Golden vectors of the int8 TFLite parts run by the gating protocol: {len(frames)} frames [bins, 2], "
        "the gates the policy gave each branch, and the masks.",
    )
    add("golden/golden_gated.h", "golden_c")
    add("golden/golden_gated.cc", "golden_c")


def _golden_integer(out: Path, frames: np.ndarray, bundle: Bundle, files: dict, add) -> None:
    """Golden vectors of the int8io parts chained by ``INTEGER_PROTOCOL`` with the policy's gates on
    the golden frames: per part the integer inputs and outputs of every call and the frames it ran
    on (``<part>.int8io.npz``, named in the part's manifest entry), and the chain's gates and masks."""
    calls = {name: [] for name in bundle.gating["order"]}
    runner = integer_runner(bundle, "policy", calls)
    masks, ran = _replay(runner, frames, calls)
    gates = np.array([[t in ran[b] for b in runner.branches] for t in range(len(frames))], np.uint8)  # [N, K]
    for name, a in {"gates_int8io": gates, "masks_int8io_parts": masks}.items():
        np.save(out / "golden" / f"{name}.npy", a)
        add(f"golden/{name}.npy", "golden", shape=list(a.shape), dtype=a.dtype.name)
    for name, c in calls.items():
        path = _save_calls(out, f"{name}.int8io", files[f"{name}.int8io.tflite"]["io"], c, ran[name])
        file = path.relative_to(out).as_posix()
        add(file, "golden", part=name, precision="int8io", calls=len(c))
        files[f"{name}.int8io.tflite"]["golden"] = {"format": "npz", "file": file}


def manifest(model: nn.Module, section: dict, checkpoint_info: dict, files: dict, verification: dict) -> dict:
    """A plain bundle's manifest (``export.build.manifest``) with the gating protocol, the
    transforms the parts leave outside, each state's owning part and, with int8io parts, how
    their integers are chained (``gating.integer_io``)."""
    m = build.manifest(model, checkpoint_info, files, verification)
    transforms = m["transforms"]
    for key in ("features", "mask_bound"):
        transforms[key]["used_by"] = "every gated bundle: computed outside the part graphs, in float"
    transforms["energies"] = {
        "bands": section["energies"]["bands"],
        "width": section["energies"]["width"],
        "formula": "p = re^2 + im^2 per bin; energies[b] = log10(mean(p[b*width : (b+1)*width]) + 1e-8), b < bands, as [1, bands]",
        "used_by": "the policy, in the trunk part: computed outside it, in float",
    }
    transforms["combine"] = "z = z_trunk + sum of z_branch<k> over the branches that ran this frame"
    owner = {s: name for name, p in section["parts"].items() for s in p["states"]}
    m["states"] = [{**s, "part": owner[s["name"]]} for s in m["states"]]
    m["gating"] = section
    if any(e.get("kind") == "part" and e["precision"] == "int8io" for e in files.values()):
        m["gating"] = {**section, "integer_io": {"precision": "int8io", "protocol": INTEGER_PROTOCOL, "edges": integer_edges(section, files)}}
    m["call_protocol"] = GATE_PROTOCOL
    return m


def model_card(m: dict) -> str:
    """The gated bundle's README.md, written from its manifest."""
    mod, sig, g, ver = m["model"], m["signal"], m["gating"], m["verification"]
    ck = mod["checkpoint"]
    full = mod["macs_per_frame"]
    lines = [
        f"# {ck.get('file', 'model')}: gated streaming speech denoiser bundle",
        "",
        f"A causal gated CRN ({mod['params'] / 1e3:.1f} k parameters, {full / 1e3:.1f} k MACs per frame with every branch on) "
        f"that returns a complex mask for each {1000 * sig['hop'] / sig['sample_rate']:.0f} ms frame of a {sig['sample_rate']} Hz mono "
        f"signal. A policy opens each of its {g['branches']} branches per frame; a closed branch is not run. "
        f"Everything below is in `manifest.json` (schema {m['schema']} v{m['schema_version']}), which is the authority.",
        "",
        "## Parts",
        "",
        "| part | MACs/frame | share of all-on | states |",
        "|---|---:|---:|---|",
        *[f"| `{n}` | {p['macs_per_frame']} | {p['macs_per_frame'] / full:.0%} | {', '.join(p['states'])} |" for n, p in g["parts"].items()],
        "",
        f"The trunk part runs the policy too ({g['parts']['trunk']['policy_macs_per_frame']} of its MACs).",
        "",
        f"## Protocol (gating version {g['version']})",
        "",
        g["protocol"],
        *(["", GOLDEN_NOTE] if "golden/golden_gated.h" in m["files"] else []),
        "",
        f"- features: {m['transforms']['features']['formula']}",
        f"- energies: {m['transforms']['energies']['formula']}",
        f"- mask bound: {m['transforms']['mask_bound']['formula']}",
        "",
        *(["### Integer set (int8io)", "", INTEGER_NOTE, "", g["integer_io"]["protocol"], "", *_edge_rows(g["integer_io"]["edges"]), ""]
          if "integer_io" in g else []),
        *([FIRMWARE_NOTE, ""] if any(f["kind"] == "c_reference" for f in m["files"].values()) else []),
        "## Verification (run by this export)",
        "",
        check_card(ver["model"]),
        "",
        f"Parity: {ver.get('parity_audio', '')} streamed frame by frame against PyTorch's hard-gated step: largest absolute mask "
        "error (fp32: must be within the tolerance) and mask SNR (int8: judged by quality instead):",
        "",
        "| parts | gates on | gates off | policy | mask SNR on/off/policy (dB) | branch usage (policy) | tolerance | passed |",
        "|---|---:|---:|---:|---|---|---:|---|",
        *[
            f"| {n} | {r['gates']['on']['mask_max_abs_error']:.2e} | {r['gates']['off']['mask_max_abs_error']:.2e} | "
            f"{r['gates']['policy']['mask_max_abs_error']:.2e} | {' / '.join('%.1f' % v['mask_snr_db'] for v in r['gates'].values())} | "
            f"{r['gates']['policy']['branch_usage']} | {r['tolerance'] or '-'} | {r['passed'] if r['tolerance'] else 'see quality'} |"
            for n, r in ver["parity"].items()
        ],
        "",
    ]
    q = ver["quality"]
    lines += [f"Int8 against fp32 on {q['files']} pair(s) of {q['devset']} (budget: PESQ drop <= {q['budget']['pesq_drop']}, "
              f"SI-SDR drop <= {q['budget']['si_sdr_drop']} dB, same polarity as fp32):", ""]  # fmt: skip
    lines += [f"- {n}: PESQ {r['pesq']:.3f} ({r['pesq_drop']:+.3f}), SI-SDR {r['si_sdr']:.2f} dB ({r['si_sdr_drop']:+.2f}), "
              f"correlation {r['correlation']:+.3f}, passed {r['passed']}" for n, r in q["results"].items()]  # fmt: skip
    lines += ["", *build.tflm_card(m["files"], ver.get("tflm"))]
    lines += ["", "## Training", "", f"Checkpoint `{ck.get('file')}` (sha256 `{ck.get('sha256', '')[:16]}...`, step {ck.get('step')}). " + ck.get("note", ""), ""]
    return "\n".join(lines)
