"""The plain-C reference of the streaming loop that ships in every plain, gated and two-stage bundle
as ``firmware/``, and the golden audio that checks it.

The C sources in ``export/c_reference/`` are fixed (docs/firmware.md describes their API): the
plain loop (``denoise.c``) around ``model.int8io.tflite``, the gated loop (``denoise_gated.c``)
around the ``<part>.int8io.tflite`` parts, the two-stage loop (``denoise_chain.c``) around the
student's and the corrector's ``<stage>.int8io.tflite``, and what they share (``denoise_stft.c``:
framing, FFT, features, mask, overlap-add; ``denoise_golden.c``: the replay programs' tolerances
and reader of golden arrays). What differs between bundles (sizes, scales, zero points, state
layout; for a gated bundle every part's tensors and where each comes from; for a two-stage one
every stage's tensors, the flow power and the eps seed) goes into a generated
``firmware/denoise_config.h``. The golden audio, beside the integer model's golden vectors:

- ``golden/audio_in.npy``: the parity audio whose frames the golden frames are (hop samples per
  golden frame);
- ``golden/audio_out.npy``: the Python engine's output for it with the integer model (a gated or
  two-stage bundle: its int8io parts chained by ``gating.integer_io`` or ``chain.integer_io``) on
  LiteRT, the stream as it comes out (lagging the input by window - hop samples);
- ``golden/audio_out_replay.npy``: the engine's output when the model's outputs are the golden ones
  instead of a model run (plain: each frame's ``int8io_output`` and ``int8io_states_out``; gated and
  two-stage: each part call's outputs from ``<part>.int8io.npz``). ``denoise_replay`` /
  ``denoise_gated_replay`` / ``denoise_chain_replay`` (in ``firmware/``) run the C loop under the
  same stand-in and must match it up to float rounding, whatever the FFT; ``audio_out`` also
  depends on which int8 values the features round to and on the interpreter's kernels.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from runtime.backends import ChainRunner, GatedRunner, IntegerSession, Runner, quantize
from runtime.bundle import Bundle
from runtime.engine import Engine

SOURCES = Path(__file__).resolve().parent / "c_reference"
SHARED = ("denoise_stft.h", "denoise_stft.c", "denoise_fft.h", "denoise_fft.c", "denoise_golden.h", "denoise_golden.c")
FILES = ("denoise.h", "denoise.c", "denoise_replay.c", *SHARED)
GATED_FILES = ("denoise_gated.h", "denoise_gated.c", "denoise_gated_replay.c", *SHARED)
CHAIN_FILES = ("denoise_chain.h", "denoise_chain.c", "denoise_chain_replay.c", *SHARED)
# The sources a program compiles: the loop alone, or the replay program with it.
LOOP = ("denoise.c", "denoise_stft.c", "denoise_fft.c")
GATED_LOOP = ("denoise_gated.c", "denoise_stft.c", "denoise_fft.c")
REPLAY = ("denoise_replay.c", *LOOP, "denoise_golden.c")
GATED_REPLAY = ("denoise_gated_replay.c", *GATED_LOOP, "denoise_golden.c")
CHAIN_LOOP = ("denoise_chain.c", "denoise_stft.c", "denoise_fft.c")
CHAIN_REPLAY = ("denoise_chain_replay.c", *CHAIN_LOOP, "denoise_golden.c")
CONFIG = "denoise_config.h"
MODEL = "model.int8io.tflite"
PARTS = "<part>.int8io.tflite"
MAX_RADIX = 16  # DENOISE_FFT_MAX_RADIX of denoise_fft.h
# Engine frames against the golden frames, relative to the largest bin: they come from scipy's and
# PyTorch's float32 FFTs of the same samples (1.2e-7 on the shipped default bundle); a shift of the
# audio by one sample gives differences of order one.
FRAME_TOLERANCE = 1e-5


class Replay(Runner):
    """The golden outputs of the integer model in place of running it, one frame per call; keeps
    the frames the engine gives it."""

    def __init__(self, runner: Runner, z: np.ndarray, states_out: np.ndarray):
        """Shape: z [T, 1, 2, 1, F], states_out [T, S] (states concatenated in manifest order)."""
        super().__init__(runner.bundle, runner.model)
        self.z, self.states_out = z, states_out
        self.shapes = [s.shape for s in runner.bundle.states]
        self.frames: list[np.ndarray] = []

    def __call__(self, frame, states):
        self.frames.append(frame.copy())  # [F, 2]
        return super().__call__(frame, states)

    def run(self, x, states):
        t = len(self.frames) - 1
        if t >= len(self.z):
            raise IndexError(f"the golden vectors hold {len(self.z)} frames; frame {t} was asked for")
        bounds = np.cumsum([0, *(int(np.prod(s)) for s in self.shapes)])
        return [self.z[t], *(self.states_out[t][a:b].reshape(s) for a, b, s in zip(bounds[:-1], bounds[1:], self.shapes))]


def fft_supported(n: int) -> bool:
    """Whether denoise_fft.c transforms length ``n``: even, and n/2 without a prime factor above
    ``MAX_RADIX``."""
    if n < 2 or n % 2:
        return False
    m = n // 2
    for p in range(2, MAX_RADIX + 1):
        while m % p == 0:
            m //= p
    return m == 1


def _cfloat(v: float) -> str:
    """A C float literal that reads back as float32(v) exactly."""
    s = f"{float(np.float32(v)):.9g}"
    return s + ("f" if any(c in s for c in ".en") else ".0f")


def _signal(bundle: Bundle) -> list[tuple[str, object, str]]:
    """The defines both loops' signal side (denoise_stft.c) reads."""
    sig = bundle.signal
    return [
        ("DENOISE_SAMPLE_RATE", sig["sample_rate"], "signal.sample_rate (Hz)"),
        ("DENOISE_N_FFT", sig["n_fft"], "signal.n_fft"),
        ("DENOISE_WIN", sig["win_length"], "signal.win_length: periodic sqrt-Hann"),
        ("DENOISE_HOP", sig["hop"], "signal.hop: samples in and out per frame"),
        ("DENOISE_BINS", sig["bins"], "signal.bins"),
        ("DENOISE_FEATURE_POWER", _cfloat(bundle.manifest["transforms"]["features"]["power"]), "transforms.features.power"),
    ]


def _header(model: str, define: list[tuple[str, object, str]], layouts: list[tuple[str, str, list[str]]]) -> str:
    """A generated denoise_config.h: ``define`` as (name, value, comment), then each layout as
    (macro name, comment, initializer rows)."""
    width = max(len(n) for n, _, _ in define)
    lines = [
        f"/* Generated by python -m export from this bundle's manifest.json, for {model}: do not edit. */",
        "#ifndef DENOISE_CONFIG_H",
        "#define DENOISE_CONFIG_H",
        "",
        *(f"#define {n:{width}} {v}" + (f"  /* {c} */" if c else "") for n, v, c in define),
    ]
    for name, comment, rows in layouts:
        lines += ["", comment, f"#define {name} \\", ", \\\n".join(rows)]
    return "\n".join([*lines, "", "#endif /* DENOISE_CONFIG_H */", ""])


def config_header(runner: Runner) -> str:
    """``denoise_config.h`` of the bundle whose integer model ``runner`` runs."""
    io = runner.model.io
    inp, outp = io["input"], io["output"]
    slots, offset = [], 0
    for s, q in zip(runner.bundle.states, runner.initial_state()):
        slots.append(f'    {{"{s.name}", "{s.output}", {offset}, {q.size}, {int(q.flat[0])}}}')
        offset += q.size
    define = [
        *_signal(runner.bundle),
        ("DENOISE_FEATURES_SCALE", _cfloat(inp["scale"]), f"input {inp['name']!r}"),
        ("DENOISE_FEATURES_ZERO_POINT", f"({inp['zero_point']})", ""),
        ("DENOISE_FEATURES_LEN", int(np.prod(inp["shape"])), str(inp["shape"])),
        ("DENOISE_Z_SCALE", _cfloat(outp["scale"]), f"output {outp['name']!r}"),
        ("DENOISE_Z_ZERO_POINT", f"({outp['zero_point']})", ""),
        ("DENOISE_Z_LEN", int(np.prod(outp["shape"])), str(outp["shape"])),
        ("DENOISE_NUM_STATES", len(slots), "graph inputs and outputs 1.. in this order"),
        ("DENOISE_STATES_LEN", offset, "all states concatenated"),
    ]
    comment = ("/* Per state, in manifest order: input, output, offset and size in the concatenated buffer,\n"
               " * start value (its init quantised with its own scale and zero point). */")  # fmt: skip
    return _header(MODEL, define, [("DENOISE_STATE_LAYOUT", comment, slots)])


def gated_config_header(bundle: Bundle) -> str:
    """``denoise_config.h`` of a gated bundle's int8io parts, from its manifest: every part input
    and output with where the loop keeps it and how it fills it (``gating.integer_io``), the states
    in their owners' parameters.

    Raises ExportError (one line) for a manifest the loop cannot follow.
    """
    from export.build import ExportError  # build.py calls this module

    g, F = bundle.gating, bundle.signal["bins"]
    order = g["order"]
    branches = [f"branch{k}" for k in range(g["branches"])]
    always = order[: len(order) - len(branches)]  # called on every frame: the trunk, and in gating version 1 the policy
    if order[len(always) :] != branches or always[:1] != ["trunk"] or any(n not in ("trunk", "policy") for n in always):
        raise ExportError(f"gating.order {order}: the C loop calls the trunk (and a version-1 policy), then branch0 .. branch{g['branches'] - 1}")
    files = bundle.parts("tflite", "int8io")
    if why := loop_blocker(files):
        raise ExportError(why)
    spec = {n: {t["name"]: t for t in [*f.io["inputs"], *f.io["outputs"]]} for n, f in files.items()}
    owner = {s: name for name, p in g["parts"].items() for s in p["states"]}
    size: dict[str, int] = {}  # a value keeps its name from the part that makes it to every part that reads it
    for n, tensors in spec.items():
        for t in tensors.values():
            if size.setdefault(t["name"], int(np.prod(t["shape"]))) != int(np.prod(t["shape"])):
                raise ExportError(f"{n}.int8io.tflite: {t['name']} has another shape than in the other parts; the parts do not fit together, re-export")

    slots, kept, state_out, offset = [], {}, {}, 0  # kept: value name -> (buffer, offset, scale, zero point) during the frame
    for s in bundle.states:
        part = g["parts"][owner[s.name]]
        t = spec[owner[s.name]][s.name]
        init = int(quantize(np.float32(s.init), t))
        zeroed = int(s.name in part.get("zeroed_when_skipped", ()))
        slots.append(f'    {{"{s.name}", "{s.output}", {order.index(owner[s.name])}, {offset}, {size[s.name]}, {init}, {t["zero_point"]}, {zeroed}}}')
        kept[s.name] = ("DENOISE_KEPT_STATES_IN", offset, t["scale"], t["zero_point"])
        state_out[s.output] = (offset, t)
        offset += size[s.name]
    states_len, work, scratch = offset, 0, 0  # work: outputs that are not states; scratch: a part's filled inputs, dead after its call

    def row(name, t, where, fill="DENOISE_FILL_NONE", source=("0", 0, 0.0, 0)):
        return (f'    {{"{name}", {size[name]}, {where[0]}, {where[1]}, {_cfloat(t["scale"])}, {t["zero_point"]}, {fill}, '
                f"{source[0]}, {source[1]}, {_cfloat(source[2])}, {source[3]}}}")  # fmt: skip

    tensors, parts, index = [], [], {}
    for name in order:
        part, first, used = g["parts"][name], len(tensors), 0
        for n in part["inputs"]:
            t = spec[name][n]
            if n in ("features", "energies"):
                tensors.append(row(n, t, ("DENOISE_KEPT_WORK", f"DENOISE_SCRATCH + {used}"), f"DENOISE_FILL_{n.upper()}"))
                used += size[n]
                continue
            if n not in kept:
                raise ExportError(f"{name}: input {n!r} is neither a state nor an output of an earlier part; gating.order is not a call order")
            src = kept[n]
            if (src[2], src[3]) == (t["scale"], t["zero_point"]):
                tensors.append(row(n, t, src))
            else:
                tensors.append(row(n, t, ("DENOISE_KEPT_WORK", f"DENOISE_SCRATCH + {used}"), "DENOISE_FILL_REQUANTISE", src))
                used += size[n]
        scratch = max(scratch, used)
        outputs = len(tensors)
        for n in part["outputs"]:
            t = spec[name][n]
            if n in state_out:
                at, own = state_out[n]
                if (t["scale"], t["zero_point"]) != (own["scale"], own["zero_point"]):
                    raise ExportError(f"{name}.int8io.tflite: {n} has other parameters than its state's input; the state cannot be fed back as it is")
                kept[n] = ("DENOISE_KEPT_STATES_OUT", at, t["scale"], t["zero_point"])
            else:
                kept[n] = ("DENOISE_KEPT_WORK", work, t["scale"], t["zero_point"])
                work += size[n]
            index[n] = len(tensors)
            tensors.append(row(n, t, kept[n]))
        z = f"z_{name}" if name != "policy" else None
        if z is not None and (size.get(z) != 2 * F or z not in part["outputs"]):
            raise ExportError(f"{name}: no output {z!r} of [1, 2, 1, {F}]; the C loop sums the parts' z terms")
        parts.append(f'    {{"{name}", {first}, {outputs - first}, {outputs}, {len(tensors) - outputs}, {index[z] if z else -1}}}')
    if "logits" not in g["parts"][always[-1]]["outputs"] or size["logits"] < g["branches"]:
        raise ExportError(f"part {always[-1]} gives no 'logits' with one logit per branch; the C loop opens the branches by them")
    if size.get("energies") != g["energies"]["bands"] or size.get("features") != 3 * F:
        raise ExportError("the parts take [1, 3, 1, bins] features and 'energies' of gating.energies.bands values")

    define = [
        *_signal(bundle),
        ("DENOISE_ENERGY_BANDS", g["energies"]["bands"], "transforms.energies.bands"),
        ("DENOISE_ENERGY_WIDTH", g["energies"]["width"], "transforms.energies.width: bins per band, from bin 0"),
        ("DENOISE_NUM_BRANCHES", g["branches"], "gating.branches"),
        ("DENOISE_NUM_PARTS", len(order), "gating.order: the parts every frame calls, then branch0, ..."),
        ("DENOISE_PART_TRUNK", 0, ""),
        ("DENOISE_PART_BRANCH0", len(always), "the parts before it run on every frame; branch k is part DENOISE_PART_BRANCH0 + k"),
        ("DENOISE_LOGITS", index["logits"], f"{always[-1]}'s output 'logits': branch k runs when logits[k] > its zero point"),
        ("DENOISE_NUM_TENSORS", len(tensors), "part inputs and outputs, part by part"),
        ("DENOISE_MAX_IO", max(max(len(p["inputs"]), len(p["outputs"])) for p in g["parts"].values()), "most inputs or outputs of one part"),
        ("DENOISE_NUM_STATES", len(slots), "manifest states, in this order"),
        ("DENOISE_STATES_LEN", states_len, "all states concatenated"),
        ("DENOISE_SCRATCH", work, "work offset of the inputs the loop fills (features, energies, requantised), per call"),
        ("DENOISE_WORK_LEN", work + scratch, "outputs that are not states, then room for one part's filled inputs"),
    ]
    layouts = [
        ("DENOISE_TENSOR_LAYOUT",
         "/* denoise_gated_tensor per part input, then output, part by part in call order: name, size, where\n"
         " * the loop keeps it and at which offset, scale and zero point (the part's io), how an input is\n"
         " * filled, and for a requantised input where its source is kept and the source's parameters. */",
         tensors),
        ("DENOISE_PART_LAYOUT",
         "/* denoise_gated_part in call order: name, first input and count, first output and count (in\n"
         " * DENOISE_TENSOR_LAYOUT), its z term (-1: none, a version-1 policy). */",
         parts),
        ("DENOISE_STATE_LAYOUT",
         "/* denoise_gated_state_slot per state, in manifest order: input, output, owning part, offset and size\n"
         " * in the concatenated buffer, start value and zero point in its owner's parameters, 1 if zeroed\n"
         " * when its branch is skipped. */",
         slots),
    ]  # fmt: skip
    return _header(PARTS, define, layouts)


# What the chain loop fills each stage input that is not a state with (denoise_chain.h), and the
# outputs it reads; each [1, 3, 1, bins] (features) or [1, 2, 1, bins].
CHAIN_INPUTS = {"student": ("features",), "corrector": ("estimate", "noisy", "eps")}
CHAIN_OUTPUTS = {"student": "z", "corrector": "corrected"}


def loop_blocker(files: dict) -> str | None:
    """Why the C loop cannot run a bundle's int8io files (``{name: BundleFile}``): the first tensor
    that is not quantised int8 (the int8 quality budget may have needed int16 activations), or None."""
    for n, f in files.items():
        io = f.io  # a part's: inputs, outputs (lists); a plain model's: input, output, states, state_outputs (by name)
        single = [io[k] for k in ("input", "output") if k in io] + [t for k in ("states", "state_outputs") for t in io.get(k, {}).values()]
        for t in [*io.get("inputs", []), *io.get("outputs", []), *single]:
            if t["dtype"] != "int8" or "scale" not in t:
                return f"{n}.int8io.tflite: {t['name']} is {t['dtype']}; the C loop (firmware/) takes quantised int8 tensors only"
    return None


def skip_loop(files: dict, verification: dict, log) -> bool:
    """True, with the reason logged and recorded in ``verification["c_loop"]``, when the C loop
    cannot run these int8io files (``loop_blocker``); the bundle is then written without it."""
    why = loop_blocker(files)
    if why:
        log(f"firmware: no C loop ({why})")
        verification["c_loop"] = {"written": False, "why": why}
    return why is not None


def _int8_io(bundle: Bundle, section: str) -> dict[str, dict[str, dict]]:
    """Per part of a gated or two-stage bundle, its int8io file's tensors by name (inputs and
    outputs), refused in one line unless every one is quantised int8."""
    from export.build import ExportError

    files = bundle.parts("tflite", "int8io")
    if why := loop_blocker(files):
        raise ExportError(why)
    spec = {n: {t["name"]: t for t in [*f.io["inputs"], *f.io["outputs"]]} for n, f in files.items()}
    if "integer_io" not in bundle.manifest[section]:
        raise ExportError(f"{section}.integer_io is missing: the manifest does not say how its int8io parts are chained; re-export the bundle")
    return spec


def chain_config_header(bundle: Bundle) -> str:
    """``denoise_config.h`` of a two-stage bundle's int8io stages, from its manifest: every stage
    input and output with where the loop keeps it and how it fills it (``chain.integer_io``: each
    input that is not a state quantised from its float value, each state fed back as it is), the
    states, the flow power and the eps generator.

    Raises ExportError (one line) for a manifest the loop cannot follow.
    """
    from export.build import ExportError  # build.py calls this module

    c, F = bundle.chain, bundle.signal["bins"]
    order = c["order"]
    if order != list(CHAIN_INPUTS):
        raise ExportError(f"chain.order {order}: the C loop calls the student, then the corrector")
    spec = _int8_io(bundle, "chain")
    eps = c["eps"]
    if eps["generator"] not in ("splitmix64_box_muller", "zero"):
        raise ExportError(f"chain.eps.generator {eps['generator']!r}: the C loop draws splitmix64_box_muller or zero")
    power = float(bundle.manifest["transforms"]["flow"]["power"])
    owner = {s: name for name, p in c["parts"].items() for s in p["states"]}

    slots, state_at, offset = [], {}, 0
    for s in bundle.states:
        t, out = spec[owner[s.name]][s.name], spec[owner[s.name]][s.output]
        size = int(np.prod(t["shape"]))
        if (t["scale"], t["zero_point"], size) != (out["scale"], out["zero_point"], int(np.prod(out["shape"]))):
            raise ExportError(f"{owner[s.name]}.int8io.tflite: {s.output} has other parameters or size than {s.name}; the state cannot be fed back as it is")
        slots.append(f'    {{"{s.name}", "{s.output}", {order.index(owner[s.name])}, {offset}, {size}, {int(quantize(np.float32(s.init), t))}}}')
        state_at[s.name], state_at[s.output] = ("DENOISE_CHAIN_STATES_IN", offset), ("DENOISE_CHAIN_STATES_OUT", offset)
        offset += size

    tensors, stages, index, work = [], [], {}, 0

    def add(name: str, names: list[str], made: tuple[str, ...], side: str) -> None:
        nonlocal work
        for n in names:
            t, size = spec[name][n], int(np.prod(spec[name][n]["shape"]))
            if n in state_at:
                where, fill = state_at[n], "NONE"
            elif n in made:
                if size != (3 if n == "features" else 2) * F:
                    raise ExportError(f"{name}.int8io.tflite: {n} has shape {t['shape']}, not [1, {3 if n == 'features' else 2}, 1, {F}]; the C loop cannot fill or read it")
                where, fill = ("DENOISE_CHAIN_WORK", work), n.upper() if side == "input" else "NONE"
                work += size
            else:
                raise ExportError(f"{name}: {side} {n!r} is neither a state nor {' / '.join(made)}; the C loop follows the chain protocol only")
            index[n] = len(tensors)
            tensors.append(f'    {{"{n}", {size}, {where[0]}, {where[1]}, {_cfloat(t["scale"])}, {t["zero_point"]}, DENOISE_CHAIN_FILL_{fill}}}')

    for name in order:
        first = len(tensors)
        add(name, c["parts"][name]["inputs"], CHAIN_INPUTS[name], "input")
        outputs = len(tensors)
        add(name, c["parts"][name]["outputs"], (CHAIN_OUTPUTS[name],), "output")
        stages.append(f'    {{"{name}", {first}, {outputs - first}, {outputs}, {len(tensors) - outputs}}}')

    seeded = eps["generator"] != "zero"
    define = [
        *_signal(bundle),
        ("DENOISE_FLOW_EXPONENT", _cfloat(power - 1), f"transforms.flow.power - 1 (power {power:g})"),
        ("DENOISE_UNFLOW_EXPONENT", _cfloat(1 / power - 1), "1 / power - 1: unflow"),
        ("DENOISE_EPS_SEEDED", int(seeded), f"chain.eps.generator {eps['generator']}"),
        ("DENOISE_EPS_SEED", f"UINT64_C({eps['seed'] if seeded else 0})", "chain.eps.seed"),
        ("DENOISE_NUM_STAGES", len(order), "chain.order: student, corrector"),
        ("DENOISE_STAGE_STUDENT", 0, ""),
        ("DENOISE_STAGE_CORRECTOR", 1, ""),
        ("DENOISE_Z", index["z"], "the student's output 'z' in DENOISE_TENSOR_LAYOUT"),
        ("DENOISE_CORRECTED", index["corrected"], "the corrector's output 'corrected'"),
        ("DENOISE_NUM_TENSORS", len(tensors), "stage inputs and outputs, stage by stage"),
        ("DENOISE_MAX_IO", max(max(len(p["inputs"]), len(p["outputs"])) for p in c["parts"].values()), "most inputs or outputs of one stage"),
        ("DENOISE_NUM_STATES", len(slots), "manifest states, in this order"),
        ("DENOISE_STATES_LEN", offset, "all states concatenated"),
        ("DENOISE_WORK_LEN", work, "the filled inputs and the outputs that are not states"),
    ]
    layouts = [
        ("DENOISE_TENSOR_LAYOUT",
         "/* denoise_chain_tensor per stage input, then output, stage by stage in call order: name, size,\n"
         " * where the loop keeps it and at which offset, scale and zero point (the stage's io), how an\n"
         " * input is filled. */",
         tensors),
        ("DENOISE_STAGE_LAYOUT",
         "/* denoise_chain_stage in call order: name, first input and count, first output and count (in\n"
         " * DENOISE_TENSOR_LAYOUT). */",
         stages),
        ("DENOISE_STATE_LAYOUT",
         "/* denoise_chain_state_slot per state, in manifest order: input, output, owning stage, offset and\n"
         " * size in the concatenated buffer, start value in its parameters. */",
         slots),
    ]  # fmt: skip
    return _header(PARTS, define, layouts)


def _audio_in(golden: Path, hop: int, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The golden frames [T, F, 2] and the parity audio cut or padded to them [T * hop]."""
    frames = np.load(golden / "frames_fp32.npy")  # [T, F, 2]
    n = len(frames)
    audio_in = np.zeros(n * hop, np.float32)
    audio_in[: min(len(audio), n * hop)] = audio[: n * hop]
    return frames, audio_in


def _check_frames(given: list[np.ndarray], frames: np.ndarray) -> None:
    from export.build import ExportError

    err = np.abs(np.stack(given) - frames).max()
    if err > FRAME_TOLERANCE * max(1.0, float(np.abs(frames).max())):
        raise ExportError(f"the golden frames are not the frames of the parity audio (max difference {err:.3g}); the golden vectors and the audio disagree")


def _write(out: Path, files: tuple[str, ...], config: str, model: str, audio: dict[str, np.ndarray], about: dict[str, str], add) -> None:
    """The golden audio and ``firmware/``: ``files`` from the sources, ``config`` as denoise_config.h."""
    for name, a in audio.items():
        np.save(out / "golden" / f"{name}.npy", a)
        add(f"golden/{name}.npy", "golden", shape=list(a.shape), dtype=a.dtype.name, about=about[name])
    firmware = out / "firmware"
    firmware.mkdir(exist_ok=True)
    for name in files:
        shutil.copyfile(SOURCES / name, firmware / name)
        add(f"firmware/{name}", "c_reference")
    (firmware / CONFIG).write_text(config)
    add(f"firmware/{CONFIG}", "c_reference", generated_for=model)


def _supported(sig: dict) -> None:
    from export.build import ExportError

    if not fft_supported(sig["n_fft"]):
        raise ExportError(f"n_fft {sig['n_fft']}: the C reference (firmware/) needs an even FFT length whose half has no prime factor above {MAX_RADIX}")


def write(out: Path, runner: Runner, audio: np.ndarray, add) -> None:
    """Writes ``firmware/`` and the golden audio into the bundle folder ``out``, whose ``golden/``
    already holds the integer model's vectors. ``runner``: the bundle's integer model on LiteRT;
    ``audio``: the parity audio the golden frames were taken from; ``add(name, kind, **info)`` lists
    a written file in the manifest.

    Shape: audio [L]; writes audio_in, audio_out, audio_out_replay [T * hop] for T golden frames.
    """
    sig = runner.bundle.signal
    _supported(sig)
    golden = out / "golden"
    frames, audio_in = _audio_in(golden, sig["hop"], audio)
    replay = Replay(runner, np.load(golden / "int8io_output.npy"), np.load(golden / "int8io_states_out.npy"))
    audio_replay = Engine(runner.bundle, replay).process(audio_in)  # [T * hop]
    _check_frames(replay.frames, frames)
    audio_out = Engine(runner.bundle, runner).process(audio_in)  # [T * hop]
    about = {
        "audio_in": "parity audio, first frames = the golden frames",
        "audio_out": f"the engine's output stream for audio_in with {MODEL} (LiteRT)",
        "audio_out_replay": "the engine's output stream for audio_in, golden int8io outputs in place of the model",
    }
    audio = {"audio_in": audio_in, "audio_out": audio_out, "audio_out_replay": audio_replay}
    _write(out, FILES, config_header(runner), MODEL, audio, about, add)


class GoldenCalls:
    """One int8io part behind the session interface, returning the outputs of its next golden call
    (``golden/<part>.int8io.npz``) instead of running; checks that the call comes on the frame the
    golden call was made on (``replay.given``: the frames so far)."""

    def __init__(self, replay: "GoldenReplay", name: str, inputs: list[str], outputs: list[str], calls: dict[str, np.ndarray]):
        self.replay, self.name, self.inputs, self.outputs, self.calls = replay, name, inputs, outputs, calls
        self.n = 0

    def run(self, values):
        from export.build import ExportError

        t, frames = len(self.replay.given) - 1, self.calls["frames"]
        if self.n >= len(frames) or frames[self.n] != t:
            made = f"call {self.n} was made on frame {frames[self.n]}" if self.n < len(frames) else f"all {len(frames)} calls are used up"
            raise ExportError(f"{self.name} is called on frame {t} but its golden {made}; the golden calls and the {self.replay.protocol} protocol disagree")
        self.n += 1
        return [self.calls[n][self.n - 1] for n in self.outputs]


class GoldenReplay:
    """A runner of a bundle's int8io parts (``protocol``: its manifest section) whose every part
    call is answered by its golden outputs; keeps the frames the engine gives it."""

    protocol = ""

    def _golden_sessions(self, bundle: Bundle) -> dict:
        """Per part a ``GoldenCalls`` (in ``golden``) behind its ``IntegerSession``."""
        self.given: list[np.ndarray] = []  # the frames the engine gave (a GatedRunner counts its own "frames")
        self.golden, sessions, section = {}, {}, bundle.manifest[self.protocol]
        for name, f in bundle.parts("tflite", "int8io").items():
            with np.load(bundle.root / bundle.files[f.path.name]["golden"]["file"]) as z:
                calls = dict(z)
            self.golden[name] = GoldenCalls(self, name, section["parts"][name]["inputs"], section["parts"][name]["outputs"], calls)
            sessions[name] = IntegerSession(self.golden[name], f.io)
        return sessions

    def __call__(self, frame, states):
        self.given.append(frame.copy())  # [F, 2]
        return super().__call__(frame, states)


class GatedReplay(GoldenReplay, GatedRunner):
    """The gating protocol on the int8io parts, every part call answered by its golden outputs."""

    protocol = "gating"

    def __init__(self, bundle: Bundle):
        super().__init__(bundle.gating, bundle.states, bundle.manifest["transforms"]["features"]["power"], self._golden_sessions(bundle))


def _write_replayed(out: Path, bundle: Bundle, config: str, replay: GoldenReplay, runner, audio: np.ndarray, files: tuple[str, ...], add) -> None:
    """The golden audio and ``firmware/`` (``files`` and ``config``) of a bundle of int8io parts:
    ``replay`` answers every part call with its golden outputs, and must make every golden call;
    ``runner`` chains the parts on LiteRT.

    Shape: audio [L]; writes audio_in, audio_out, audio_out_replay [T * hop] for T golden frames.
    """
    from export.build import ExportError

    frames, audio_in = _audio_in(out / "golden", bundle.signal["hop"], audio)
    audio_replay = Engine(bundle, replay).process(audio_in)  # [T * hop]
    _check_frames(replay.given, frames)
    unused = [f"{n} ({len(c.calls['frames']) - c.n} of {len(c.calls['frames'])})" for n, c in replay.golden.items() if c.n != len(c.calls["frames"])]
    if unused:
        raise ExportError(f"golden calls the {replay.protocol} protocol did not make: {', '.join(unused)}; the golden calls and the protocol disagree")
    audio_out = Engine(bundle, runner).process(audio_in)  # [T * hop]
    about = {
        "audio_in": "parity audio, first frames = the golden frames",
        "audio_out": f"the engine's output stream for audio_in with the {PARTS} parts chained by {replay.protocol}.integer_io (LiteRT)",
        "audio_out_replay": "the engine's output stream for audio_in, each part call answered by its golden outputs (<part>.int8io.npz)",
    }
    audio = {"audio_in": audio_in, "audio_out": audio_out, "audio_out_replay": audio_replay}
    _write(out, files, config, PARTS, audio, about, add)


def write_gated(out: Path, runner: GatedRunner, audio: np.ndarray, add) -> None:
    """``write`` for a gated bundle in ``out``, whose ``golden/`` already holds the int8io parts'
    golden calls (``<part>.int8io.npz``): ``runner`` chains the int8io parts on LiteRT with the
    policy's gates; the replay answers every part call with its golden outputs.

    Shape: audio [L]; writes audio_in, audio_out, audio_out_replay [T * hop] for T golden frames.
    """
    bundle = Bundle(out, verify=False)
    _supported(bundle.signal)
    config = gated_config_header(bundle)
    _write_replayed(out, bundle, config, GatedReplay(bundle), runner, audio, GATED_FILES, add)


class ChainReplay(GoldenReplay, ChainRunner):
    """The chain protocol on the int8io stages, every stage call answered by its golden outputs."""

    protocol = "chain"

    def __init__(self, bundle: Bundle):
        t = bundle.manifest["transforms"]
        super().__init__(bundle.chain, bundle.states, (t["features"]["power"], t["flow"]["power"]), self._golden_sessions(bundle))


def write_chain(out: Path, runner: ChainRunner, audio: np.ndarray, add) -> None:
    """``write`` for a two-stage bundle in ``out``, whose ``golden/`` already holds the int8io
    stages' golden calls (``<stage>.int8io.npz``) and eps: ``runner`` chains the int8io stages on
    LiteRT; the replay answers every stage call with its golden outputs.

    Shape: audio [L]; writes audio_in, audio_out, audio_out_replay [T * hop] for T golden frames.
    """
    bundle = Bundle(out, verify=False)
    _supported(bundle.signal)
    config = chain_config_header(bundle)
    _write_replayed(out, bundle, config, ChainReplay(bundle), runner, audio, CHAIN_FILES, add)
