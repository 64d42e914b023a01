"""The C reference of the streaming loop (export/c_reference), compiled as firmware would compile
it (cc -std=c99 -Wall -Wextra -Werror -O2) and run on a bundle's golden audio: the shipped default
bundle and a fresh export of the small student, each copied and given its firmware/ by
``c_reference.write``.

- ``denoise_replay``, golden model outputs standing in for the model: its features equal the golden
  ones but for 1-LSB differences where a value lies within float rounding of a quantisation step
  (the golden frames come from PyTorch's FFT; 1 of 96,600 on the default bundle), the states it
  feeds back are the golden ones, and its audio is the Python engine's under the same stand-in.
- The loop as a shared library driven through ctypes, its invoke a Python callback that runs
  ``model.int8io.tflite`` on LiteRT or on TensorFlow Lite Micro (``tflite_micro``): features,
  states and audio against the Python engine running the same interpreter.

The gated loop (``denoise_gated.c``) likewise, on the shipped gated bundle (copied and given its
firmware/ by ``c_reference.write_gated``) and on a fresh export of a small gated model (as the
export wrote it): ``denoise_gated_replay`` makes exactly the golden part calls with the golden
inputs and the golden gates, and gives the engine's audio; a wrong requantisation, a zeroed state
held, a logit over its threshold and a broken golden folder each fail clearly; through ctypes with
one interpreter per part it makes the runtime's calls and gives its audio.

Skipped, with the reason, without a C compiler, LiteRT or tflite-micro.
"""
import ctypes
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from export import c_reference
from runtime.audio import load
from runtime.backends import GatedRunner, IntegerSession, Runner
from runtime.bundle import MANIFEST, Bundle, seal, sha256
from runtime.engine import Engine

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "runtime" / "bundles" / "default"
SAMPLE = ROOT / "assets" / "sample" / "noisy.wav"  # the parity audio of both bundles
CFLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-O2"]
AUDIO_TOLERANCE = 1e-5  # max abs difference of the output samples, relative to their peak; float rounding is about 2e-7
FLIPS = 1e-3  # largest fraction of features allowed 1 LSB off between two FFTs


@pytest.fixture(scope="module")
def cc():
    path = shutil.which("cc")
    if path is None:
        pytest.skip("no C compiler (cc) on this machine")
    return path


def _litert_runner(root: Path):
    pytest.importorskip("ai_edge_litert", reason="the golden audio is made with LiteRT (pip install ai-edge-litert)")
    from runtime.backends import open_runner

    return open_runner(Bundle(root), "litert", "int8io")


def _with_firmware(source: Path, root: Path, write, sources: tuple[str, ...]) -> Path:
    """A copy of the bundle ``source`` at ``root`` with firmware/ and the golden audio written by
    ``write(root, add)`` and listed in its manifest, as the export writes them."""
    shutil.copytree(source, root)
    manifest = json.loads((root / MANIFEST).read_text())

    def add(name, kind, **info):
        manifest["files"][name] = {"kind": kind, **info, "sha256": sha256(root / name), "bytes": (root / name).stat().st_size}

    written = set(manifest["files"])
    write(root, add)
    assert set(manifest["files"]) - written <= {f"golden/{n}.npy" for n in ("audio_in", "audio_out", "audio_out_replay")} | {
        f"firmware/{n}" for n in (*sources, c_reference.CONFIG)
    }
    assert all((root / "firmware" / n).is_file() for n in (*sources, c_reference.CONFIG))
    (root / MANIFEST).write_text(json.dumps(seal(manifest), indent=1))
    return root


@pytest.fixture(scope="module", params=["default", "small"])
def bundle(request, tmp_path_factory):
    """A copy of the bundle with firmware/ and the golden audio written as the export writes them."""
    source = DEFAULT if request.param == "default" else request.getfixturevalue("small_bundle")
    root = tmp_path_factory.mktemp("cref") / request.param
    return _with_firmware(source, root, lambda r, add: c_reference.write(r, _litert_runner(r), load(SAMPLE, 16000), add), c_reference.FILES)


def _compile(cc, out: Path, sources: list[Path], shared: bool = False) -> Path:
    extra = ["-shared", "-fPIC"] if shared else []
    run = subprocess.run([cc, *CFLAGS, *extra, "-o", str(out), *map(str, sources), "-lm"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return out


def _golden(root: Path, name: str) -> np.ndarray:
    return np.load(root / "golden" / f"{name}.npy")


def test_golden_audio_frames_are_the_golden_frames(bundle):
    """write() checked this before writing; here against PyTorch's framing, independently."""
    import torch

    from distill.dsp import StftConfig, stft

    sig = Bundle(bundle, verify=False).signal
    cfg = StftConfig(sample_rate=sig["sample_rate"], n_fft=sig["n_fft"], win_length=sig["win_length"], hop=sig["hop"])
    audio, frames = _golden(bundle, "audio_in"), _golden(bundle, "frames_fp32")
    assert len(audio) == len(frames) * sig["hop"]
    ours = stft(torch.from_numpy(audio)[None], cfg)[0, : len(frames)].numpy()  # [T, F, 2]
    assert np.abs(ours - frames).max() <= 1e-6 * np.abs(frames).max()


def _replay(cc, bundle, tmp_path, firmware=None):
    firmware = firmware or bundle / "firmware"
    exe = _compile(cc, tmp_path / "denoise_replay", [firmware / n for n in c_reference.REPLAY])
    dump = tmp_path / "dump"
    dump.mkdir()
    run = subprocess.run([str(exe), str(bundle / "golden"), str(dump)], capture_output=True, text=True)
    return run, dump


def test_replay_reproduces_golden_features_states_and_engine_audio(cc, bundle, tmp_path):
    run, dump = _replay(cc, bundle, tmp_path)
    assert run.returncode == 0 and run.stdout.endswith("passed\n"), run.stdout + run.stderr
    x, s = _golden(bundle, "int8io_input"), _golden(bundle, "int8io_states_in")
    feats = np.fromfile(dump / "features.i8", np.int8).reshape(x.shape)
    diff = np.abs(feats.astype(int) - x)
    assert diff.max() <= 1 and (diff > 0).mean() <= FLIPS, f"{(diff > 0).sum()} features differ, by up to {diff.max()} LSB"
    assert np.array_equal(np.fromfile(dump / "states_in.i8", np.int8).reshape(s.shape), s)  # start values, then each frame's output fed back
    audio, want = np.fromfile(dump / "audio_out.f32", np.float32), _golden(bundle, "audio_out_replay")
    assert np.abs(audio - want).max() <= AUDIO_TOLERANCE * np.abs(want).max()


def test_replay_fails_on_a_wrong_constant(cc, bundle, tmp_path):
    """A zero point off by one, as a hand-ported config might be: the replay says so."""
    firmware = tmp_path / "firmware"
    shutil.copytree(bundle / "firmware", firmware)
    config = firmware / c_reference.CONFIG
    text, n = re.subn(r"(#define DENOISE_FEATURES_ZERO_POINT\s+)\((-?\d+)\)", lambda m: f"{m[1]}({int(m[2]) + 1})", config.read_text())
    assert n == 1
    config.write_text(text)
    run, _ = _replay(cc, bundle, tmp_path, firmware)
    assert run.returncode == 1 and run.stdout.endswith("FAILED\n"), run.stdout


def test_replay_without_golden_vectors_says_what_is_wrong(cc, bundle, tmp_path):
    exe = _compile(cc, tmp_path / "r", [bundle / "firmware" / n for n in c_reference.REPLAY])
    run = subprocess.run([str(exe), str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.startswith("error: ") and "audio_in.npy" in run.stderr


class Fft(ctypes.Structure):
    _fields_ = [("n", ctypes.c_int), ("radix", ctypes.c_int * 32), ("twiddle", ctypes.c_void_p)]


F32, CPX = np.ctypeslib.ndpointer(np.float32, flags="C"), np.ctypeslib.ndpointer(np.complex64, flags="C")
INVOKE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, *[ctypes.POINTER(ctypes.c_int8)] * 4)


@pytest.fixture(scope="module")
def fft_lib(cc, tmp_path_factory):
    path = tmp_path_factory.mktemp("fft") / "libdenoise_fft.so"
    lib = ctypes.CDLL(str(_compile(cc, path, [c_reference.SOURCES / "denoise_fft.c"], shared=True)))
    lib.denoise_fft_init.argtypes = [ctypes.POINTER(Fft), ctypes.c_int, CPX]
    lib.denoise_rfft.argtypes = [ctypes.POINTER(Fft), CPX, F32, CPX]
    lib.denoise_irfft.argtypes = [ctypes.POINTER(Fft), F32, CPX, CPX]
    return lib


@pytest.fixture(scope="module")
def lib(cc, bundle, tmp_path_factory):
    """The bundle's loop as a shared library."""
    path = tmp_path_factory.mktemp("lib") / "libdenoise.so"
    lib = ctypes.CDLL(str(_compile(cc, path, [bundle / "firmware" / n for n in c_reference.LOOP], shared=True)))
    lib.denoise_create.restype = ctypes.c_void_p
    lib.denoise_create.argtypes = [INVOKE, ctypes.c_void_p]
    lib.denoise_process_frame.argtypes = [ctypes.c_void_p, F32, F32]
    lib.denoise_destroy.argtypes = [ctypes.c_void_p]
    return lib


@pytest.mark.parametrize("n", [320, 2, 4, 6, 30, 64, 2 * 3 * 5 * 7 * 2, 2 * 13 * 4])
def test_fft_matches_numpy(fft_lib, n):
    fft, twiddle = Fft(), np.zeros(n, np.complex64)
    assert fft_lib.denoise_fft_init(ctypes.byref(fft), n, twiddle) == 0
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n).astype(np.float32)
    spec, work = np.zeros(n // 2 + 1, np.complex64), np.zeros(n, np.complex64)
    fft_lib.denoise_rfft(ctypes.byref(fft), spec, x, work)
    want = np.fft.rfft(x.astype(np.float64))
    assert np.abs(spec - want).max() <= 1e-6 * np.abs(want).max()
    # bins 0 and n/2 get imaginary parts, which the inverse must ignore as numpy's does
    X = (rng.standard_normal(n // 2 + 1) + 1j * rng.standard_normal(n // 2 + 1)).astype(np.complex64)
    y = np.zeros(n, np.float32)
    fft_lib.denoise_irfft(ctypes.byref(fft), y, X, work)
    want = np.fft.irfft(X.astype(np.complex128), n)
    assert np.abs(y - want).max() <= 1e-6 * np.abs(want).max()


@pytest.mark.parametrize("n", [0, 1, 15, 2 * 17, 2 * 3 * 19])
def test_fft_refuses_lengths_it_cannot_do(fft_lib, n):
    assert fft_lib.denoise_fft_init(ctypes.byref(Fft()), n, np.zeros(max(n, 1), np.complex64)) == -1
    assert not c_reference.fft_supported(n)


class Tflm(Runner):
    """``model.int8io.tflite`` on TensorFlow Lite Micro, as a runtime backend (input order: features,
    then the states in manifest order; outputs: z, then each <state>_out in that order)."""

    def __init__(self, runner: Runner):
        super().__init__(runner.bundle, runner.model)
        from tflite_micro.python.tflite_micro import runtime

        self.interpreter = runtime.Interpreter.from_file(str(runner.model.path), arena_size=1 << 20)

    def run(self, x, states):
        ip = self.interpreter
        for i, v in enumerate([x, *states]):
            ip.set_input(v, i)
        ip.invoke()
        return [ip.get_output(i) for i in range(1 + len(states))]


class Follow(Runner):
    """Another runner whose model input is the C loop's features of the same frame: so both sides
    run the model on the same values where their FFTs round a feature to different int8 values.
    Keeps its own features and the states it was given."""

    def __init__(self, runner: Runner, features: list[np.ndarray]):
        super().__init__(runner.bundle, runner.model)
        self.inner, self.theirs = runner, features
        self.ours, self.states = [], []

    def run(self, x, states):
        self.ours.append(x.copy())
        self.states.append(np.concatenate([s.ravel() for s in states]))
        return self.inner.run(self.theirs[len(self.ours) - 1], states)


def _stream_c(lib, runner: Runner, audio: np.ndarray):
    """The C loop over ``audio``, its invoke ``runner.run`` through a ctypes callback; returns the
    audio and, per frame, the features and states the loop passed."""
    shapes = [s.shape for s in runner.bundle.states]
    bounds = np.cumsum([0, *(int(np.prod(s)) for s in shapes)])
    in_shape, z_len = runner.in_spec["shape"], int(np.prod(runner.out_spec["shape"]))
    features, states, errors = [], [], []

    def invoke(ctx, x, s_in, z, s_out):
        try:  # an exception must not leave the C side running on garbage
            feats = np.ctypeslib.as_array(x, (int(np.prod(in_shape)),)).reshape(in_shape).copy()
            s = np.ctypeslib.as_array(s_in, (int(bounds[-1]),)).copy()
            out = runner.run(feats, [s[a:b].reshape(sh) for a, b, sh in zip(bounds[:-1], bounds[1:], shapes)])
            np.ctypeslib.as_array(z, (z_len,))[:] = out[0].ravel()
            np.ctypeslib.as_array(s_out, (int(bounds[-1]),))[:] = np.concatenate([o.ravel() for o in out[1:]])
            features.append(feats)
            states.append(s)
            return 0
        except Exception as e:
            errors.append(e)
            return 1

    callback = INVOKE(invoke)
    st = lib.denoise_create(callback, None)
    assert st
    hop = runner.bundle.signal["hop"]
    y = np.zeros_like(audio)
    try:
        for t in range(len(audio) // hop):
            block = np.ascontiguousarray(audio[t * hop : (t + 1) * hop])
            out = np.zeros(hop, np.float32)
            assert lib.denoise_process_frame(st, out, block) == 0, errors
            y[t * hop : (t + 1) * hop] = out
    finally:
        lib.denoise_destroy(st)
    return y, features, states


@pytest.mark.parametrize("interpreter", ["litert", "tflm"])
def test_c_loop_through_ctypes_matches_the_engine_on_the_same_interpreter(lib, bundle, interpreter):
    runner = _litert_runner(bundle)
    if interpreter == "tflm":
        pytest.importorskip("tflite_micro", reason="tflite-micro has a cp311 x86-64 wheel only (pip install tflite-micro)")
        runner = Tflm(runner)
    audio = _golden(bundle, "audio_in")
    y, features, states = _stream_c(lib, runner, audio)
    follow = Follow(runner, features)
    want = Engine(runner.bundle, follow).process(audio)
    diff = np.abs(np.stack(features).astype(int) - np.stack(follow.ours))
    assert diff.max() <= 1 and (diff > 0).mean() <= FLIPS, f"{(diff > 0).sum()} features differ, by up to {diff.max()} LSB"
    assert np.array_equal(np.stack(states), np.stack(follow.states))  # start values and feedback, frame by frame
    peak = np.abs(want).max()
    assert np.abs(y - want).max() <= AUDIO_TOLERANCE * peak
    if interpreter == "litert" and not diff.any():  # then nothing differs from the export's own run
        assert np.abs(y - _golden(bundle, "audio_out")).max() <= AUDIO_TOLERANCE * peak


# The gated loop (denoise_gated.c) on a gated bundle's int8io parts.

GATED = ROOT / "runtime" / "bundles" / "gated"


def _integer_runner(root: Path):
    pytest.importorskip("ai_edge_litert", reason="the golden audio is made with LiteRT (pip install ai-edge-litert)")
    from export.gated import integer_runner

    return integer_runner(Bundle(root))


@pytest.fixture(scope="module", params=["shipped", "small"])
def gated(request, tmp_path_factory):
    """The shipped gated bundle, copied and given firmware/ and the golden audio as the export
    writes them; and a fresh export of a small gated model (one branch), as the export left it."""
    if request.param == "small":
        root = request.getfixturevalue("gated_bundle")
        listed = {n for n, f in Bundle(root).files.items() if f["kind"] == "c_reference"}
        assert listed == {f"firmware/{n}" for n in (*c_reference.GATED_FILES, c_reference.CONFIG)}
        return root
    root = tmp_path_factory.mktemp("gcref") / "gated"
    write = lambda r, add: c_reference.write_gated(r, _integer_runner(r), load(SAMPLE, 16000), add)  # noqa: E731
    return _with_firmware(GATED, root, write, c_reference.GATED_FILES)


def _gated_replay(cc, root: Path, tmp_path: Path, firmware: Path | None = None) -> tuple[subprocess.CompletedProcess, Path]:
    firmware = firmware or root / "firmware"
    exe = _compile(cc, tmp_path / "denoise_gated_replay", [firmware / n for n in c_reference.GATED_REPLAY])
    dump = tmp_path / "dump"
    dump.mkdir(exist_ok=True)
    return subprocess.run([str(exe), str(root / "golden"), str(dump)], capture_output=True, text=True), dump


def _calls(root: Path, part: str) -> dict[str, np.ndarray]:
    with np.load(root / "golden" / f"{part}.int8io.npz") as z:
        return dict(z)


def _split(flat: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """Per call, the concatenated tensors split apart. Shape: flat [calls * sum(sizes)] -> each [calls, size]"""
    rows = flat.reshape(-1, sum(sizes))
    return np.split(rows, np.cumsum(sizes)[:-1], axis=1)


def _spectral_diff(ours: np.ndarray, theirs: np.ndarray) -> None:
    diff = np.abs(ours.astype(int) - theirs.astype(int))
    assert diff.max(initial=0) <= 1 and (diff > 0).mean() <= FLIPS, f"{(diff > 0).sum()} values differ, by up to {diff.max()} LSB"


def test_gated_replay_makes_the_golden_calls_with_the_golden_inputs_and_the_engine_audio(cc, gated, tmp_path):
    run, dump = _gated_replay(cc, gated, tmp_path)
    assert run.returncode == 0 and run.stdout.endswith("passed\n"), run.stdout + run.stderr
    b = Bundle(gated)
    gates = _golden(gated, "gates_int8io")
    assert np.array_equal(np.fromfile(dump / "gates.u8", np.uint8).reshape(gates.shape), gates)
    for name, f in b.parts("tflite", "int8io").items():
        calls, names = _calls(gated, name), [t["name"] for t in f.io["inputs"]]
        ours = _split(np.fromfile(dump / f"{name}.i8", np.int8), [int(np.prod(t["shape"])) for t in f.io["inputs"]])
        assert len(ours[0]) == len(calls["frames"]) == (gates[:, int(name[6:])].sum() if name.startswith("branch") else len(gates))
        for n, v in zip(names, ours):
            want = calls[n].reshape(len(v), -1)
            if n in ("features", "energies"):  # from the loop's own FFT
                _spectral_diff(v, want)
            else:  # states, skipped branches' zeroed and held states, every requantised input
                assert np.array_equal(v, want), f"{name}: {n}"
    audio, want = np.fromfile(dump / "audio_out.f32", np.float32), _golden(gated, "audio_out_replay")
    assert np.abs(audio - want).max() <= AUDIO_TOLERANCE * np.abs(want).max()


def _tampered_config(gated: Path, tmp_path: Path, pattern: str, change) -> Path:
    firmware = tmp_path / "firmware"
    shutil.copytree(gated / "firmware", firmware)
    config = firmware / c_reference.CONFIG
    text, n = re.subn(pattern, change, config.read_text(), count=1)
    assert n == 1
    config.write_text(text)
    return firmware


def test_gated_replay_fails_on_a_wrong_requantisation(cc, gated, tmp_path):
    """A source zero point off by one in one requantised input, as a hand-ported config might have."""
    firmware = _tampered_config(gated, tmp_path, r"(DENOISE_FILL_REQUANTISE, [^}]*, )(-?\d+)\}", lambda m: f"{m[1]}{int(m[2]) + 1}}}")
    run, _ = _gated_replay(cc, gated, tmp_path, firmware)
    assert run.returncode == 1 and run.stdout.endswith("FAILED\n") and re.search(r"requantised inputs: [1-9]\d* of", run.stdout), run.stdout


def test_gated_replay_fails_when_a_skipped_branch_holds_what_it_must_zero(cc, gated, tmp_path):
    """A branch that runs again after being skipped must see its zeroed states at their zero point:
    one of them marked held instead makes the replay fail (on the shipped bundle branch1, skipped on
    frames 2 to 6, runs again on frame 7)."""
    gates = _golden(gated, "gates_int8io")  # [T, K]
    resumed = [k for k in range(gates.shape[1]) if any(gates[t, k] and not gates[t - 1, k] and gates[: t - 1, k].any() for t in range(2, len(gates)))]
    assert resumed, "no branch runs, is skipped and runs again in the golden frames"
    k = resumed[0]
    state = Bundle(gated).gating["parts"][f"branch{k}"]["zeroed_when_skipped"][0]
    firmware = _tampered_config(gated, tmp_path, rf'(\{{"{state}", [^}}]*, )1\}}', lambda m: f"{m[1]}0}}")
    run, _ = _gated_replay(cc, gated, tmp_path, firmware)
    assert run.returncode == 1 and run.stdout.endswith("FAILED\n") and re.search(r"requantised inputs: [1-9]\d* of", run.stdout), run.stdout


def test_gated_replay_follows_the_logits(cc, gated, tmp_path):
    """A golden logit pushed over its zero point on a frame where the branch was closed: the loop
    opens the branch there, finds no golden call for it and says so."""
    root = tmp_path / "bundle"
    shutil.copytree(gated / "golden", root / "golden")
    gates = _golden(root, "gates_int8io")
    t = int(np.flatnonzero(gates[:, 0] == 0)[0])
    g = Bundle(gated).gating
    part = next(n for n in g["order"] if "logits" in g["parts"][n]["outputs"])  # runs on every frame: call t is frame t
    calls = _calls(root, part)
    zero = next(o for o in Bundle(gated).parts("tflite", "int8io")[part].io["outputs"] if o["name"] == "logits")["zero_point"]
    calls["logits"][t, 0, 0] = zero + 1
    np.savez(root / "golden" / f"{part}.int8io.npz", **calls)
    exe = _compile(cc, tmp_path / "r", [gated / "firmware" / n for n in c_reference.GATED_REPLAY])
    run = subprocess.run([str(exe), str(root / "golden")], capture_output=True, text=True)
    assert run.returncode == 1 and run.stdout.endswith("FAILED\n"), run.stdout
    assert f"branch0 was called on frame {t}, where its golden calls have none" in run.stdout


def test_gated_replay_says_what_is_wrong_with_the_golden_folder(cc, gated, tmp_path):
    exe = _compile(cc, tmp_path / "r", [gated / "firmware" / n for n in c_reference.GATED_REPLAY])
    run = subprocess.run([str(exe), str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.startswith("error: ") and "audio_in.npy" in run.stderr
    golden = tmp_path / "golden"
    shutil.copytree(gated / "golden", golden)
    calls = _calls(golden.parent, "trunk")
    del calls["gru_h"]
    np.savez(golden / "trunk.int8io.npz", **calls)
    run = subprocess.run([str(exe), str(golden)], capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.strip().splitlines() == [f"error: {golden}/trunk.int8io.npz: has no array 'gru_h' (golden calls of another bundle?)"]


def test_gated_export_refuses_golden_calls_the_protocol_does_not_make(gated, tmp_path):
    """Golden calls of a branch moved to other frames: write_gated stops with one line."""
    from export.build import ExportError

    root = tmp_path / "bundle"
    shutil.copytree(gated, root)
    calls = _calls(root, "branch0")
    calls["frames"] = calls["frames"] + 1
    np.savez(root / "golden" / "branch0.int8io.npz", **calls)
    with pytest.raises(ExportError, match=r"^branch0 is called on frame \d+ but its golden call 0 was made on frame \d+; the golden calls and the gating protocol disagree$"):
        c_reference.write_gated(root, _integer_runner(gated), load(SAMPLE, 16000), lambda *a, **k: None)


INVOKE_GATED = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.POINTER(ctypes.c_int8)), ctypes.POINTER(ctypes.POINTER(ctypes.c_int8)))


class TflmSession:
    """One int8io part on TensorFlow Lite Micro behind the session interface (inputs and outputs by
    index, in the order of the part's manifest entry, as verify_tflm checks)."""

    def __init__(self, path: Path, inputs: list[str], outputs: list[str]):
        from tflite_micro.python.tflite_micro import runtime

        self.interpreter = runtime.Interpreter.from_file(str(path), arena_size=1 << 20)
        self.inputs, self.outputs = inputs, outputs

    def run(self, values):
        for i, v in enumerate(values):
            self.interpreter.set_input(v, i)
        self.interpreter.invoke()
        return [self.interpreter.get_output(i) for i in range(len(self.outputs))]


class FollowPart:
    """A part session that runs on the C loop's values computed from the spectrum (``computed``:
    the inputs that are) of the same call, so both sides run the part on the same integers where
    two FFTs round a value differently; keeps what it computed itself, every input it ran on and,
    by ``clock``, the frame of each call."""

    def __init__(self, session, theirs: list[list[np.ndarray]], clock, computed: tuple[str, ...] = ("features", "energies")):
        self.session, self.inputs, self.outputs, self.theirs, self.clock = session, session.inputs, session.outputs, theirs, clock
        self.computed = computed
        self.ours, self.given, self.frames = [], [], []

    def run(self, values):
        values = list(values)
        for i, n in enumerate(self.inputs):
            if n in self.computed:
                self.ours.append(values[i].copy())
                values[i] = self.theirs[len(self.given)][i]
        self.given.append(values)
        self.frames.append(self.clock())
        return self.session.run(values)


@pytest.mark.parametrize("interpreter", ["litert", "tflm"])
def test_gated_c_loop_through_ctypes_matches_the_engine_on_the_same_interpreter(cc, gated, tmp_path, interpreter):
    """The loop as a shared library, one interpreter per part behind its invoke (as firmware wires
    TFLM), against the Python runtime chaining the same parts on the same interpreter: the same
    calls on the same frames with the same inputs, features and energies within 1 LSB, the audio
    within float rounding."""
    from runtime.backends import LiteRTSession

    _integer_runner(gated)  # skips without LiteRT
    if interpreter == "tflm":
        pytest.importorskip("tflite_micro", reason="tflite-micro has a cp311 x86-64 wheel only (pip install tflite-micro)")
    b = Bundle(gated)
    files, g = b.parts("tflite", "int8io"), b.gating
    order, session = g["order"], {"litert": LiteRTSession, "tflm": TflmSession}[interpreter]

    def sessions():
        return {n: session(f.path, g["parts"][n]["inputs"], g["parts"][n]["outputs"]) for n, f in files.items()}

    lib = ctypes.CDLL(str(_compile(cc, tmp_path / "libgated.so", [gated / "firmware" / n for n in c_reference.GATED_LOOP], shared=True)))
    lib.denoise_gated_create.restype = ctypes.c_void_p
    lib.denoise_gated_create.argtypes = [INVOKE_GATED, ctypes.c_void_p]
    lib.denoise_gated_process_frame.argtypes = [ctypes.c_void_p, F32, F32]
    lib.denoise_gated_ran.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.denoise_gated_destroy.argtypes = [ctypes.c_void_p]
    parts = sessions()
    shapes = {n: ([t["shape"] for t in f.io["inputs"]], [t["shape"] for t in f.io["outputs"]]) for n, f in files.items()}
    theirs, frames, errors, now = {n: [] for n in order}, {n: [] for n in order}, [], [0]

    def invoke(ctx, part, inputs, outputs):
        try:  # an exception must not leave the C side running on garbage
            name = order[part]
            ins, outs = shapes[name]
            values = [np.ctypeslib.as_array(inputs[i], (int(np.prod(s)),)).reshape(s).copy() for i, s in enumerate(ins)]
            res = parts[name].run(values)
            for i, s in enumerate(outs):
                np.ctypeslib.as_array(outputs[i], (int(np.prod(s)),))[:] = np.asarray(res[i]).ravel()
            theirs[name].append(values)
            frames[name].append(now[0])
            return 0
        except Exception as e:
            errors.append(e)
            return 1

    callback = INVOKE_GATED(invoke)
    st = lib.denoise_gated_create(callback, None)
    assert st
    audio, hop = _golden(gated, "audio_in"), b.signal["hop"]
    y, ran = np.zeros_like(audio), []
    try:
        for t in range(len(audio) // hop):
            now[0] = t
            out = np.zeros(hop, np.float32)
            assert lib.denoise_gated_process_frame(st, out, np.ascontiguousarray(audio[t * hop : (t + 1) * hop])) == 0, errors
            y[t * hop : (t + 1) * hop] = out
            ran.append([lib.denoise_gated_ran(st, k) for k in range(g["branches"])])
    finally:
        lib.denoise_gated_destroy(st)
    for k in range(g["branches"]):
        assert np.flatnonzero(np.array(ran)[:, k]).tolist() == frames[f"branch{k}"]

    follow = {n: FollowPart(s, theirs[n], lambda: runner.frames) for n, s in sessions().items()}
    runner = GatedRunner(g, b.states, b.manifest["transforms"]["features"]["power"], {n: IntegerSession(follow[n], files[n].io) for n in order})
    want = Engine(b, runner).process(audio)
    for n in order:
        assert follow[n].frames == frames[n], n
        assert all(np.array_equal(u, v) for a, c in zip(follow[n].given, theirs[n]) for u, v in zip(a, c)), n
        spectral = [i for i, name in enumerate(g["parts"][n]["inputs"]) if name in ("features", "energies")]
        if spectral:
            _spectral_diff(np.concatenate([o.ravel() for o in follow[n].ours]), np.concatenate([c[i].ravel() for c in theirs[n] for i in spectral]))
    assert np.abs(y - want).max() <= AUDIO_TOLERANCE * np.abs(want).max()
