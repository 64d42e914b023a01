import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from distill import augment as aug
from distill import data, devset, train
from distill.data import AudioFolder, MixConfig, MixtureSampler, read_index, room_bank, synth_noise, synth_speech, write_index
from runtime.audio import AudioError


@pytest.fixture
def corpus(tmp_path):
    """A folder with nested dirs, odd rates, stereo and FLAC, a short file and two unreadable ones."""
    rng = np.random.default_rng(1)
    root = tmp_path / "corpus"
    (root / "spk1").mkdir(parents=True)
    sf.write(root / "spk1" / "u1.wav", synth_speech(rng, 48000), 16000)
    sf.write(root / "u2.flac", synth_speech(rng, 3 * 44100, 44100), 44100)
    sf.write(root / "u3.wav", np.stack([synth_speech(rng, 16000, 8000)] * 2, axis=1), 8000)
    sf.write(root / "n1.wav", synth_noise(rng, 40000), 16000)
    sf.write(root / "short.wav", np.zeros(800, np.float32), 16000)
    (root / "empty.wav").write_bytes(b"")
    (root / "text.wav").write_text("not audio at all")
    return root


def _entries(folder: AudioFolder):
    return [(e.name, e.frames, e.sample_rate, e.path.resolve()) for e in folder.entries]


def test_index_round_trips_and_lists_the_unreadable_files(corpus, capsys):
    assert data.main(["index", str(corpus), "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert "indexed 5 files" in out and "skipped 2 unreadable files" in out
    assert sorted(line.split(":")[0].split("/")[-1] for line in err.strip().splitlines()) == ["empty.wav", "text.wav"]
    lines = (corpus / "index.jsonl").read_text().splitlines()
    header, records = json.loads(lines[0]), [json.loads(x) for x in lines[1:]]
    assert header["root"] == "." and header["files"] == 5 and header["skipped"] == 2
    by_path = {r["path"]: r for r in records}
    assert by_path["u2.flac"] == {"path": "u2.flac", "frames": 3 * 44100, "rate": 44100, "channels": 1, "seconds": 3.0}
    assert by_path["u3.wav"]["channels"] == 2 and by_path["spk1/u1.wav"]["rate"] == 16000
    root, files = read_index(corpus / "index.jsonl")
    assert root == corpus and [name for _, name, _, _ in files] == sorted(by_path)
    exclude = {"n1.wav"}
    assert _entries(AudioFolder(corpus / "index.jsonl", 1.0, exclude)) == _entries(AudioFolder(corpus, 1.0, exclude))


def test_an_index_travels_with_its_corpus_and_may_live_outside_it(corpus, tmp_path):
    write_index(corpus, corpus / "index.jsonl")
    moved = tmp_path / "elsewhere" / "corpus"
    shutil.copytree(corpus, moved)
    shutil.rmtree(corpus)
    folder = AudioFolder(moved / "index.jsonl", 1.0)
    assert all(e.path.is_file() and moved in e.path.parents for e in folder.entries)

    write_index(moved, tmp_path / "outside.jsonl")
    beside = AudioFolder(tmp_path / "outside.jsonl", 1.0)
    assert [(e.name, e.frames) for e in beside.entries] == [(e.name, e.frames) for e in folder.entries]  # names stay relative to the corpus


def test_mixtures_from_an_index_equal_those_from_the_folder(corpus):
    write_index(corpus, corpus / "index.jsonl")
    cfg = MixConfig(seconds=0.5)
    samplers = [MixtureSampler(AudioFolder(src, 1.0), AudioFolder(src, 1.0), cfg, seed=3, augment=aug.AugmentConfig()) for src in (corpus, corpus / "index.jsonl")]
    a, b = (s.batch(5, 4) for s in samplers)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("content, message", [
    ("", "not an audio index"),
    ('{"format": "something else"}\n', "not an audio index"),
    ('{"format": "tiny-denoise-audio-index", "version": 99, "root": "."}\n', "index version 99"),
    ('{"format": "tiny-denoise-audio-index", "version": 1, "root": "."}\n{"path": "a.wav", "frames": -1, "rate": 16000}\n', "line 2"),
])  # fmt: skip
def test_a_bad_index_is_a_clear_error(tmp_path, content, message):
    (tmp_path / "index.jsonl").write_text(content)
    with pytest.raises(AudioError, match=message) as e:
        AudioFolder(tmp_path / "index.jsonl", 1.0)
    assert "python -m distill.data index" in str(e.value)
    with pytest.raises(AudioError, match="no such index file"):
        AudioFolder(tmp_path / "missing.jsonl", 1.0)


def test_index_command_refuses_what_it_cannot_do(tmp_path, capsys):
    assert data.main(["index", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("error:") and not (tmp_path / "missing").exists()
    (tmp_path / "x.wav").write_text("nope")
    assert data.main(["index", str(tmp_path), "--no-progress"]) == 2
    assert "no readable audio" in capsys.readouterr().err and not (tmp_path / "index.jsonl").exists()
    assert data.main(["index", str(tmp_path), "--out", str(tmp_path / "index.txt")]) == 2
    assert ".jsonl" in capsys.readouterr().err


def test_training_takes_indexes_for_clean_noise_and_rooms(corpus, tmp_path, capsys):
    rir = tmp_path / "rir"
    rir.mkdir()
    rng = np.random.default_rng(0)
    for name in ("hall.wav", "held_out.wav"):
        sf.write(rir / name, (rng.standard_normal(4000) * np.exp(-np.arange(4000) / 400)).astype(np.float32), 16000)
    write_index(rir, rir / "index.jsonl")
    from_index = room_bank(str(rir / "index.jsonl"), aug.RoomConfig(rooms=0), 16000, None, {"held_out.wav"})
    from_folder = room_bank(rir, aug.RoomConfig(rooms=0), 16000, None, {"held_out.wav"})
    assert from_index.names == from_folder.names == ["hall.wav"]
    assert np.array_equal(from_index.measured[0], from_folder.measured[0])

    write_index(corpus, corpus / "index.jsonl")
    index = str(corpus / "index.jsonl")
    argv = ["--clean", index, "--noise", index, "--rir", str(rir / "index.jsonl"), "--rooms", "0", "--model", "student-30k", "--steps", "1",
            "--batch", "2", "--seconds", "0.5", "--threads", "1", "--no-progress", "--out", str(tmp_path / "run")]  # fmt: skip
    assert train.main(argv) == 0
    assert "rooms: 0 simulated, 2 measured" in capsys.readouterr().out


def test_devset_renders_the_same_from_indexes(corpus, tmp_path):
    write_index(corpus, corpus / "index.jsonl")
    clean, noise = ["spk1/u1.wav", "u2.flac"], ["n1.wav"]
    a = devset.render(corpus, corpus, tmp_path / "a", clean, noise, 2.0, 7)
    b = devset.render(corpus / "index.jsonl", corpus / "index.jsonl", tmp_path / "b", clean, noise, 2.0, 7)
    assert a == b
    for row in a:
        for sub in ("noisy", "clean"):
            assert (tmp_path / "a" / sub / row["file"]).read_bytes() == (tmp_path / "b" / sub / row["file"]).read_bytes()
    assert devset.split(corpus / "index.jsonl", corpus / "index.jsonl") == devset.split(corpus, corpus)


def test_paired_folders_take_indexes(tmp_path):
    from distill.data import PairedSampler

    rng = np.random.default_rng(2)
    for sub in ("noisy", "clean"):
        (tmp_path / sub / "p1").mkdir(parents=True)
    for i in range(3):
        c = synth_speech(rng, 24000)
        sf.write(tmp_path / "clean" / "p1" / f"{i:03d}.wav", c, 16000)
        sf.write(tmp_path / "noisy" / "p1" / f"{i:03d}.flac", c + 0.02 * synth_noise(rng, 24000), 16000)
    for sub in ("noisy", "clean"):
        write_index(tmp_path / sub, tmp_path / f"{sub}.jsonl")  # beside the folders, not in them
    cfg = MixConfig(seconds=1.0)
    a = PairedSampler(tmp_path / "noisy", tmp_path / "clean", cfg, seed=0)
    b = PairedSampler(tmp_path / "noisy.jsonl", tmp_path / "clean.jsonl", cfg, seed=0)
    assert len(b.pairs) == 3
    assert all(np.array_equal(x, y) for x, y in zip(a.batch(4, 3), b.batch(4, 3)))
