"""Weights in safetensors: round trip, rebuild from metadata, refusals, atomic writes."""

import json

import pytest
import torch
from safetensors import safe_open
from torch import nn

import blockzoo
from blockzoo import io


def test_save_load_rebuilds_without_user_code(tmp_path) -> None:
    model = blockzoo.create("mlp", in_features=6, hidden_features=(7,), out_features=3, act_layer="gelu")
    path = blockzoo.save(model, tmp_path / "m.safetensors")
    meta = io.read_metadata(path)
    assert meta["blockzoo.name"] == "mlp"
    assert meta["blockzoo.config"]["act_layer"] == "gelu"
    again = blockzoo.load(path)
    assert type(again) is type(model)
    x = torch.randn(4, 6)
    assert torch.equal(again(x), model(x))


def test_file_holds_only_tensors_and_metadata(tmp_path) -> None:
    path = blockzoo.save(blockzoo.create("se", channels=16, reduction=4), tmp_path / "se.safetensors")
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
    assert keys == set(blockzoo.create("se", channels=16).state_dict())
    assert json.loads(meta["blockzoo.config"]) == {"channels": 16, "reduction": 4}  # what the user gave


def test_load_refuses_wrong_names_and_shapes(tmp_path) -> None:
    path = blockzoo.save(blockzoo.create("mlp", in_features=12, hidden_features=(16, 16), out_features=5),
                         tmp_path / "a.safetensors")
    want = r"shape mismatch: layers\.8\.bias: file \(5,\) vs model \(4,\), layers\.8\.weight: file \(5, 16\)"
    with pytest.raises(ValueError, match=want):
        narrow = blockzoo.create("mlp", in_features=12, hidden_features=(16, 16), out_features=4)
        blockzoo.load_weights(narrow, path)
    with pytest.raises(ValueError, match="missing from the file"):
        blockzoo.load_weights(blockzoo.create("mlp", in_features=12, hidden_features=(16, 16, 16)), path)
    with pytest.raises(ValueError, match="not in the model"):
        blockzoo.load_weights(blockzoo.create("mlp", in_features=12, hidden_features=(16,)), path)


def test_tied_weights_survive(tmp_path) -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)
            self.b.weight = self.a.weight

    model = Tied()
    with pytest.warns(UserWarning, match="weights only"):  # not a registered entry
        path = blockzoo.save(model, tmp_path / "t.safetensors")
    fresh = Tied()
    blockzoo.load_weights(fresh, path)
    assert torch.equal(fresh.b.weight, model.a.weight)
    assert "blockzoo.aliases" in io.read_metadata(path)
    with pytest.raises(ValueError, match="stores no registry name"):
        blockzoo.load(path)


def test_write_is_atomic(tmp_path, monkeypatch) -> None:
    path = tmp_path / "w.safetensors"
    model = blockzoo.create("mlp", in_features=12)
    blockzoo.save(model, path)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        with open(args[1], "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(io, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        blockzoo.save(blockzoo.create("mlp", in_features=12, out_features=2), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_config_must_be_plain_data(tmp_path) -> None:
    model = blockzoo.create("mlp", in_features=12, act_layer=nn.GELU)
    with pytest.raises(ValueError, match="not JSON data"):
        blockzoo.save(model, tmp_path / "x.safetensors")
    blockzoo.save(model, tmp_path / "x.safetensors", config={"act_layer": "gelu"})


def test_missing_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no weights file"):
        blockzoo.load(tmp_path / "nope.safetensors")


def test_placement_args_not_stored(tmp_path) -> None:
    model = blockzoo.create("mlp", in_features=12, dtype=torch.float64)
    meta = io.read_metadata(blockzoo.save(model, tmp_path / "d.safetensors"))
    assert "dtype" not in meta["blockzoo.config"]


def test_precision_is_kept(tmp_path) -> None:
    model = blockzoo.create("mlp", in_features=12, dtype=torch.float64)
    again = blockzoo.load(blockzoo.save(model, tmp_path / "d.safetensors"))
    assert next(again.parameters()).dtype == torch.float64
