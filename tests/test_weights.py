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
from blockzoo.registry import ENTRY_ATTR
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


# --------------------------------------------------------------------------- re-param models

REPNETS = ("repvgg_a0", "repvgg_b0", "mobileone_s0")


def _fixture_file(name: str, path: Path) -> Path:
    """Fixture ``name``'s synthetic tensors, written to ``path`` (.pth or .safetensors)."""
    return _write(synthetic_state_dict(_fixture(name)["keys"]), path)


def _fixture_tol(fx: dict) -> float:
    return 1e-5 * max(1.0, max(abs(v) for row in fx["logits"] for v in row))


def _first_logits(model: torch.nn.Module, fx: dict, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    with torch.no_grad():
        out = model.eval().to(dtype)(fixture_input(fx["input"]).to(dtype)).double()
    return out[:, :len(fx["logits"][0])]


@pytest.mark.parametrize("name", REPNETS)
def test_repnet_files_load_in_their_own_form(name: str, tmp_path: Path) -> None:
    # the training-form file (timm's published layout) builds branches; timm's fused file the deploy form
    train = blockzoo.create_model(name, weights=_fixture_file(name, tmp_path / "train.safetensors"))
    assert not train.deployed and len(train.stem.branches) >= 2
    fused = blockzoo.create_model(name, weights=_fixture_file(f"{name}_deploy", tmp_path / "fused.pth"))
    assert fused.deployed and all(not hasattr(m, "branches") for m in fused.modules())
    # the registry config records the form, so blockzoo.save / load rebuild the same one
    assert getattr(fused, ENTRY_ATTR)[1]["deploy"] is True
    assert getattr(train, ENTRY_ATTR)[1]["deploy"] is False


@pytest.mark.parametrize("name", REPNETS)
def test_reparameterize_after_loading_keeps_timms_outputs(name: str, tmp_path: Path) -> None:
    fx = _fixture(name)
    model = blockzoo.create_model(name, weights=_fixture_file(name, tmp_path / "w.pth"))
    want = torch.tensor(fx["logits"], dtype=torch.float64)
    before = _first_logits(model, fx)
    after = _first_logits(blockzoo.reparameterize(model), fx)
    assert model.deployed
    # fp32 on both sides: the fused net is within 1e-5 (relative to the logits' size) of the branches
    # and of timm's training-form outputs
    tol = _fixture_tol(fx)
    assert (after - before).abs().max().item() <= tol
    assert (after - want).abs().max().item() <= tol
    # in float64 the fusion is exact up to rounding: the fp32 agreement is not luck
    model64 = blockzoo.create_model(name, weights=tmp_path / "w.pth")
    exact = _first_logits(model64, fx, torch.float64)
    assert (_first_logits(model64.reparameterize(), fx, torch.float64) - exact).abs().max().item() <= 1e-10


@pytest.mark.parametrize("name", REPNETS)
def test_deploy_true_fuses_a_training_form_file(name: str, tmp_path: Path) -> None:
    fx = _fixture(name)
    model = blockzoo.create_model(name, weights=_fixture_file(name, tmp_path / "w.safetensors"), deploy=True)
    assert model.deployed and getattr(model, ENTRY_ATTR)[1]["deploy"] is True
    want = torch.tensor(fx["logits"], dtype=torch.float64)
    assert (_first_logits(model, fx) - want).abs().max().item() <= _fixture_tol(fx)
    # and it saves and loads as the deploy form it is
    back = blockzoo.load(blockzoo.save(model, tmp_path / "deployed.safetensors"))
    assert back.deployed
    x = fixture_input(fx["input"])
    with torch.no_grad():
        assert torch.equal(back.eval()(x), model(x))


def test_a_fused_file_refuses_deploy_false(tmp_path: Path) -> None:
    path = _fixture_file("repvgg_a0_deploy", tmp_path / "fused.pth")
    with pytest.raises(ConfigError, match=r"deploy=False: .*fused \(deploy\) form.*load it with deploy=True"):
        blockzoo.create_model("repvgg_a0", weights=path, deploy=False)


def test_repnet_files_do_not_cross_sizes_or_families(tmp_path: Path) -> None:
    # each registered RepNet is one paper size: B0's widths are not read into repvgg_a0
    wrong = (r"b0\.pth does not fit repvgg_a0 as a timm RepVGG.*shape mismatch: .*"
             r"stages\.0\.0\.conv_1x1\.conv\.weight -> stages\.0\.0\.branches\.conv_1x1\.conv\.weight: "
             r"file \(64, 64, 1, 1\) vs model \(48, 48, 1, 1\)")
    with pytest.raises(FileFormatError, match=wrong):
        blockzoo.create_model("repvgg_a0", weights=_fixture_file("repvgg_b0", tmp_path / "b0.pth"))
    with pytest.raises(FileFormatError, match=r"not a RepVGG checkpoint: .*'stem\.branches\.conv_kxk\.conv"):
        blockzoo.create_model("repvgg_a0", weights=_fixture_file("mobileone_s0", tmp_path / "s0.pth"))


def test_a_repnet_head_for_other_classes_stays_fresh(tmp_path: Path, caplog) -> None:
    path = _fixture_file("mobileone_s0", tmp_path / "w.pth")
    with caplog.at_level(logging.WARNING, logger="blockzoo.weights"):
        model = blockzoo.create_model("mobileone_s0", num_classes=7, weights=path, deploy=True)
    assert "head head.fc.weight, head.fc.bias was left fresh" in caplog.text
    assert model.deployed and model.head.fc.weight.shape == (7, 1024)


def test_load_pretrained_reports_what_it_loaded() -> None:
    tensors = _resnet18_tensors()
    model = blockzoo.create_model("resnet18", num_classes=5)
    report = load_pretrained(model, "resnet18", tensors)
    assert report.fresh == ["fc.weight", "fc.bias"]
    assert len(report.loaded) == len(tensors) - 2
    assert "layer1.0.shortcut.conv.weight" not in report.loaded  # resnet18's first stage has none
    assert "layer2.0.shortcut.conv.weight" in report.loaded


# --------------------------------------------------------------------------- fine-tuning


def _folder(root: Path, per_class: int = 6) -> Path:
    """Two classes of 24x24 RGB images: bright discs and bright bars on a dark ground."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:24, :24] / 24
    for kind in ("disc", "bar"):
        (root / kind).mkdir(parents=True)
        for i in range(per_class):
            cy, cx = rng.uniform(0.3, 0.7, 2)
            mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < 0.04) if kind == "disc" else (abs(yy - cy) < 0.1)
            img = (rng.uniform(0, 60, (24, 24, 3)) + mask[..., None] * 200).clip(0, 255).astype(np.uint8)
            Image.fromarray(img, "RGB").save(root / kind / f"{i}.png")
    return root


def _finetune_config(tmp_path: Path, **extra) -> dict:
    # full batches: layer4 sees 1x1 maps of these 24x24 images, where BN needs two samples
    weights = _write(_resnet18_tensors(), tmp_path / "resnet18.pth")
    return dict(model="resnet18", data=f"folder:{_folder(tmp_path / 'imgs')}?augment=none", epochs=1,
                batch_size=None, lr=1e-3, weights=str(weights), runs_dir=str(tmp_path / "runs"), quiet=True,
                plots=False, **extra)


def test_finetune_freezes_attaches_and_gives_new_parameters_head_lr(tmp_path: Path, monkeypatch) -> None:
    import blockzoo.weights
    from blockzoo.train import TrainConfig, finetune, prepare
    from blockzoo.train.finetune import param_groups

    reads = []

    def counted(path):
        reads.append(path)
        return read_state_dict(path)

    for module in (finetune, blockzoo.weights):  # the file is read by name in both
        monkeypatch.setattr(module, "read_state_dict", counted)
    cfg = TrainConfig.from_dict(_finetune_config(tmp_path, freeze="conv1.*,bn1.*,layer1.*", head_lr=0.1,
                                                 attention="cbam"))
    model, _, meta = prepare(cfg)
    assert reads == [cfg.weights]  # read once, for the sizes and for loading
    params = dict(model.named_parameters())
    # the file's weights, under attach's wrapper for the modules CBAM follows
    assert torch.equal(params["layer1.0.bn2.module.weight"], _resnet18_tensors()["layer1.0.bn2.weight"])
    assert not params["layer1.1.conv2.weight"].requires_grad and not params["conv1.weight"].requires_grad
    assert params["layer2.0.conv1.weight"].requires_grad
    # new: the 2-class head and the 8 CBAM blocks (also in the frozen stage: they were not loaded)
    new = set(meta["new_params"])
    assert {"fc.weight", "fc.bias"} <= new
    attn = [n for n in new if n.startswith("layer1.0.bn2.attn.")]
    assert attn and all(params[n].requires_grad for n in attn)
    assert not any(".module." in n or n.startswith(("conv1", "layer2.0.conv")) for n in new)
    groups = param_groups(model, cfg, meta)
    assert [g["peak_lr"] for g in groups] == [1e-3, 0.1]
    ids = {id(p) for p in groups[1]["params"]}
    assert ids == {id(params[n]) for n in new}
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in params.values())


def test_finetune_run_trains_only_what_is_free_and_replays(tmp_path: Path) -> None:
    from blockzoo.train import TrainConfig, evaluate_checkpoint, train

    opts = _finetune_config(tmp_path, freeze="conv1.*,layer1.*", head_lr=1e-2, attention="se")
    res = train(opts)
    # the run's config.json replays it (--config): the options, not the run's record
    replay = TrainConfig.from_file(res.run_dir / "config.json")
    assert {k: getattr(replay, k) for k in ("weights", "freeze", "head_lr", "attention")} == {
        k: opts[k] for k in ("weights", "freeze", "head_lr", "attention")}
    params = dict(res.model.named_parameters())
    start = _resnet18_tensors()
    assert torch.equal(params["layer1.0.conv1.weight"], start["layer1.0.conv1.weight"])  # frozen
    assert not torch.equal(params["layer4.1.conv2.weight"], start["layer4.1.conv2.weight"])  # trained
    # the checkpoint rebuilds the attached model without the weights file
    Path(tmp_path / "resnet18.pth").unlink()
    out = evaluate_checkpoint(res.run_dir / "best.pt", "test")
    assert 0.0 <= out["acc"] <= 1.0
    # and the deployable file records the attached blocks
    model = blockzoo.load(res.run_dir / "model.safetensors").eval()
    assert any(".attn." in n for n, _ in model.named_parameters())
    x = torch.randn(2, 3, 24, 24)
    res.model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), res.model.cpu()(x), atol=1e-6)


def test_finetune_option_errors(tmp_path: Path) -> None:
    from blockzoo.train import TrainConfig, prepare

    with pytest.raises(ConfigError, match=r"head_lr=0\.1 sets the rate of new parameters"):
        TrainConfig(head_lr=0.1)
    with pytest.raises(ConfigError, match="give attention"):
        TrainConfig(attention_after="layer*.*.bn2")
    with pytest.raises(ConfigError, match=r"freeze='layer7\.\*' matches no parameter"):
        prepare(TrainConfig.from_dict(_finetune_config(tmp_path, freeze="layer7.*")))
    (tmp_path / "b").mkdir()
    cfg = _finetune_config(tmp_path / "b", freeze="*")
    with pytest.raises(ConfigError, match="leaves no parameter to train"):
        from blockzoo.train import train
        train(cfg)


def test_a_split_rule_uses_each_chunk_once_and_prepare_runs_first() -> None:
    from blockzoo.weights import Layout, Rule, map_state_dict

    qkv = torch.arange(12.0).reshape(6, 2)
    rules = (Rule(r"qkv\.weight", "q.weight", part=(0, 3)), Rule(r"qkv\.weight", "k.weight", part=(1, 3)),
             Rule(r"qkv\.weight", "v.weight", part=(2, 3)), Rule(r"(a|b)\.weight", r"\1.w"))
    def prepare(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "a.weight" in t:
            t["b.weight"] = t.pop("a.weight") * 2
        return t

    layout = Layout("test", rules, (), lambda s: {}, prepare=prepare)
    mapped = map_state_dict(layout, {"qkv.weight": qkv, "a.weight": torch.ones(1)})
    assert torch.equal(torch.cat([mapped.tensors[k] for k in ("q.weight", "k.weight", "v.weight")]), qkv)
    assert mapped.tensors["k.weight"].tolist() == [[4.0, 5.0], [6.0, 7.0]]
    assert mapped.tensors["b.w"].item() == 2.0 and "a.w" not in mapped.tensors and not mapped.unknown
    bad = Layout("test", rules[:2], (), lambda s: {})
    with pytest.raises(FileFormatError, match="parts"):
        map_state_dict(bad, {"qkv.weight": qkv})
    with pytest.raises(FileFormatError, match="not divisible"):
        map_state_dict(layout, {"qkv.weight": torch.zeros(5, 2)})
