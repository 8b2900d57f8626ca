"""RepVGG-A0/B0 and MobileOne-S0: the papers' layouts, timm's parameter counts, exact fusion.

The parameter counts were read from timm 1.0.31 (``timm.create_model(name)``, 1000
classes; deploy form after ``timm.utils.model.reparameterize_model``); the papers
give the deploy counts rounded: RepVGG-A0 8.30M, B0 14.33M (Ding et al., Table 2),
MobileOne-S0 2.1M (Vasu et al., Table 8). timm is not a test dependency.
"""

import pytest
import torch
from torch import nn

import blockzoo
from blockzoo import ShapeError
from blockzoo.models.repnets import MobileOne, RepVGG
from blockzoo.rep import MobileOneBlock, RepVGGBlock

NAMES = ["repvgg_a0", "repvgg_b0", "mobileone_s0"]

# (train-form, deploy-form) parameters at 1000 classes, measured from timm 1.0.31
TIMM_PARAMS = {
    "repvgg_a0": (9_108_968, 8_309_384),
    "repvgg_b0": (15_817_960, 14_339_048),
    "mobileone_s0": (5_293_272, 2_078_504),
}


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _realistic_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """BN statistics of real activations, then randomly perturbed, with random affine terms.

    Statistics measured on random images keep the activations of a 20-layer net O(1)
    (so an absolute tolerance means something); the perturbation and random gamma/beta
    make every BN differ from the default (mean 0, var 1, gamma 1, beta 0), which would
    hide a fusion that forgets one of them.
    """
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, model.in_chans, 32, 32, generator=g, dtype=bns[0].weight.dtype))
        for bn in bns:
            n = bn.num_features
            bn.running_mean.add_(0.1 * torch.randn(n, generator=g) * bn.running_var.sqrt())
            bn.running_var.mul_(torch.rand(n, generator=g) * 0.4 + 0.8)
            bn.weight.copy_(torch.rand(n, generator=g) * 0.8 + 0.4)
            bn.bias.copy_(0.2 * torch.randn(n, generator=g))
            bn.momentum = 0.1
    return model.eval()


@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts_equal_timm_in_both_forms(name: str) -> None:
    model = blockzoo.create(name).eval()
    train, deploy = TIMM_PARAMS[name]
    assert _n_params(model) == train
    blockzoo.reparameterize(model)
    assert model.deployed and _n_params(model) == deploy
    assert _n_params(blockzoo.create(name, deploy=True)) == deploy


@pytest.mark.parametrize("name", NAMES)
def test_reparameterize_is_exact_float32_and_float64(name: str) -> None:
    torch.manual_seed(0)
    model = _realistic_bn(blockzoo.create(name))
    model64 = _realistic_bn(blockzoo.create(name).double())
    x = torch.randn(2, 3, 40, 36, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before, before64 = model(x), model64(x.double())
        assert 0.1 < before.abs().max() < 100  # O(1) logits: the tolerance is meaningful
        blockzoo.reparameterize(model)
        blockzoo.reparameterize(model64)
        after, after64 = model(x), model64(x.double())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert (before - after).abs().max().item() <= 1e-5
    assert (before64 - after64).abs().max().item() <= 1e-12


@pytest.mark.parametrize("name", NAMES)
def test_fused_model_saves_and_loads_as_deploy_form(name: str, tmp_path) -> None:
    s = blockzoo.spec(name)
    model = _realistic_bn(s.build_example(**s.example.tiny).double())
    x = s.make_input(batch=2, dtype=torch.float64)
    with torch.no_grad():
        expected = model(*x)
    blockzoo.reparameterize(model)
    path = blockzoo.save(model, tmp_path / f"{name}.safetensors")
    loaded = blockzoo.load(path).double().eval()
    assert isinstance(loaded, type(model)) and loaded.deployed
    assert not any(isinstance(m, nn.BatchNorm2d) for m in loaded.modules())
    with torch.no_grad():
        torch.testing.assert_close(loaded(*x), expected, rtol=1e-10, atol=1e-10)


def _stage_shapes(model: nn.Module) -> list[list[tuple[int, int, int, int]]]:
    """(in, out, stride, groups) of every block, stage by stage, the stem first."""
    def row(b: nn.Module) -> tuple[int, int, int, int]:
        return (b.channels, b.dim_out, b.stride, b.groups)

    return [[row(model.stem)]] + [[row(b) for b in stage] for stage in model.stages]


def test_repvgg_layouts_are_the_papers() -> None:
    # Ding et al. Sec. 3.4: stage depths 1, 2, 4, 14, 1 (A) and 1, 4, 6, 16, 1 (B); widths
    # min(64, 64a), 64a, 128a, 256a, 512b; the first block of every stage has stride 2
    a0 = blockzoo.create("repvgg_a0")
    shapes = _stage_shapes(a0)
    assert [len(s) for s in shapes] == [1, 2, 4, 14, 1]
    assert [s[-1][1] for s in shapes] == [48, 48, 96, 192, 1280]
    assert all(s[0][2] == 2 and all(b[2] == 1 for b in s[1:]) for s in shapes)
    assert all(isinstance(b, RepVGGBlock) for b in a0.modules() if hasattr(b, "branches"))
    assert [len(s) for s in _stage_shapes(blockzoo.create("repvgg_b0"))] == [1, 4, 6, 16, 1]
    assert [s[-1][1] for s in _stage_shapes(blockzoo.create("repvgg_b0"))] == [64, 64, 128, 256, 1280]
    # identity branches exactly where C_in = C_out and stride 1 (timm's key layout)
    keys = a0.state_dict().keys()
    assert "stages.0.1.branches.identity.bn.running_var" in keys
    assert not any(k.startswith("stages.0.0.branches.identity") for k in keys)
    assert {"stem.branches.conv_kxk.conv.weight", "stem.branches.conv_1x1.conv.weight",
            "head.fc.weight", "head.fc.bias"} <= set(keys)


def test_mobileone_s0_layout_is_the_papers() -> None:
    # Vasu et al. Table 7: S0 stages of 2, 8, 10, 1 units, widths 48, 128, 256, 1024, k = 4;
    # each unit a depthwise 3x3 block (stride 2 in the first unit) and a pointwise block
    s0 = blockzoo.create("mobileone_s0")
    shapes = _stage_shapes(s0)
    assert [len(s) for s in shapes] == [1, 4, 16, 20, 2]
    assert shapes[0] == [(3, 48, 2, 1)]
    for stage, width in zip(shapes[1:], (48, 128, 256, 1024), strict=True):
        dw, pw = stage[0::2], stage[1::2]
        assert all(c == o == g and s == (2 if i == 0 else 1) for i, (c, o, s, g) in enumerate(dw))
        assert all(o == width and s == 1 and g == 1 for c, o, s, g in pw)
    blocks = [b for b in s0.modules() if isinstance(b, MobileOneBlock)]
    assert s0.stem.num_branches == 1 and all(b.num_branches == 4 for b in blocks[1:])
    assert all(b.kernel_size == 1 for b in s0.stages[1][1::2])
    keys = s0.state_dict().keys()
    assert {"stem.branches.conv_kxk_0.conv.weight", "stem.branches.scale.conv.weight",
            "stages.1.15.branches.conv_kxk_3.conv.weight", "stages.1.15.branches.identity.bn.weight",
            "head.fc.weight"} <= set(keys)
    assert s0.state_dict()["stages.1.15.branches.conv_kxk_3.conv.weight"].shape == (128, 128, 1, 1)
    assert not any(k.startswith("stages.0.1.branches.scale") for k in keys)  # no scale at k = 1


def test_reparameterize_is_idempotent_and_records_deploy() -> None:
    s = blockzoo.spec("repvgg_a0")
    model = _realistic_bn(s.build_example(**s.example.tiny))
    x = s.make_input(batch=2)
    with torch.no_grad():
        once = model.reparameterize()(*x)
        assert torch.equal(model.reparameterize()(*x), once)
    assert model._blockzoo_entry[1]["deploy"] is True


def test_bad_input_and_arguments() -> None:
    model = RepVGG((1, 1), (4, 8), num_classes=3)
    with pytest.raises(ShapeError, match="RepVGG"):
        model(torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match="layers"):
        RepVGG((1, 0), (4, 8))
    with pytest.raises(ValueError, match="layers"):
        MobileOne((1, 1, 1), (4, 8))
    with pytest.raises(ValueError, match="num_branches=0"):
        MobileOne((1, 1), (4, 8), num_branches=0)
