"""Pretrained weights in timm / torchvision layouts (blockzoo.weights).

The fixtures (tests/fixtures/weights/*.json, written by scripts/make_weight_fixtures.py
where timm is installed) hold timm's tensor names and shapes and timm's outputs for
weights filled by ``synthetic_tensor``. Here the same weights are rebuilt from the
names and shapes alone, loaded through ``create_model(..., weights=PATH)``, and the
outputs must equal timm's.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import blockzoo
from blockzoo.checks import ConfigError, FileFormatError
from blockzoo.weights import (
    LAYOUTS,
    fixture_input,
    load_pretrained,
    read_state_dict,
    synthetic_state_dict,
    synthetic_tensor,
)

FIXTURES = Path(__file__).parent / "fixtures" / "weights"
SLOW = {"vit_base_patch16_224", "mixer_b16_224", "vit_small_patch16_224"}
NAMES = sorted(p.stem for p in FIXTURES.glob("*.json"))


def _fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def _write(tensors: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    else:
        torch.save(tensors, path)
    return path


def _params(name: str) -> list:
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in name]


def test_fixtures_cover_every_layout() -> None:
    # every registered name with a layout has a fixture proving it, and the reverse
    models = {_fixture(n)["model"] for n in NAMES}
    assert models == set(LAYOUTS), set(LAYOUTS) ^ models


@pytest.mark.parametrize("name", _params(NAMES))
def test_timm_weights_give_timm_outputs(name: str, tmp_path: Path) -> None:
    fx = _fixture(name)
    # .pth for the ResNets (torchvision's format), safetensors for the rest (timm's hub files)
    suffix = ".pth" if fx["model"].startswith(("resnet", "resnext")) else ".safetensors"
    path = _write(synthetic_state_dict(fx["keys"]), tmp_path / f"{name}{suffix}")
    model = blockzoo.create_model(fx["model"], weights=path, **fx["kwargs"]).eval()
    # the same parameter count as timm's model
    assert sum(p.numel() for p in model.parameters()) == fx["num_params"]
    with torch.no_grad():
        out = model(fixture_input(fx["input"])).double()
    want = torch.tensor(fx["logits"], dtype=torch.float64)
    k = want.shape[1]
    # fp32 forward on both sides: equal to 1e-5 (relative to the logits' size, at least 1)
    tol = 1e-5 * max(1.0, want.abs().max().item())
    assert (out[:, :k] - want).abs().max().item() <= tol
    lse = torch.tensor(fx["logsumexp"], dtype=torch.float64)
    assert (out.logsumexp(1) - lse).abs().max().item() <= tol


def test_fixture_outputs_are_not_degenerate() -> None:
    # a fixture whose logits were all alike could not tell a wrong mapping from a right one
    for name in NAMES:
        logits = torch.tensor(_fixture(name)["logits"])
        assert logits.std().item() > 0.05, name
        # the two samples differ (deep random ConvMixer brings them within 1e-3 of each other)
        assert (logits[0] - logits[1]).abs().max().item() > 1e-4, name


def test_synthetic_tensor_depends_on_name_and_shape_only() -> None:
    a = synthetic_tensor("layer1.0.conv1.weight", (8, 4, 3, 3))
    assert torch.equal(a, synthetic_tensor("layer1.0.conv1.weight", (8, 4, 3, 3)))
    assert not torch.equal(a, synthetic_tensor("layer1.0.conv2.weight", (8, 4, 3, 3)))
    var = synthetic_tensor("bn1.running_var", (64,))
    assert var.min().item() >= 1.0
    assert synthetic_tensor("bn1.num_batches_tracked", (), torch.int64).dtype == torch.int64


def _resnet18_tensors() -> dict[str, torch.Tensor]:
    return synthetic_state_dict(_fixture("resnet18")["keys"])


def test_other_num_classes_keeps_a_fresh_head_and_says_so(tmp_path: Path, caplog) -> None:
    path = _write(_resnet18_tensors(), tmp_path / "r18.pth")
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="blockzoo.weights"):
        model = blockzoo.create_model("resnet18", num_classes=10, weights=path)
    assert "head fc.weight, fc.bias was left fresh" in caplog.text
    assert model.fc.weight.shape == (10, 512)
    # the backbone is the file's, bit for bit
    assert torch.equal(model.layer3[1].conv2.weight, _resnet18_tensors()["layer3.1.conv2.weight"])
    assert torch.equal(model.layer2[0].shortcut.bn.running_var,
                       _resnet18_tensors()["layer2.0.downsample.1.running_var"])


def test_mismatch_lists_missing_unexpected_and_wrong_shapes(tmp_path: Path) -> None:
    tensors = _resnet18_tensors()
    del tensors["layer1.0.bn1.running_mean"]
    tensors["layer9.0.conv1.weight"] = torch.zeros(1)
    tensors["layer2.0.conv1.weight"] = torch.zeros(128, 64, 5, 5)
    path = _write(tensors, tmp_path / "bad.safetensors")
    with pytest.raises(FileFormatError) as e:
        blockzoo.create_model("resnet18", weights=path)
    msg = str(e.value)
    assert "missing from the file: layer1.0.bn1.running_mean" in msg
    assert "not in the model: layer9.0.conv1.weight" in msg
    assert ("layer2.0.conv1.weight -> layer2.0.conv1.weight: file (128, 64, 5, 5) vs model (128, 64, 3, 3)"
            in msg)


def test_a_resnet50_file_does_not_load_into_resnet18(tmp_path: Path) -> None:
    path = _write(synthetic_state_dict(_fixture("resnet50")["keys"]), tmp_path / "r50.pth")
    with pytest.raises(FileFormatError, match="does not fit resnet18 as a timm / torchvision ResNet"):
        blockzoo.create_model("resnet18", weights=path)


def test_nested_and_ddp_checkpoints_unwrap(tmp_path: Path) -> None:
    tensors = {f"module.{k}": v for k, v in _resnet18_tensors().items()}
    path = tmp_path / "train.pth"
    torch.save({"state_dict": tensors, "epoch": 3}, path)
    assert set(read_state_dict(path)) == set(_resnet18_tensors())


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "fn": print}, path)
    with pytest.raises(FileFormatError, match="weights_only=True"):
        read_state_dict(path)


def test_unreadable_and_unknown_files(tmp_path: Path) -> None:
    bad = tmp_path / "w.safetensors"
    bad.write_text("not a safetensors file")
    with pytest.raises(FileFormatError, match="not a readable safetensors"):
        read_state_dict(bad)
    other = tmp_path / "w.npz"
    other.write_bytes(b"x")
    with pytest.raises(FileFormatError, match=r"expected a \.safetensors, \.pth"):
        read_state_dict(other)
    with pytest.raises(FileNotFoundError):
        read_state_dict(tmp_path / "none.pth")


def test_a_model_without_a_layout_is_named(tmp_path: Path) -> None:
    path = _write(_resnet18_tensors(), tmp_path / "r18.pth")
    with pytest.raises(ConfigError, match=r"no timm/torchvision layout is known for 'cifar_cnn'.*resnet18"):
        blockzoo.create_model("cifar_cnn", weights=path)


def test_load_pretrained_reports_what_it_loaded() -> None:
    tensors = _resnet18_tensors()
    model = blockzoo.create_model("resnet18", num_classes=5)
    report = load_pretrained(model, "resnet18", tensors)
    assert report.fresh == ["fc.weight", "fc.bias"]
    assert len(report.loaded) == len(tensors) - 2
    assert "layer1.0.shortcut.conv.weight" not in report.loaded  # resnet18's first stage has none
    assert "layer2.0.shortcut.conv.weight" in report.loaded
