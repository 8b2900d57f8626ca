"""timm-layout weights for the issue-23 backbones on main (blockzoo.weights).

deit_tiny, deit_tiny_distilled, swin_tiny, pvt_v2_b0, convnextv2_atto and
mobilenetv3_small / _large load PyTorch Image Models' state dicts. The fixtures
(tests/fixtures/weights/<timm name>.json, written by scripts/make_weight_fixtures.py with
timm 1.0.31) hold timm's tensor names and shapes and timm's outputs for the weights
``synthetic_tensor`` fills them with; here they are rebuilt from names and shapes alone,
loaded through ``blockzoo.create_model(name, weights=PATH)``, and the outputs must equal
timm's. The tests also cover what each layout does beyond renaming (PVT's q / kv
stacking, MobileNetV3's batch-norm numbering, Swin's derived buffers, DeiT's grid) and the
loaded models at other sizes and with blocks attached after each stage.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import pytest
import torch

import blockzoo
from blockzoo.checks import FileFormatError
from blockzoo.weights import (
    LAYOUTS,
    fixture_input,
    map_state_dict,
    pretrained_args,
    synthetic_state_dict,
    synthetic_tensor,
)

FIXTURES = Path(__file__).parent / "fixtures" / "weights"

# blockzoo name -> timm name, and timm 1.0.31's parameter count at its default config (1000
# classes): sum(p.numel() for p in timm.create_model(TIMM_NAME).parameters()), read once.
TIMM = {
    "deit_tiny": ("deit_tiny_patch16_224", 5_717_416),
    "deit_tiny_distilled": ("deit_tiny_distilled_patch16_224", 5_910_800),
    "swin_tiny": ("swin_tiny_patch4_window7_224", 28_288_354),
    "pvt_v2_b0": ("pvt_v2_b0", 3_666_760),
    "convnextv2_atto": ("convnextv2_atto", 3_708_400),
    "mobilenetv3_small": ("mobilenetv3_small_100", 2_542_856),
    "mobilenetv3_large": ("mobilenetv3_large_100", 5_483_032),
}

# Where a block goes "after each stage" (the layout's default for ``--attention``), and how
# many places that is. DeiT has one resolution: its one image-shaped place is the patch
# projection (ViT's layout names no default either).
STAGES = {
    "deit_tiny": ("patch_embed.proj", 1),
    "deit_tiny_distilled": ("patch_embed.proj", 1),
    "swin_tiny": ("layers.[0-9]", 4),
    "pvt_v2_b0": ("stages.[0-9]", 4),
    "convnextv2_atto": ("stages.[0-9]", 4),
    "mobilenetv3_small": ("blocks.[0-9]", 6),
    "mobilenetv3_large": ("blocks.[0-9]", 7),
}


def _fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{TIMM[name][0]}.json").read_text())


@functools.cache
def _synthetic(name: str) -> dict[str, torch.Tensor]:
    return synthetic_state_dict(_fixture(name)["keys"])


def _tensors(name: str) -> dict[str, torch.Tensor]:
    """The synthetic weights of ``name``'s fixture (a new dict: tests replace entries, never edit tensors)."""
    return dict(_synthetic(name))


def _save(tensors: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save(tensors, path)
    return path


def test_every_backbone_has_a_layout_and_a_fixture() -> None:
    for name, (timm_name, _) in TIMM.items():
        assert name in LAYOUTS, name
        fx = _fixture(name)
        assert fx["timm_model"] == timm_name and fx["model"] == name and fx["timm_version"] == "1.0.31"


@pytest.mark.parametrize("name", sorted(TIMM))
def test_timm_weights_give_timm_outputs(name: str, tmp_path: Path) -> None:
    # (tests/test_weights.py runs every fixture from .safetensors; here from .pth, timm's other format)
    fx = _fixture(name)
    model = blockzoo.create_model(name, weights=_save(_tensors(name), tmp_path / "w.pth")).eval()
    count = sum(p.numel() for p in model.parameters())
    assert count == fx["num_params"] == TIMM[name][1]
    with torch.no_grad():
        out = model(fixture_input(fx["input"])).double()
    want = torch.tensor(fx["logits"], dtype=torch.float64)
    # fp32 on both sides: equal to 1e-5 relative to the logits' size (at least 1)
    tol = 1e-5 * max(1.0, want.abs().max().item())
    assert (out[:, :want.shape[1]] - want).abs().max().item() <= tol
    assert (out.logsumexp(1) - torch.tensor(fx["logsumexp"], dtype=torch.float64)).abs().max().item() <= tol
    # the fixture can tell a wrong mapping: its two samples' logits differ clearly
    assert (want[0] - want[1]).abs().max().item() > 1e-2


@pytest.mark.parametrize("name", sorted(STAGES))
def test_a_loaded_backbone_takes_other_sizes_and_blocks_after_each_stage(name: str, tmp_path: Path) -> None:
    path = _save(_tensors(name), tmp_path / "w.pth")
    model = blockzoo.create_model(name, num_classes=5, weights=path).eval()
    after, n = STAGES[name]
    assert LAYOUTS[name].attach_after == (None if name.startswith("deit") else after)
    x = fixture_input((1, 3, 72, 40))  # non-square; not a multiple of any patch, window or stride
    with torch.no_grad():
        before = model(x)
    model, where = blockzoo.attach(model, "se", after=after, example_input=x)
    assert len(where) == n
    with torch.no_grad():
        out = model(x)
    assert out.shape == before.shape == (1, 5) and torch.isfinite(out).all()
    assert not torch.allclose(out, before)  # the SE gates (in (0, 1)) change the features


def test_another_num_classes_leaves_both_deit_heads_fresh(tmp_path: Path, caplog) -> None:
    path = _save(_tensors("deit_tiny_distilled"), tmp_path / "w.pth")
    with caplog.at_level(logging.WARNING, logger="blockzoo.weights"):
        model = blockzoo.create_model("deit_tiny_distilled", num_classes=10, weights=path)
    assert "head.weight, head.bias, head_dist.weight, head_dist.bias was left fresh" in caplog.text
    assert model.head.weight.shape == model.head_dist.weight.shape == (10, 192)
    assert torch.equal(model.dist_token, _tensors("deit_tiny_distilled")["dist_token"])


def test_deit_reads_its_position_grid_from_the_file() -> None:
    tensors = _tensors("deit_tiny_distilled")
    assert pretrained_args("deit_tiny_distilled", tensors)["img_size"] == 224
    # a 384 x 384 file: 24 x 24 patches after the class and distillation tokens
    tensors["pos_embed"] = torch.zeros(1, 2 + 24 * 24, 192)
    assert pretrained_args("deit_tiny_distilled", tensors)["img_size"] == 384
    tensors["pos_embed"] = torch.zeros(1, 2 + 24 * 23, 192)
    with pytest.raises(FileFormatError, match="DeiT: 552 tokens are not a square grid"):
        pretrained_args("deit_tiny_distilled", tensors)


def test_pvt_stacks_timms_q_on_kv(tmp_path: Path) -> None:
    tensors = _tensors("pvt_v2_b0")
    model = blockzoo.create_model("pvt_v2_b0", weights=_save(tensors, tmp_path / "w.pth"))
    qkv = model.stages[2].blocks[1].attn.attn.qkv
    block = "stages.2.blocks.1.attn"
    assert torch.equal(qkv.weight, torch.cat([tensors[f"{block}.q.weight"], tensors[f"{block}.kv.weight"]]))
    assert torch.equal(qkv.bias, torch.cat([tensors[f"{block}.q.bias"], tensors[f"{block}.kv.bias"]]))
    # a file without one half is not patched up: the error names both ends
    del tensors[f"{block}.kv.weight"]
    want = (r"missing from the file: stages\.2\.blocks\.1\.attn\.attn\.qkv\.weight; "
            r"not in the model: stages\.2\.blocks\.1\.attn\.q\.weight")
    with pytest.raises(FileFormatError, match=want):
        blockzoo.create_model("pvt_v2_b0", weights=_save(tensors, tmp_path / "bad.pth"))


def test_mobilenetv3_batch_norms_follow_their_convs(tmp_path: Path) -> None:
    # timm numbers a block's BNs in order: bn1 is the depthwise BN of the separable first
    # block, the expansion BN of an inverted residual, and the BN of the last 1x1 conv
    tensors = _tensors("mobilenetv3_small")
    model = blockzoo.create_model("mobilenetv3_small", weights=_save(tensors, tmp_path / "w.pth"))
    state = model.state_dict()
    pairs = {
        "blocks.0.0.dw.bn": "blocks.0.0.bn1", "blocks.0.0.project.bn": "blocks.0.0.bn2",
        "blocks.0.0.project.conv": "blocks.0.0.conv_pw",
        "blocks.2.1.expand.bn": "blocks.2.1.bn1", "blocks.2.1.dw.bn": "blocks.2.1.bn2",
        "blocks.2.1.project.bn": "blocks.2.1.bn3", "blocks.2.1.se.fc2": "blocks.2.1.se.conv_expand",
        "blocks.5.0.bn": "blocks.5.0.bn1", "stem.bn": "bn1",
    }
    for ours, theirs in pairs.items():
        for leaf in ("weight", "running_var") if ".bn" in ours else ("weight",):
            assert torch.equal(state[f"{ours}.{leaf}"], tensors[f"{theirs}.{leaf}"]), ours


def test_mobilenetv3_sizes_do_not_cross(tmp_path: Path) -> None:
    path = _save(_tensors("mobilenetv3_small"), tmp_path / "small.pth")
    with pytest.raises(FileFormatError, match="does not fit mobilenetv3_large as a timm MobileNetV3 "):
        blockzoo.create_model("mobilenetv3_large", weights=path)


def test_swin_drops_the_derived_buffers_of_older_files() -> None:
    tensors = _tensors("swin_tiny")
    older = dict(tensors)
    older["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    older["layers.0.blocks.1.attn_mask"] = torch.zeros(64, 49, 49)
    new, old = (map_state_dict(LAYOUTS["swin_tiny"], t) for t in (tensors, older))
    assert not old.unknown and set(old.tensors) == set(new.tensors)
    assert set(new.tensors) == set(blockzoo.create_model("swin_tiny").state_dict())


def test_swin_reads_its_window_from_the_bias_table() -> None:
    tensors = _tensors("swin_tiny")
    assert pretrained_args("swin_tiny", tensors)["window_size"] == 7
    tensors["layers.0.blocks.0.attn.relative_position_bias_table"] = torch.zeros(15 * 15, 3)
    assert pretrained_args("swin_tiny", tensors)["window_size"] == 8
    tensors["layers.0.blocks.0.attn.relative_position_bias_table"] = torch.zeros(143, 3)
    with pytest.raises(FileFormatError, match=r"143 rows is not \(2M - 1\)\^2"):
        pretrained_args("swin_tiny", tensors)


def test_the_mobilenetv3_fixture_gain_touches_only_its_batch_norms() -> None:
    # synthetic_tensor scales timm's MobileNetV3 BN weights (blocks.i.j.bn1/2 by 1.6, bn3 by
    # 1.3) so its fixture logits depend on the input; other families' names keep 1 + 0.1 N
    def mean(name: str) -> float:
        return synthetic_tensor(name, (4096,)).mean().item()

    assert mean("blocks.3.1.bn2.weight") == pytest.approx(1.6, abs=0.01)
    assert mean("blocks.3.1.bn3.weight") == pytest.approx(1.3, abs=0.01)
    others = ("bn1.weight", "layer1.0.bn1.weight", "blocks.3.norm1.weight", "stages.0.blocks.1.norm.weight")
    for other in others:
        assert mean(other) == pytest.approx(1.0, abs=0.01), other
