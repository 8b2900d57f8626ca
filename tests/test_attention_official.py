"""SE, ECA, CBAM, SK (official code) and BAM (paper equations) equal independent references.

Each reference below is written from the structure of the authors' released code
(named in each test) with plain functional ops on the block's own weights, never by
calling the block's submodules or helpers; BatchNorm statistics are randomised first
(default statistics would hide a missing or misplaced BN). The parameter counts are
checked against timm 1.0.31's ``timm.layers`` modules in the configurations where
the two layouts coincide (the numbers were read from timm once; timm is not a test
dependency).
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from blockzoo.attention import BAM, CBAM, EfficientChannelAttention, SelectiveKernel, SqueezeExcite


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _randomise(block: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere and random BN running statistics, float64, eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
        for m in block.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 2 + 0.3)
    return block.double().eval()


def _bn(v: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """Eval-mode BatchNorm written out: gamma (v - mu) / sqrt(var + eps) + beta, per channel."""
    shape = (1, -1) + (1,) * (v.dim() - 2)
    mu, var = bn.running_mean.reshape(shape), bn.running_var.reshape(shape)
    return bn.weight.reshape(shape) * (v - mu) / torch.sqrt(var + bn.eps) + bn.bias.reshape(shape)


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


TOL = dict(rtol=1e-10, atol=1e-12)  # float64 throughout


# ----------------------------------------------------------------- SE (hujie-frank/SENet)


@pytest.mark.parametrize(("channels", "reduction"), [(32, 4), (48, 16)])
def test_se_equals_official_structure(channels: int, reduction: int) -> None:
    se = _randomise(SqueezeExcite(channels, reduction=reduction))
    x = _x(3, channels, 5, 7)
    # SE-ResNet prototxt: global AVE pool -> 1x1 conv "down" (C/r, bias) -> ReLU
    #                     -> 1x1 conv "up" (C, bias) -> Sigmoid -> scale the input
    w1, b1 = se.fc1.weight.flatten(1), se.fc1.bias
    w2, b2 = se.fc2.weight.flatten(1), se.fc2.bias
    assert w1.shape == (channels // reduction, channels)  # exactly C / r
    z = x.mean((2, 3))  # (B, C)
    s = torch.sigmoid(torch.relu(z @ w1.T + b1) @ w2.T + b2)
    with torch.no_grad():
        torch.testing.assert_close(se(x), x * s[:, :, None, None], **TOL)


def test_se_parameter_counts() -> None:
    # ours: C/r exactly, both FCs with bias (official)
    assert _n_params(SqueezeExcite(64)) == 64 * 4 + 4 + 4 * 64 + 64  # 580
    # timm SEModule(256) = 8464: C/16 = 16 is already a multiple of 8, layouts coincide
    assert _n_params(SqueezeExcite(256)) == 8464
    # timm SEModule(64) = 1096 rounds the hidden width 4 up to 8; hidden=8 reproduces it
    assert _n_params(SqueezeExcite(64, hidden=8)) == 1096


# ----------------------------------------------------------------- ECA (BangguWu/ECANet)


@pytest.mark.parametrize(("channels", "k"), [(4, 1), (7, 1), (8, 3), (64, 3), (256, 5), (2048, 7)])
def test_eca_kernel_sizes_from_the_formula(channels: int, k: int) -> None:
    # k = |log2(C)/2 + 1/2|_odd; for C <= 7 the formula gives 1 (timm clamps to 3)
    assert EfficientChannelAttention(channels).kernel_size == k
    assert _n_params(EfficientChannelAttention(channels)) == k  # timm EcaModule: 3 at 8/64, 5 at 256


@pytest.mark.parametrize(("channels", "kernel_size"), [(16, 3), (16, 5), (5, 1), (9, 7)])
def test_eca_equals_official_structure(channels: int, kernel_size: int) -> None:
    eca = _randomise(EfficientChannelAttention(channels, kernel_size=kernel_size))
    x = _x(2, channels, 4, 6)
    # eca_layer: AdaptiveAvgPool2d(1) -> Conv1d(1, 1, k, padding (k-1)/2, no bias) over the
    # channel axis -> sigmoid -> scale. Written as the explicit tap sum with zero padding.
    w = eca.conv.weight.flatten()  # (k,)
    assert eca.conv.bias is None
    z = x.mean((2, 3))  # (B, C)
    p = (kernel_size - 1) // 2
    zp = F.pad(z, (p, p))
    logits = sum(w[j] * zp[:, j:j + channels] for j in range(kernel_size))
    with torch.no_grad():
        torch.testing.assert_close(eca(x), x * torch.sigmoid(logits)[:, :, None, None], **TOL)


# ----------------------------------------------------------------- CBAM (Jongchan/attention-module)


@pytest.mark.parametrize("bias", [True, False])
def test_cbam_equals_official_structure(bias: bool) -> None:
    cbam = _randomise(CBAM(32, reduction=4, bias=bias))
    x = _x(2, 32, 6, 9)
    fc1, fc2 = cbam.channel_gate.mlp[0], cbam.channel_gate.mlp[2]
    w1, w2 = fc1.weight.flatten(1), fc2.weight.flatten(1)
    b1 = fc1.bias if bias else torch.zeros(w1.shape[0], dtype=x.dtype)
    b2 = fc2.bias if bias else torch.zeros(w2.shape[0], dtype=x.dtype)

    def mlp(v: torch.Tensor) -> torch.Tensor:  # Flatten -> Linear -> ReLU -> Linear
        return torch.relu(v @ w1.T + b1) @ w2.T + b2

    # ChannelGate: sum of the MLP over the avg- and max-pooled descriptors, sigmoid, scale
    x1 = x * torch.sigmoid(mlp(x.mean((2, 3))) + mlp(x.amax((2, 3))))[:, :, None, None]
    # SpatialGate: ChannelPool = cat(max_c, mean_c) (max first, as the official code) ->
    # BasicConv(2, 1, 7, padding 3, conv without bias, BN, no ReLU) -> sigmoid -> scale.
    # Our conv reads [mean; max], so the official layout's weight is ours with the two
    # input channels swapped.
    conv, bn = cbam.spatial_gate.conv, cbam.spatial_gate.bn
    assert conv.bias is None
    pooled = torch.cat([x1.amax(1, keepdim=True), x1.mean(1, keepdim=True)], 1)
    w_official = conv.weight.flip(1)
    y = x1 * torch.sigmoid(_bn(F.conv2d(pooled, w_official, padding=3), bn))
    with torch.no_grad():
        torch.testing.assert_close(cbam(x), y, **TOL)


def test_cbam_spatial_bn_follows_the_official_basic_conv() -> None:
    bn = CBAM(16).spatial_gate.bn
    assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == 1
    assert (bn.eps, bn.momentum, bn.affine) == (1e-5, 0.01, True)


def test_cbam_parameter_counts() -> None:
    # official: MLP with biases; spatial conv 2*7*7 without bias + BN(1) (2 parameters)
    assert _n_params(CBAM(64)) == (64 * 4 + 4) + (4 * 64 + 64) + 98 + 2  # 680
    # timm CbamModule(64) = 612 and CbamModule(256) = 8292: no MLP biases
    assert _n_params(CBAM(64, bias=False)) == 612
    assert _n_params(CBAM(256, bias=False)) == 8292


# ----------------------------------------------------------------- SK (implus/SKNet)


@pytest.mark.parametrize(("channels", "groups", "min_hidden"), [(16, 4, 4), (32, 8, 32)])
def test_sk_equals_official_structure(channels: int, groups: int, min_hidden: int) -> None:
    sk = _randomise(SelectiveKernel(channels, groups=groups, reduction=4, min_hidden=min_hidden))
    x = _x(2, channels, 7, 6)
    # sknet50.prototxt, one SK unit:
    #   3x3g32 (pad 1) -> BN -> ReLU;   3x3g32d2 (pad 2, dilation 2) -> BN -> ReLU
    #   Eltwise SUM -> global AVE pool -> B_fc1 (1x1, d outputs, no bias) -> BN -> ReLU
    #   -> B_fc2 (1x1, 2C outputs, no bias) -> Reshape (B, 2, C) -> Softmax over the 2
    #   -> a0 * U0 + a1 * U1 (Scale + Axpy)
    (c3, bn3), (c5, bn5) = [(b[0], b[1]) for b in sk.branches]
    u0 = torch.relu(_bn(F.conv2d(x, c3.weight, padding=1, groups=groups), bn3))
    u1 = torch.relu(_bn(F.conv2d(x, c5.weight, padding=2, dilation=2, groups=groups), bn5))
    fc1, bn_fc1 = sk.fuse[0], sk.fuse[1]
    d = max(channels // 4, min_hidden)
    assert fc1.weight.shape[:2] == (d, channels) and fc1.bias is None and sk.select.bias is None
    s = (u0 + u1).mean((2, 3))  # (B, C)
    z = torch.relu(_bn((s @ fc1.weight.flatten(1).T)[:, :, None, None], bn_fc1))[:, :, 0, 0]
    logits = (z @ sk.select.weight.flatten(1).T).reshape(2, 2, channels)  # (B, M, C)
    a = logits.softmax(1)[..., None, None]
    with torch.no_grad():
        torch.testing.assert_close(sk(x), a[:, 0] * u0 + a[:, 1] * u1, **TOL)


def test_sk_parameter_counts() -> None:
    # timm SelectiveKernel(1024, 1024, groups=32, split_input=False) = 790656: d = 64 in both
    assert _n_params(SelectiveKernel(1024, groups=32)) == 790656
    # timm at C = 128 has d = 8 (no floor L = 32); min_hidden=8 gives its count, 12816
    assert _n_params(SelectiveKernel(128, groups=32, min_hidden=8)) == 12816
    # the paper's d = max(C/16, 32) = 32 at C = 128
    branches = 2 * (128 * 4 * 9 + 2 * 128)
    assert _n_params(SelectiveKernel(128, groups=32)) == branches + (128 * 32 + 2 * 32) + 32 * 256
    assert SelectiveKernel(128, groups=32).hidden == 32


# ----------------------------------------------------------------- BAM (paper equations win)


def test_bam_equals_the_papers_equations() -> None:
    # Park et al. Eq. 1-3; the official code's product and BN placement are listed in
    # BAM's Deviations (the paper's equations are explicit there, so they are followed)
    bam = _randomise(BAM(32, reduction=4, dilation=2))
    x = _x(2, 32, 7, 6)
    fc0, _, fc1, bn_c = bam.channel_branch
    # M_c = BN(W_1 ReLU(W_0 AvgPool(x) + b_0) + b_1): the bias b_1 before BN is absorbed
    z = torch.relu(x.mean((2, 3)) @ fc0.weight.flatten(1).T + fc0.bias) @ fc1.weight.flatten(1).T
    mc = _bn(z[:, :, None, None], bn_c)
    # M_s = BN(f_3^1x1(f_2^3x3(f_1^3x3(f_0^1x1(x))))), each inner f with BN + ReLU, dilation 2
    h = x
    convs = [m for m in bam.spatial_branch if isinstance(m, nn.Conv2d)]
    bns = [m for m in bam.spatial_branch if isinstance(m, nn.BatchNorm2d)]
    for i, (conv, bn) in enumerate(zip(convs, bns, strict=True)):
        pad = 2 if conv.kernel_size == (3, 3) else 0
        h = _bn(F.conv2d(h, conv.weight, padding=pad, dilation=2 if pad else 1), bn)
        h = torch.relu(h) if i < 3 else h
    # y = x + x * sigmoid(M_c + M_s)
    with torch.no_grad():
        torch.testing.assert_close(bam(x), x + x * torch.sigmoid(mc + h), **TOL)
