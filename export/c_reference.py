"""The plain-C reference of the streaming loop that ships in every plain bundle as ``firmware/``,
and the golden audio that checks it.

The C sources in ``export/c_reference/`` are fixed (docs/firmware.md describes their API); what
differs between bundles (sizes, scales, zero points, state layout) goes into a generated
``firmware/denoise_config.h``. The golden audio, beside the integer model's golden vectors:

- ``golden/audio_in.npy``: the parity audio whose frames the golden frames are (hop samples per
  golden frame);
- ``golden/audio_out.npy``: the Python engine's output for it with ``model.int8io.tflite`` on
  LiteRT, the stream as it comes out (lagging the input by window - hop samples);
- ``golden/audio_out_replay.npy``: the engine's output when each frame's model outputs are the
  golden ``int8io_output`` and ``int8io_states_out`` instead of a model run. ``denoise_replay``
  (``firmware/denoise_replay.c``) runs the C loop under the same stand-in and must match it up to
  float rounding, whatever the FFT; ``audio_out`` also depends on which int8 values the features
  round to and on the interpreter's kernels.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from runtime.backends import Runner
from runtime.engine import Engine

SOURCES = Path(__file__).resolve().parent / "c_reference"
FILES = ("denoise.h", "denoise.c", "denoise_fft.h", "denoise_fft.c", "denoise_replay.c")
CONFIG = "denoise_config.h"
MODEL = "model.int8io.tflite"
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


def config_header(runner: Runner) -> str:
    """``denoise_config.h`` of the bundle whose integer model ``runner`` runs."""
    sig, io = runner.bundle.signal, runner.model.io
    inp, outp = io["input"], io["output"]
    slots, offset = [], 0
    for s, q in zip(runner.bundle.states, runner.initial_state()):
        slots.append(f'    {{"{s.name}", "{s.output}", {offset}, {q.size}, {int(q.flat[0])}}}')
        offset += q.size
    define = [
        ("DENOISE_SAMPLE_RATE", sig["sample_rate"], "signal.sample_rate (Hz)"),
        ("DENOISE_N_FFT", sig["n_fft"], "signal.n_fft"),
        ("DENOISE_WIN", sig["win_length"], "signal.win_length: periodic sqrt-Hann"),
        ("DENOISE_HOP", sig["hop"], "signal.hop: samples in and out per frame"),
        ("DENOISE_BINS", sig["bins"], "signal.bins"),
        ("DENOISE_FEATURE_POWER", _cfloat(runner.power), "transforms.features.power"),
        ("DENOISE_FEATURES_SCALE", _cfloat(inp["scale"]), f"input {inp['name']!r}"),
        ("DENOISE_FEATURES_ZERO_POINT", f"({inp['zero_point']})", ""),
        ("DENOISE_FEATURES_LEN", int(np.prod(inp["shape"])), str(inp["shape"])),
        ("DENOISE_Z_SCALE", _cfloat(outp["scale"]), f"output {outp['name']!r}"),
        ("DENOISE_Z_ZERO_POINT", f"({outp['zero_point']})", ""),
        ("DENOISE_Z_LEN", int(np.prod(outp["shape"])), str(outp["shape"])),
        ("DENOISE_NUM_STATES", len(slots), "graph inputs and outputs 1.. in this order"),
        ("DENOISE_STATES_LEN", offset, "all states concatenated"),
    ]
    width = max(len(n) for n, _, _ in define)
    lines = [
        f"/* Generated by python -m export from this bundle's manifest.json, for {MODEL}: do not edit. */",
        "#ifndef DENOISE_CONFIG_H",
        "#define DENOISE_CONFIG_H",
        "",
        *(f"#define {n:{width}} {v}" + (f"  /* {c} */" if c else "") for n, v, c in define),
        "",
        "/* Per state, in manifest order: input, output, offset and size in the concatenated buffer,",
        " * start value (its init quantised with its own scale and zero point). */",
        "#define DENOISE_STATE_LAYOUT \\",
        ", \\\n".join(slots),
        "",
        "#endif /* DENOISE_CONFIG_H */",
        "",
    ]
    return "\n".join(lines)


def write(out: Path, runner: Runner, audio: np.ndarray, add) -> None:
    """Writes ``firmware/`` and the golden audio into the bundle folder ``out``, whose ``golden/``
    already holds the integer model's vectors. ``runner``: the bundle's integer model on LiteRT;
    ``audio``: the parity audio the golden frames were taken from; ``add(name, kind, **info)`` lists
    a written file in the manifest.

    Shape: audio [L]; writes audio_in, audio_out, audio_out_replay [T * hop] for T golden frames.
    """
    from export.build import ExportError  # build.py calls this module

    sig = runner.bundle.signal
    if not fft_supported(sig["n_fft"]):
        raise ExportError(f"n_fft {sig['n_fft']}: the C reference (firmware/) needs an even FFT length whose half has no prime factor above {MAX_RADIX}")
    golden = out / "golden"
    frames = np.load(golden / "frames_fp32.npy")  # [T, F, 2]
    hop, n = sig["hop"], len(frames)
    audio_in = np.zeros(n * hop, np.float32)
    audio_in[: min(len(audio), n * hop)] = audio[: n * hop]

    replay = Replay(runner, np.load(golden / "int8io_output.npy"), np.load(golden / "int8io_states_out.npy"))
    audio_replay = Engine(runner.bundle, replay).process(audio_in)  # [T * hop]
    err = np.abs(np.stack(replay.frames) - frames).max()
    if err > FRAME_TOLERANCE * max(1.0, float(np.abs(frames).max())):
        raise ExportError(f"the golden frames are not the frames of the parity audio (max difference {err:.3g}); the golden vectors and the audio disagree")
    audio_out = Engine(runner.bundle, runner).process(audio_in)  # [T * hop]

    about = {
        "audio_in": "parity audio, first frames = the golden frames",
        "audio_out": f"the engine's output stream for audio_in with {MODEL} (LiteRT)",
        "audio_out_replay": "the engine's output stream for audio_in, golden int8io outputs in place of the model",
    }
    for name, a in (("audio_in", audio_in), ("audio_out", audio_out), ("audio_out_replay", audio_replay)):
        np.save(golden / f"{name}.npy", a)
        add(f"golden/{name}.npy", "golden", shape=list(a.shape), dtype=a.dtype.name, about=about[name])

    firmware = out / "firmware"
    firmware.mkdir(exist_ok=True)
    for name in FILES:
        shutil.copyfile(SOURCES / name, firmware / name)
        add(f"firmware/{name}", "c_reference")
    (firmware / CONFIG).write_text(config_header(runner))
    add(f"firmware/{CONFIG}", "c_reference", generated_for=MODEL)
