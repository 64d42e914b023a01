"""The manifest checks itself: ``manifest_sha256`` over its canonical JSON catches edits, truncated
copies and manifests of another bundle; re-indenting it is not an edit."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from runtime import stream
from runtime.bundle import Bundle, BundleError, manifest_digest, seal

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def copy(small_bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(small_bundle, dst)
    return dst


def _read(b: Path) -> dict:
    return json.loads((b / "manifest.json").read_text())


def _write(b: Path, m: dict, **kw) -> None:
    (b / "manifest.json").write_text(json.dumps(m, **kw))


def test_exported_manifest_is_sealed_and_reindenting_keeps_it(copy):
    m = _read(copy)
    assert m["manifest_sha256"] == manifest_digest(m) and seal(m) == m
    _write(copy, m, indent=4, sort_keys=True)
    assert Bundle(copy).manifest == m


def test_an_edited_value_is_refused_with_one_clear_line(copy, tmp_path, capsys):
    """The case that ran silently before: a different compression power changes the output."""
    m = _read(copy)
    m["transforms"]["features"]["power"] = round(m["transforms"]["features"]["power"] - 0.1, 3)
    _write(copy, m, indent=1)
    with pytest.raises(BundleError, match="changed since export .* re-export the bundle"):
        Bundle(copy)
    sf.write(tmp_path / "in.wav", np.zeros(1600, np.float32), 16000)
    assert stream.main(["--model", str(copy), "--input", str(tmp_path / "in.wav"), "--output", str(tmp_path / "out.wav")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "manifest_sha256 does not match" in err[0]
    assert not (tmp_path / "out.wav").exists()


@pytest.mark.parametrize(
    "case, message",
    [
        ("no-digest", "no manifest_sha256"),
        ("wrong-digest", "changed since export"),
        ("schema-1", "predates manifest checksums; re-export"),
        ("truncated", "not valid JSON"),
        ("other-bundle", "does not match its sha256"),
    ],
)
def test_damaged_or_foreign_manifests_are_refused(case, message, copy):
    m = _read(copy)
    if case == "no-digest":
        del m["manifest_sha256"]
    elif case == "wrong-digest":
        m["manifest_sha256"] = "0" * 64
    elif case == "schema-1":  # what every export wrote before manifests were sealed
        del m["manifest_sha256"]
        m["schema_version"] = 1
    elif case == "other-bundle":  # sealed and intact, but it describes the shipped default's files
        shutil.copyfile(ROOT / "runtime" / "bundles" / "default" / "manifest.json", copy / "manifest.json")
    if case == "truncated":
        text = (copy / "manifest.json").read_text()
        (copy / "manifest.json").write_text(text[: len(text) // 2])
    elif case != "other-bundle":
        _write(copy, m, indent=1)
    with pytest.raises(BundleError, match=message):
        Bundle(copy)
