"""Checkpoints: safetensors + JSON sidecar round trip, and .pt files that must never run code."""

import json
import pickle

import pytest
import torch

from surrogate_kd.checkpoint import load_model, save_model
from surrogate_kd.errors import UserError
from surrogate_kd.models import build_model


def test_round_trip_keeps_weights_spec_and_provenance(tmp_path, tiny_spec):
    model = build_model("convnet_tiny", tiny_spec)
    path = save_model(model, tmp_path / "m", extra={"config": {"lr": 0.1}})
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["arch"] == "convnet_tiny" and meta["config"] == {"lr": 0.1} and "version" in meta
    loaded = load_model(path)
    assert loaded.spec == tiny_spec
    x = torch.rand(2, 1, 16, 16)
    model.eval(), loaded.eval()
    assert torch.equal(model(x), loaded(x))


def test_plain_state_dict_loads_with_given_arch_and_spec(tmp_path, tiny_spec):
    model = build_model("convnet_tiny", tiny_spec)
    torch.save(model.net.state_dict(), tmp_path / "w.pt")
    with pytest.raises(UserError, match="give --arch"):
        load_model(tmp_path / "w.pt")
    loaded = load_model(tmp_path / "w.pt", arch="convnet_tiny", spec=tiny_spec)
    assert torch.equal(loaded.net.fc.weight, model.net.fc.weight)


class RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_that_runs_code_is_refused(tmp_path, tiny_spec, capsys):
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"weight": RunsCode()}, f)
    with pytest.raises(UserError, match="cannot read model"):
        load_model(tmp_path / "evil.pt", arch="convnet_tiny", spec=tiny_spec)
    assert "this must never run" not in capsys.readouterr().out


def test_missing_corrupt_and_mismatched_files(tmp_path, tiny_spec):
    with pytest.raises(UserError, match="not found"):
        load_model(tmp_path / "nope.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="give --arch|cannot read"):
        load_model(tmp_path / "bad.safetensors")
    path = save_model(build_model("convnet_tiny", tiny_spec), tmp_path / "m")
    with pytest.raises(UserError, match="do not fit"):
        load_model(path, arch="convnet_small")
