"""Smoke runs of the benchmark scripts on the small fixtures: they finish and write their tables."""
import json

import numpy as np
import soundfile as sf

from benchmarks import kd_ablation, latency
from distill.data import synth_noise, synth_speech


def test_latency_measures_every_backend_of_the_bundle(small_bundle, tmp_path):
    assert latency.main(["--model", str(small_bundle), "--seconds", "0.5", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "latency.json").read_text())
    names = {r["backend"] for r in result["rows"]}
    assert {"onnxruntime/fp32", "onnxruntime/int8", "litert/int8io"} <= names
    for r in result["rows"]:
        assert r["frames"] == 50 and 0 < r["bare_p50_us"] and r["p50_us"] <= r["p99_us"] <= r["max_us"]
    assert (tmp_path / "latency.md").is_file() and (tmp_path / "latency.png").is_file()


def test_kd_ablation_trains_scores_and_tabulates(small_checkpoint, small_devset, tmp_path):
    rng = np.random.default_rng(1)
    for kind, make in (("clean", synth_speech), ("noise", synth_noise)):
        (tmp_path / "data" / kind).mkdir(parents=True)
        for i in range(2):
            sf.write(tmp_path / "data" / kind / f"{i}.wav", make(rng, 48000), 16000)
    args = ["--data", str(tmp_path / "data"), "--teacher", str(small_checkpoint), "--devset", str(small_devset), "--out", str(tmp_path / "out"),
            "--sizes", "student-30k", "--methods", "none,dispatch", "--seeds", "0", "--steps", "2", "--batch", "2"]  # fmt: skip
    assert kd_ablation.main(args) == 0
    table = json.loads((tmp_path / "out" / "results.json").read_text())["table"]
    assert set(table) == {"student-30k/none", "student-30k/dispatch"}
    assert "dispatch" in (tmp_path / "out" / "results.md").read_text()
    assert kd_ablation.main(args) == 0, "a second run reuses the finished runs and cached scores"
