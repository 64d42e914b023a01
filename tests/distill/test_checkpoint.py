import pytest
import torch

from distill import checkpoint
from distill.models import build


def test_round_trip_rebuilds_the_model(tmp_path):
    model = build("student-30k")
    checkpoint.save(tmp_path / "m.pt", model, step=3)
    payload = torch.load(tmp_path / "m.pt", weights_only=True)  # plain types only: safe to load
    assert payload["model"]["name"] == "crn" and payload["step"] == 3
    assert {"torch", "numpy", "python", "tiny_denoise"} <= set(payload["versions"])
    again = checkpoint.load_model(tmp_path / "m.pt")
    assert again.config == model.config
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert not list(tmp_path.glob(".*.part"))


def test_bad_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="no such checkpoint"):
        checkpoint.load_model(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    with pytest.raises(checkpoint.CheckpointError, match="truncated or corrupt"):
        checkpoint.load_model(tmp_path / "junk.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(checkpoint.CheckpointError, match="not a tiny-denoise-checkpoint"):
        checkpoint.load_model(tmp_path / "other.pt")
    model = build("student-30k")
    checkpoint.save(tmp_path / "m.pt", model)
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="truncated or corrupt"):
        checkpoint.load_model(tmp_path / "cut.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    payload["model"]["config"]["channels"] = [4, 4]
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(checkpoint.CheckpointError, match="do not fit"):
        checkpoint.load_model(tmp_path / "mismatch.pt")
    for key, value, message in [("model", "crn", "no model description"), ("format_version", "1", "no format version")]:
        damaged = torch.load(tmp_path / "m.pt", weights_only=True)
        damaged[key] = value
        torch.save(damaged, tmp_path / "damaged.pt")
        with pytest.raises(checkpoint.CheckpointError, match=message):
            checkpoint.load_model(tmp_path / "damaged.pt")
    with pytest.raises(checkpoint.CheckpointError, match="is a folder"):
        checkpoint.strip(tmp_path / "m.pt", tmp_path)
    assert not list(tmp_path.glob(".*.part"))


def test_strip_keeps_the_model_and_drops_training_state(tmp_path):
    model = build("student-30k")
    opt = torch.optim.Adam(model.parameters())
    checkpoint.save(tmp_path / "run.pt", model, optimizer=opt.state_dict(), step=7)
    checkpoint.strip(tmp_path / "run.pt", tmp_path / "ship.pt")
    payload = checkpoint.read(tmp_path / "ship.pt")
    assert "optimizer" not in payload and payload["step"] == 7
    again = checkpoint.load_model(tmp_path / "ship.pt")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_flip_polarity_negates_the_output_exactly(tmp_path):
    model = build("student-30k").eval()
    checkpoint.save(tmp_path / "m.pt", model, step=5)
    assert checkpoint.main(["flip-polarity", str(tmp_path / "m.pt"), str(tmp_path / "m.pt")]) == 2  # never in place
    assert checkpoint.main(["flip-polarity", str(tmp_path / "m.pt"), str(tmp_path / "f.pt")]) == 0
    flipped = checkpoint.load_model(tmp_path / "f.pt")
    spec = torch.randn(1, 20, 161, 2)
    with torch.no_grad():
        torch.testing.assert_close(flipped(spec), -model(spec))
    payload = checkpoint.read(tmp_path / "f.pt")
    assert payload["step"] == 5 and len(payload["repairs"]) == 1
    checkpoint.strip(tmp_path / "f.pt", tmp_path / "ship.pt")
    assert checkpoint.read(tmp_path / "ship.pt")["repairs"] == payload["repairs"]
