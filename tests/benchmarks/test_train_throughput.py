import json

from benchmarks import train_throughput


def test_throughput_of_a_short_run_is_measured_and_tabled(tmp_path):
    argv = ["--presets", "student-30k", "--steps", "1", "--batch", "2", "--seconds", "0.5", "--processes", "1", "--no-cuda", "--out", str(tmp_path)]
    assert train_throughput.main(argv) == 0
    result = json.loads((tmp_path / "train_throughput.json").read_text())
    [row] = result["rows"]
    assert row["preset"] == "student-30k" and row["steps_per_s"] > 0
    assert abs(row["audio_s_per_s"] - row["steps_per_s"] * 2 * 0.5) < 0.02 * row["audio_s_per_s"] + 0.01
    assert "| student-30k | cpu | 1 | fp32 | 2 |" in (tmp_path / "train_throughput.md").read_text()


def test_ratios_compare_rows_measured_side_by_side():
    rows = [
        {"preset": "a", "device": "cpu", "processes": 1, "precision": "fp32", "repeat": 0, "audio_s_per_s": 10.0},
        {"preset": "a", "device": "cpu", "processes": 2, "precision": "fp32", "repeat": 0, "audio_s_per_s": 15.0},
        {"preset": "a", "device": "cpu", "processes": 1, "precision": "fp32", "repeat": 1, "audio_s_per_s": 20.0},
        {"preset": "a", "device": "cpu", "processes": 2, "precision": "fp32", "repeat": 1, "audio_s_per_s": 30.0},
        {"preset": "a", "device": "cuda", "processes": 1, "precision": "fp32", "repeat": 0, "audio_s_per_s": 100.0},
        {"preset": "a", "device": "cuda", "processes": 1, "precision": "bf16", "repeat": 0, "audio_s_per_s": 180.0},
        {"preset": "b", "device": "cpu", "processes": 2, "precision": "fp32", "repeat": 0, "error": "error: out of memory"},
    ]
    train_throughput.ratios(rows)
    assert [r["ratio"] for r in rows] == [1.0, 1.5, 1.0, 1.5, 1.0, 1.8, None]
