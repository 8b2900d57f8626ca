"""Structural re-parameterization is exact: train form (eval) == one fused conv.

Every exactness test first randomises BatchNorm running means/variances and affine
weights/biases: with default statistics (mean 0, var 1, gamma 1, beta 0) a fusion
that forgets the mean, the variance or the affine part still looks right.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import blockzoo
from blockzoo import ShapeError
from blockzoo.mlp import RepMLPBlock
from blockzoo.rep import (
    ACBlock,
    BNAndPad,
    DiverseBranchBlock,
    MobileOneBlock,
    RepVGGBlock,
    avg_kernel,
    conv_as_fc,
    fuse_bn,
    identity_kernel,
    merge_1x1_kxk,
    pad_kernel,
)

BLOCKS = [RepVGGBlock, ACBlock, DiverseBranchBlock, MobileOneBlock]
# (channels, dim_out, stride, groups): same shape, stride 2, channel change, grouped,
# depthwise, and grouped with channel change and stride 2 at odd widths.
CONFIGS = [(8, 8, 1, 1), (8, 8, 2, 1), (8, 16, 1, 1), (8, 16, 2, 2), (8, 8, 1, 4), (8, 8, 1, 8), (6, 9, 2, 3)]


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random running mean/var and affine weight/bias in every BatchNorm of ``model``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g))
                m.running_var.copy_(torch.rand(n, generator=g) * 3 + 0.2)
                m.weight.copy_(torch.randn(n, generator=g))
                if m.bias is not None:  # DBB's first sequential BNs have no shift
                    m.bias.copy_(torch.randn(n, generator=g))
    return model


def _build(cls, c, o, s, g, dtype, **kw):
    extra = {"num_branches": 3} if cls is MobileOneBlock else {}
    torch.manual_seed(1)
    block = cls(c, o, stride=s, groups=g, **extra, **kw).to(dtype)
    return randomise_bn(block).eval()


def _assert_exact(before: torch.Tensor, after: torch.Tensor, dtype: torch.dtype) -> None:
    diff = (before - after).abs().max().item()
    if dtype == torch.float64:
        assert diff <= 1e-9, diff
    else:
        assert diff <= 1e-4 * before.abs().max().item(), diff


def _assert_one_conv(block: nn.Module) -> nn.Conv2d:
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in block.modules())
    assert not hasattr(block, "branches")
    kinds = {type(m) for m in block.modules()} - {type(block), nn.Conv2d}
    assert all(issubclass(k, (nn.Identity, nn.ReLU)) for k in kinds), kinds  # only the activation
    conv = convs[0]
    n_conv = conv.weight.numel() + conv.bias.numel()
    assert sum(p.numel() for p in block.parameters()) == n_conv
    return conv


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=[f"c{c}o{o}s{s}g{g}" for c, o, s, g in CONFIGS])
@pytest.mark.parametrize("cls", BLOCKS, ids=lambda c: c.__name__)
def test_fusion_is_exact(cls, cfg, dtype) -> None:
    c, o, s, g = cfg
    block = _build(cls, c, o, s, g, dtype)
    x = torch.randn(2, c, 9, 7, dtype=dtype)
    with torch.no_grad():
        before = block(x)
        assert block.reparameterize() is block
        after = block(x)
    _assert_exact(before, after, dtype)
    conv = _assert_one_conv(block)
    assert (conv.stride, conv.groups, conv.in_channels, conv.out_channels) == ((s, s), g, c, o)
    assert conv.weight.dtype == dtype and after.shape == before.shape


# DBB has no dilation (its average-pool branch has no dilated form): kernel 5 only.
KERNEL_CASES = [(cls, k, d) for cls in (RepVGGBlock, ACBlock, MobileOneBlock)
                for k, d in ((5, 1), (3, 2), (5, 2))]
KERNEL_CASES.append((DiverseBranchBlock, 5, 1))


@pytest.mark.parametrize("cls,kernel_size,dilation", KERNEL_CASES,
                         ids=[f"{c.__name__}-k{k}d{d}" for c, k, d in KERNEL_CASES])
def test_fusion_other_kernels_and_dilation(cls, kernel_size, dilation) -> None:
    kw = {"kernel_size": kernel_size}
    if dilation > 1:
        kw["dilation"] = dilation
    for s in (1, 2):
        block = _build(cls, 8, 8, s, 2, torch.float64, **kw)
        x = torch.randn(2, 8, 11, 10, dtype=torch.float64)
        with torch.no_grad():
            before = block(x)
            after = block.reparameterize()(x)
        _assert_exact(before, after, torch.float64)
        assert _assert_one_conv(block).dilation == (dilation, dilation)


def test_default_bn_statistics_would_hide_a_wrong_fusion() -> None:
    """Sanity of the test method: dropping the BN mean is invisible with default stats only."""
    block = RepVGGBlock(4).double().eval()
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)

    def wrong_fused(b: RepVGGBlock) -> torch.Tensor:
        w, bias = b.fused_kernel()
        means = sum(br.bn.running_mean * br.bn.weight / (br.bn.running_var + br.bn.eps).sqrt()
                    for br in b.branches.values())
        return F.conv2d(x, w, bias + means, padding=1)  # forgets "- mu * t"

    with torch.no_grad():
        assert torch.allclose(wrong_fused(block), F.conv2d(x, *block.fused_kernel(), padding=1))
        randomise_bn(block)
        assert not torch.allclose(wrong_fused(block), F.conv2d(x, *block.fused_kernel(), padding=1))


def test_branches_of_the_training_form() -> None:
    assert set(RepVGGBlock(8).branches) == {"conv_kxk", "conv_1x1", "identity"}
    assert set(RepVGGBlock(8, 16).branches) == {"conv_kxk", "conv_1x1"}  # in != out: no identity
    assert set(RepVGGBlock(8, stride=2).branches) == {"conv_kxk", "conv_1x1"}
    assert len(MobileOneBlock(8, num_branches=4).branches) == 4 + 2
    assert set(ACBlock(8).branches) == {"square", "hor", "ver"}
    kernels = [b.conv.kernel_size for b in ACBlock(8, kernel_size=5).branches.values()]
    assert kernels == [(5, 5), (1, 5), (5, 1)]
    assert len(DiverseBranchBlock(8).branches) == 4


@pytest.mark.parametrize("cls", BLOCKS, ids=lambda c: c.__name__)
def test_every_branch_trains(cls) -> None:
    block = cls(8, 8)
    block(torch.randn(2, 8, 6, 6)).square().sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("cls", BLOCKS, ids=lambda c: c.__name__)
def test_idempotent_and_deploy_constructor(cls) -> None:
    block = _build(cls, 8, 8, 1, 2, torch.float64)
    x = torch.randn(2, 8, 6, 5, dtype=torch.float64)
    block.reparameterize()
    conv = block.conv
    with torch.no_grad():
        y = block(x)
        block.reparameterize()
        assert block.conv is conv and torch.equal(block(x), y)
    # a deploy-form instance loads the fused weights
    extra = {"num_branches": 3} if cls is MobileOneBlock else {}
    fresh = cls(8, 8, groups=2, deploy=True, **extra).double().eval()
    fresh.load_state_dict(block.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(x), y)


@pytest.mark.parametrize("cls", BLOCKS, ids=lambda c: c.__name__)
def test_deploy_form_exports(cls) -> None:
    block = _build(cls, 8, 8, 2, 2, torch.float32).reparameterize()
    x = torch.randn(2, 8, 7, 9)
    program = torch.export.export(block, (x,), strict=False)
    torch.testing.assert_close(program.module()(x), block(x))


def test_keeps_dtype_and_training_flag() -> None:
    block = randomise_bn(DiverseBranchBlock(4, 8, groups=2)).to(torch.float64).train()
    block.reparameterize()
    assert block.conv.weight.dtype == torch.float64 and block.training and block.conv.training


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="kernel_size=4"):
        RepVGGBlock(8, kernel_size=4)
    with pytest.raises(ValueError, match="groups=3"):
        ACBlock(8, groups=3)
    with pytest.raises(ValueError, match="internal_channels"):
        DiverseBranchBlock(8, groups=4, internal_channels=6)
    with pytest.raises(ShapeError, match="RepVGGBlock"):
        RepVGGBlock(8)(torch.randn(1, 7, 5, 5))
    bn = nn.BatchNorm2d(3, track_running_stats=False)
    with pytest.raises(ValueError, match="running statistics"):
        fuse_bn(torch.randn(3, 3, 1, 1), None, bn)


# --------------------------------------------------------------------------- the maths


def test_fuse_bn_equals_conv_then_bn() -> None:
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=True).double()
    bn = randomise_bn(nn.BatchNorm2d(6).double()).eval()
    w, b = fuse_bn(conv.weight, conv.bias, bn)
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(F.conv2d(x, w, b, padding=1), bn(conv(x)), rtol=0, atol=1e-12)


def test_identity_avg_and_pad_kernels() -> None:
    x = torch.randn(2, 6, 7, 5, dtype=torch.float64)
    for g in (1, 2, 6):
        eye = identity_kernel(6, g, 3, dtype=torch.float64)
        torch.testing.assert_close(F.conv2d(x, eye, padding=1, groups=g), x)
        avg = avg_kernel(6, g, 3, dtype=torch.float64)
        torch.testing.assert_close(F.conv2d(x, avg, stride=2, groups=g), F.avg_pool2d(x, 3, stride=2))
    w = torch.randn(4, 6, 1, 3, dtype=torch.float64)
    torch.testing.assert_close(F.conv2d(x, pad_kernel(w, 3), padding=1), F.conv2d(x, w, padding=(0, 1)))
    with pytest.raises(ValueError):
        pad_kernel(torch.randn(1, 1, 2, 2), 3)


@pytest.mark.parametrize("groups", [1, 2])
def test_merge_1x1_kxk_with_bias_padding(groups) -> None:
    w1, b1 = torch.randn(6, 4 // groups, 1, 1).double(), torch.randn(6).double()
    w2, b2 = torch.randn(8, 6 // groups, 3, 3).double(), torch.randn(8).double()
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64)
    mid = F.conv2d(x, w1, b1, groups=groups)
    mid = F.pad(mid - b1[:, None, None], (1, 1, 1, 1)) + b1[:, None, None]  # pad with b1, not 0
    want = F.conv2d(mid, w2, b2, stride=2, groups=groups)
    w, b = merge_1x1_kxk(w1, b1, w2, b2, groups)
    torch.testing.assert_close(F.conv2d(x, w, b, stride=2, padding=1, groups=groups), want)


def test_bn_and_pad_pads_with_bn_of_zero() -> None:
    layer = randomise_bn(BNAndPad(3, 2).double()).eval()
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    y = layer(x)
    zero = layer.bn(torch.zeros(1, 3, 1, 1, dtype=torch.float64))
    assert y.shape == (1, 3, 8, 8)
    torch.testing.assert_close(y[:, :, :2, :], zero.expand(1, 3, 2, 8))
    torch.testing.assert_close(y[:, :, 2:-2, 2:-2], layer.bn(x))
    # in training the value follows the batch statistics the BN normalises with
    layer.train()
    y = layer(x)
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
    c = layer.bn.bias - mean * layer.bn.weight / (var + layer.bn.eps).sqrt()
    torch.testing.assert_close(y[0, :, 0, 0], c)


def test_dbb_first_sequential_bns_have_no_shift() -> None:
    # Padded with BN(0), beta is constant over the map; the k x k conv (or the average
    # pool) keeps it constant per channel and the second BN subtracts it: not a parameter.
    keys = set(DiverseBranchBlock(4, 8, groups=2).state_dict())
    for branch in ("conv_1x1_kxk", "conv_1x1_avg"):
        assert f"branches.{branch}.bn1.bn.bias" not in keys
        assert {f"branches.{branch}.bn1.bn.weight", f"branches.{branch}.bn2.bias"} <= keys
    # without beta, the padding is BN(0) = -mu gamma / sqrt(var + eps)
    layer = randomise_bn(BNAndPad(3, 1, bias=False).double()).eval()
    bn = layer.bn
    y = layer(torch.randn(1, 3, 4, 4, dtype=torch.float64))
    torch.testing.assert_close(y[0, :, 0, 0], -bn.running_mean * bn.weight / (bn.running_var + bn.eps).sqrt())


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_conv_as_fc(groups) -> None:
    w, b = torch.randn(4, 4 // groups, 3, 3).double(), torch.randn(4).double()
    patch = torch.randn(3, 4, 5, 3, dtype=torch.float64)
    fc_w, fc_b = conv_as_fc(w, b, groups, 5, 3)
    n = 4 * 5 * 3
    got = F.conv2d(patch.reshape(3, n, 1, 1), fc_w[:, :, None, None], fc_b, groups=groups).reshape(3, 4, 5, 3)
    torch.testing.assert_close(got, F.conv2d(patch, w, b, padding=1, groups=groups))


# --------------------------------------------------------------------------- RepMLP


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("groups,partition,kernels", [(1, 4, (1, 3)), (2, (4, 2), (1, 3)), (4, 5, (1, 3, 5))])
def test_repmlp_fusion_is_exact(groups, partition, kernels, dtype) -> None:
    torch.manual_seed(0)
    block = randomise_bn(RepMLPBlock(8, partition, groups=groups, kernel_sizes=kernels)).to(dtype).eval()
    ph, pw = (partition, partition) if isinstance(partition, int) else partition
    x = torch.randn(2, 8, 2 * ph, 3 * pw, dtype=dtype)
    with torch.no_grad():
        before = block(x)
        block.reparameterize()
        after = block(x)
    _assert_exact(before, after, dtype)
    assert not hasattr(block, "local") and not hasattr(block, "fc3")
    assert block.fc.weight.dtype == dtype
    # the one partition FC holds everything but the global perceptron
    gp = sum(p.numel() for n, p in block.named_parameters() if n.startswith("gp_"))
    assert sum(p.numel() for p in block.parameters()) - gp == block.fc.weight.numel() + block.fc.bias.numel()
    fc = block.fc
    block.reparameterize()
    assert block.fc is fc


@pytest.mark.parametrize("groups,reduction", [(1, 4), (2, 2)])
def test_repmlp_folds_the_global_perceptron_bn(groups, reduction) -> None:
    # BN_g with random statistics and affine parameters folds into FC_1: the deploy form
    # equals the eval-mode train form in float64 to 1e-12 (relative and absolute), and it
    # holds no BatchNorm at all
    torch.manual_seed(0)
    block = randomise_bn(RepMLPBlock(8, 4, groups=groups, reduction=reduction), seed=3).double().eval()
    x = torch.randn(3, 8, 8, 12, dtype=torch.float64)
    with torch.no_grad():
        before = block(x)
        block.reparameterize()
        after = block(x)
    torch.testing.assert_close(after, before, rtol=1e-12, atol=1e-12)
    assert block.gp_bn is None
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in block.modules())
    # built with deploy=True, the block has the same parameters as the fused one
    fresh = RepMLPBlock(8, 4, groups=groups, reduction=reduction, deploy=True).double()
    assert fresh.state_dict().keys() == block.state_dict().keys()


def test_repmlp_rejects_sizes_off_the_partition_grid() -> None:
    with pytest.raises(ShapeError, match="partition_size"):
        RepMLPBlock(4, 4)(torch.randn(1, 4, 8, 6))


# --------------------------------------------------------------------------- the walker


class UserBlock(nn.Module):
    """A user's own re-param block: reparameterize() fuses its two parallel convs."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.fused = None

    def forward(self, x):
        return self.fused(x) if self.fused is not None else self.a(x) + self.b(x)

    def reparameterize(self):
        if self.fused is None:
            self.fused = copy.deepcopy(self.a)
            with torch.no_grad():
                self.fused.weight += self.b.weight
                self.fused.bias += self.b.bias
            del self.a, self.b


class UserNet(nn.Module):
    """A user class that reparameterizes itself through blockzoo (must not recurse)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(RepVGGBlock(3, 8, stride=2), nn.Sequential(ACBlock(8), nn.ReLU()))
        self.body = nn.ModuleList([MobileOneBlock(8, groups=8, num_branches=2), UserBlock()])
        self.inner = nn.Sequential(nn.Sequential(DiverseBranchBlock(8, 16, stride=2)), RepMLPBlock(16, 4))

    def forward(self, x):
        x = self.stem(x)
        for m in self.body:
            x = m(x)
        return self.inner(x)

    def reparameterize(self):
        return blockzoo.reparameterize(self)


def test_reparameterize_walks_any_model() -> None:
    torch.manual_seed(0)
    net = randomise_bn(UserNet()).double().eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        before = net(x)
        assert blockzoo.reparameterize(net) is net
        after = net(x)
    _assert_exact(before, after, torch.float64)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.stem.modules())
    assert all(b.deployed for b in net.modules() if hasattr(b, "deployed"))
    assert net.body[1].fused is not None
    with torch.no_grad():
        net.reparameterize()  # idempotent, and its self-call does not recurse
        assert torch.equal(net(x), after)
    with pytest.raises(TypeError):
        blockzoo.reparameterize("not a module")


@pytest.mark.parametrize("name", ["repvgg", "acnet", "dbb", "mobileone", "repmlp"])
def test_fused_weights_save_and_load_as_deploy_form(name, tmp_path) -> None:
    block = randomise_bn(blockzoo.spec(name).build_example()).eval()
    blockzoo.reparameterize(block)
    path = tmp_path / f"{name}.safetensors"
    blockzoo.save(block, path)
    again = blockzoo.load(path, deploy=True).eval()
    x = blockzoo.spec(name).make_input(batch=2)
    with torch.no_grad():
        assert torch.equal(again(*x), block(*x))


@pytest.mark.parametrize("name", ["repvgg", "acnet", "dbb", "mobileone", "repmlp"])
def test_reparameterized_block_saves_and_loads(name: str, tmp_path) -> None:
    # save must record the deploy form, so load rebuilds the fused module the weights fit
    s = blockzoo.spec(name)
    block = randomise_bn(s.build_example()).double().eval()
    x = s.make_input(batch=2, dtype=torch.float64)
    expected = block(*x)
    blockzoo.reparameterize(block)
    path = blockzoo.save(block, tmp_path / f"{name}.safetensors")
    loaded = blockzoo.load(path).double().eval()
    assert loaded.deployed
    assert not any(isinstance(m, nn.BatchNorm2d) for m in loaded.modules())
    torch.testing.assert_close(loaded(*x), expected, rtol=1e-10, atol=1e-10)  # float64
