"""The maths of the convolution blocks: each test fails if the block computed something else."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import blockzoo
from blockzoo.attention.channel import SqueezeExcite
from blockzoo.bench.flops import count_flops, count_params
from blockzoo.conv import (
    BasicBlock,
    Bottleneck,
    CondConv,
    ConvBnAct,
    ConvMixerBlock,
    DepthwiseSeparableConv,
    DynamicConv,
    InceptionBlock,
    InvertedResidual,
    Involution,
    MBConv,
    ResNeXtBlock,
)


def randomize_bn(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine parameters: default ones hide mistakes."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(n, generator=g, dtype=m.running_mean.dtype))
                m.running_var.copy_(torch.rand(n, generator=g, dtype=m.running_var.dtype) + 0.5)
                m.weight.copy_(torch.randn(n, generator=g, dtype=m.weight.dtype))
                m.bias.copy_(torch.randn(n, generator=g, dtype=m.bias.dtype))
    return module


def _equals_module_path(block: nn.Module, x: torch.Tensor) -> None:
    """``block(x)`` without autograd (its fast paths) equals its plain module path (float64, 1e-12)."""
    from blockzoo._fastcall import module_path

    with torch.no_grad():
        got = block(x)
        with module_path():
            want = block(x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def bn_eval(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    # gamma (z - mu) / sqrt(var + eps) + beta, written out
    shape = (1, -1, 1, 1)
    return (x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps) * (
        bn.weight.view(shape)
    ) + bn.bias.view(shape)


# --------------------------------------------------------------------------- ConvBnAct


@pytest.mark.parametrize(
    "k, stride, padding, dilation, groups",
    [(3, 1, None, 1, 1), (5, 2, None, 1, 2), (3, 1, None, 2, 4), (3, 2, 0, 1, 1), (1, 3, None, 1, 1)],
)
def test_conv_bn_act_is_conv_then_bn_then_act(k, stride, padding, dilation, groups) -> None:
    unit = randomize_bn(ConvBnAct(8, 12, k, stride=stride, padding=padding, dilation=dilation,
                                  groups=groups, act_layer="relu")).double().eval()
    x = torch.randn(2, 8, 11, 9, dtype=torch.float64)
    p = dilation * (k - 1) // 2 if padding is None else padding
    z = F.conv2d(x, unit.conv.weight, None, stride, p, dilation, groups)
    torch.testing.assert_close(unit(x), torch.relu(bn_eval(z, unit.bn)))
    # H' = floor((H + 2p - d (k - 1) - 1) / s) + 1
    assert unit(x).shape[-2:] == ((11 + 2 * p - dilation * (k - 1) - 1) // stride + 1,
                                  (9 + 2 * p - dilation * (k - 1) - 1) // stride + 1)
    assert unit.conv.bias is None  # BN's beta replaces the conv bias


def test_conv_bn_act_without_norm_has_bias_and_rejects_bad_args() -> None:
    unit = ConvBnAct(4, 6, 3, norm_layer=None, act_layer=None)
    assert unit.conv.bias is not None and isinstance(unit.bn, nn.Identity)
    with pytest.raises(ValueError, match="groups=3"):
        ConvBnAct(4, 6, 3, groups=3)
    with pytest.raises(blockzoo.ShapeError, match="ConvBnAct"):
        ConvBnAct(4, 6, 5, padding=0)(torch.randn(1, 4, 3, 8))


# --------------------------------------------------------------------------- Inception


def test_inception_concatenates_its_four_branches() -> None:
    block = randomize_bn(InceptionBlock(16, 4, 6, 8, 2, 3, 5, norm_layer="batchnorm")).eval()
    x = torch.randn(2, 16, 7, 9)
    y = block(x)
    assert y.shape == (2, 4 + 8 + 3 + 5, 7, 9) and block.dim_out == 20
    parts = [block.branch1(x), block.branch3(x), block.branch5(x), block.branch_pool(x)]
    torch.testing.assert_close(y, torch.cat(parts, 1))
    # the pool branch is a 3x3 max pool (stride 1) then its 1x1 projection
    pooled = F.max_pool2d(x, 3, 1, 1)
    torch.testing.assert_close(parts[3], block.branch_pool[1](pooled))


def test_inception_reductions_cut_the_flops() -> None:
    """GoogLeNet's 3a block (C = 192): the 1x1 reductions make it far cheaper than the naive one."""
    x = torch.randn(1, 192, 8, 8)
    reduced = InceptionBlock(192, 64, 96, 128, 16, 32, 32)
    naive = InceptionBlock(192, 64, None, 128, None, 32, None)
    assert naive.dim_out == 64 + 128 + 32 + 192  # the pooled branch passes all 192 channels on
    f_red, f_naive = count_flops(reduced, (x,)), count_flops(naive, (x,))
    # per position, MACs: reduced 192*(64+96+16+32) + 96*9*128 + 16*25*32 = 163,328,
    # naive 192*64 + 192*9*128 + 192*25*32 = 387,072
    assert f_red == 2 * 64 * 163_328
    assert f_naive == 2 * 64 * 387_072
    assert f_red < 0.45 * f_naive


# --------------------------------------------------------------------------- residual blocks


@pytest.mark.parametrize("make", [
    lambda: BasicBlock(8),
    lambda: Bottleneck(16, 4),
    lambda: ResNeXtBlock(16, 16, cardinality=2, base_width=32),
    lambda: BasicBlock(8, attention="se", attention_kwargs=dict(reduction=2)),
])
def test_zeroed_last_bn_makes_the_block_its_identity_shortcut(make) -> None:
    block = randomize_bn(make()).double().eval()
    last = block.bn3 if hasattr(block, "bn3") else block.bn2
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    x = torch.relu(torch.randn(2, block.channels, 7, 9, dtype=torch.float64)).requires_grad_()
    y = block(x)
    torch.testing.assert_close(y, x)  # y = relu(0 + x) = x for x >= 0 (post-ReLU features)
    # the gradient flows through the shortcut unchanged: dL/dx = dL/dy
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(gx, g * (x > 0))


@pytest.mark.parametrize("make", [
    lambda: BasicBlock(8, 16, stride=2, zero_init_last=True),
    lambda: Bottleneck(8, 4, stride=2, zero_init_last=True),
])
def test_zero_init_last_makes_the_block_its_projection_shortcut(make) -> None:
    block = make().double()
    with torch.no_grad():  # random BN statistics everywhere except the zeroed scale
        for m in block.modules():
            if isinstance(m, nn.BatchNorm2d) and m.weight.any():
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 1.5)
    block.eval()
    x = torch.randn(2, block.channels, 9, 7, dtype=torch.float64)
    sc = block.shortcut
    proj = bn_eval(F.conv2d(x, sc.conv.weight, None, 2), sc.bn)
    torch.testing.assert_close(block(x), torch.relu(proj))
    assert block(x).shape == (2, block.dim_out, 5, 4)


def test_basic_block_equation_with_attention_on_the_branch() -> None:
    block = randomize_bn(BasicBlock(6, 6, attention="se", attention_kwargs=dict(reduction=2))).double().eval()
    assert isinstance(block.attn, SqueezeExcite) and isinstance(block.shortcut, nn.Identity)
    x = torch.randn(2, 6, 5, 8, dtype=torch.float64)
    h = torch.relu(bn_eval(F.conv2d(x, block.conv1.weight, None, 1, 1), block.bn1))
    f = bn_eval(F.conv2d(h, block.conv2.weight, None, 1, 1), block.bn2)
    torch.testing.assert_close(block(x), torch.relu(block.attn(f) + x))


def test_attention_must_be_an_image_block() -> None:
    with pytest.raises(ValueError, match="not an image attention block"):
        BasicBlock(8, attention="mlp")
    with pytest.raises(ValueError, match="unknown"):
        BasicBlock(8, attention="no_such_block")


def test_resnext_block_is_a_sum_of_cardinality_paths() -> None:
    """Fig. 3 (a) == (c): g separate bottleneck paths summed equal the grouped block."""
    g = 4
    block = randomize_bn(ResNeXtBlock(16, 16, cardinality=g, base_width=64)).double().eval()
    assert block.width == 16 and block.conv2.groups == g
    x = torch.randn(2, 16, 6, 5, dtype=torch.float64)
    d = block.width // g
    h1 = torch.relu(bn_eval(F.conv2d(x, block.conv1.weight), block.bn1))
    total = 0
    for i in range(g):  # path i: its d channels of conv1, its group of conv2, its d inputs of conv3
        sl = slice(i * d, (i + 1) * d)
        bn2 = block.bn2
        z = F.conv2d(h1[:, sl], block.conv2.weight[sl], None, 1, 1)
        z = (z - bn2.running_mean[sl, None, None]) / torch.sqrt(bn2.running_var[sl, None, None] + bn2.eps)
        z = torch.relu(z * bn2.weight[sl, None, None] + bn2.bias[sl, None, None])
        total = total + F.conv2d(z, block.conv3.weight[:, sl])
    f = bn_eval(total, block.bn3)
    torch.testing.assert_close(block(x), torch.relu(f + x))


def test_resnext_width_follows_the_paper() -> None:
    # ResNeXt-50 32x4d: stage 1 (O = 256) has width 128, stage 4 (O = 2048) width 1024
    assert ResNeXtBlock(64, 256).width == 128
    assert ResNeXtBlock(1024, 2048, stride=2).width == 1024


# --------------------------------------------------------------------------- depthwise / MBConv


def test_depthwise_separable_is_a_factorised_full_conv() -> None:
    conv = DepthwiseSeparableConv(5, 7, 3, norm_layer=None, act_layer=None).double()
    d, p = conv.dw.conv, conv.pw.conv
    # W[o, c] = P[o, c] D_c;  bias = P b_d + b_p
    w = p.weight[:, :, 0, 0, None, None] * d.weight[:, 0][None]
    b = p.weight[:, :, 0, 0] @ d.bias + p.bias
    x = torch.randn(2, 5, 8, 6, dtype=torch.float64)
    torch.testing.assert_close(conv(x), F.conv2d(x, w, b, 1, 1))
    assert count_params(conv) == 9 * 5 + 5 + 5 * 7 + 7  # k^2 C + C O (+ biases)


def test_mbconv_structure_and_identity_residual() -> None:
    block = randomize_bn(MBConv(8, expand_ratio=4, kernel_size=5)).double().eval()
    assert block.residual and block.dw.conv.groups == 32 and block.dw.conv.kernel_size == (5, 5)
    assert isinstance(block.se, SqueezeExcite) and block.se.hidden == 2  # 0.25 * C
    assert isinstance(block.project.act, nn.Identity)  # linear bottleneck
    x = torch.randn(2, 8, 7, 9, dtype=torch.float64)
    f = block.project(block.se(block.dw(block.expand(x))))
    torch.testing.assert_close(block(x), x + f)
    with torch.no_grad():
        block.project.bn.weight.zero_()
        block.project.bn.bias.zero_()
    torch.testing.assert_close(block(x), x)


def test_inverted_residual_is_mbconv_without_se() -> None:
    block = InvertedResidual(8, 16, stride=2)
    assert isinstance(block.se, nn.Identity) and not block.residual
    assert isinstance(block.dw.act, nn.ReLU6)
    assert block(torch.randn(2, 8, 9, 7)).shape == (2, 16, 5, 4)


# --------------------------------------------------------------------------- involution


def involution_reference(inv: Involution, x: torch.Tensor) -> torch.Tensor:
    """Loops over output positions: Y_{i,j,c} = sum_{u,v} H_{i,j,u,v,g(c)} X_{i s+u-K//2, j s+v-K//2, c}."""
    k, s, gc = inv.kernel_size, inv.stride, inv.group_channels
    kernel = inv.span(inv.reduce(inv.pool(x)))
    b, _, h, w = kernel.shape
    xp = F.pad(x, (k // 2,) * 4)
    out = torch.zeros(b, inv.channels, h, w, dtype=x.dtype)
    for i in range(h):
        for j in range(w):
            window = xp[:, :, i * s : i * s + k, j * s : j * s + k]  # (B, C, K, K)
            kern = kernel[:, :, i, j].reshape(b, inv.groups, k, k)
            kern = kern.repeat_interleave(gc, dim=1)  # (B, C, K, K): shared within a group
            out[:, :, i, j] = (window * kern).sum((2, 3))
    return out


@pytest.mark.parametrize("stride, size", [(1, (7, 9)), (2, (8, 6)), (2, (7, 9))])
def test_involution_matches_the_loop_reference(stride, size) -> None:
    inv = randomize_bn(Involution(8, 3, stride=stride, group_channels=4, reduction=2)).double().eval()
    x = torch.randn(2, 8, *size, dtype=torch.float64)
    y = inv(x)
    assert y.shape == (2, 8, -(-size[0] // stride), -(-size[1] // stride))
    torch.testing.assert_close(y, involution_reference(inv, x))


def test_involution_with_a_constant_kernel_is_a_depthwise_conv() -> None:
    """Zero the generator's weights: every position gets the same kernel (its bias)."""
    inv = Involution(6, 3, group_channels=3).double().eval()
    kern = torch.randn(inv.groups, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        inv.span.weight.zero_()
        inv.span.bias.copy_(kern.flatten())
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    w = kern.repeat_interleave(3, dim=0)[:, None]  # (C, 1, K, K), shared within each group
    torch.testing.assert_close(inv(x), F.conv2d(x, w, None, 1, 1, groups=6))


# --------------------------------------------------------------------------- dynamic kernels


def per_sample_reference(block: nn.Module, x: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    outs = []
    for b in range(x.shape[0]):
        w = (mix[b, :, None, None, None, None] * block.weight).sum(0)
        bias = (mix[b, :, None] * block.bias).sum(0)
        outs.append(F.conv2d(x[b : b + 1], w, bias, block.stride, block.padding, block.dilation,
                             block.groups))
    return torch.cat(outs)


@pytest.mark.parametrize("stride, groups", [(1, 1), (2, 2)])
def test_dynamic_conv_is_a_softmax_mixture_of_kernels(stride, groups) -> None:
    conv = DynamicConv(4, 6, 3, num_kernels=3, temperature=2.0, stride=stride, groups=groups).double()
    x = torch.randn(3, 4, 7, 8, dtype=torch.float64)
    with blockzoo.attention.maps.record_attention(conv) as maps:
        y = conv(x)
    pi = maps["attn_map"]
    # pi = softmax(W_2 relu(W_1 GAP(x)) / tau)
    z = conv.fc2(torch.relu(conv.fc1(x.mean((2, 3)))))
    torch.testing.assert_close(pi, torch.softmax(z / 2.0, -1))
    torch.testing.assert_close(pi.sum(-1), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(y, per_sample_reference(conv, x, pi))


def test_dynamic_conv_with_one_kernel_is_a_plain_conv() -> None:
    conv = DynamicConv(4, 6, 3, num_kernels=1).double()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight[0], conv.bias[0], 1, 1))


def test_condconv_is_a_sigmoid_routed_mixture_of_experts() -> None:
    conv = CondConv(4, 6, 3, num_experts=3).double()
    x = torch.randn(3, 4, 6, 7, dtype=torch.float64)
    with blockzoo.attention.maps.record_attention(conv) as maps:
        y = conv(x)
    r = maps["attn_map"]
    torch.testing.assert_close(r, torch.sigmoid(conv.route(x.mean((2, 3)))))
    assert ((r > 0) & (r < 1)).all()
    torch.testing.assert_close(y, per_sample_reference(conv, x, r))


# --------------------------------------------------------------------------- ConvMixer


@pytest.mark.parametrize("k", [3, 4])
def test_convmixer_block_equations(k) -> None:
    block = randomize_bn(ConvMixerBlock(6, k)).double().eval()
    x = torch.randn(2, 6, 7, 9, dtype=torch.float64)
    dw = F.conv2d(F.pad(x, ((k - 1) // 2, k // 2, (k - 1) // 2, k // 2)), block.dw.weight, block.dw.bias,
                  groups=6)
    z = bn_eval(F.gelu(dw), block.bn1) + x
    y = bn_eval(F.gelu(F.conv2d(z, block.pw.weight, block.pw.bias)), block.bn2)
    torch.testing.assert_close(block(x), y)


def test_mbconv_default_expansion_is_the_papers() -> None:
    # EfficientNet-B0 (Tan & Le, Table 1): MBConv6 in every stage but the first
    m = blockzoo.create("mbconv", channels=16)
    assert m.expand_ratio == 6
    assert m.expand.conv.out_channels == 96
    assert m.se.fc1.out_channels == 4  # SE width: se_ratio 0.25 of the block's input C


@pytest.mark.parametrize(("stride", "groups", "bias"), [(1, 1, True), (2, 2, False)])
def test_condconv_per_sample_loop_equals_the_grouped_convolution(monkeypatch, stride, groups, bias) -> None:
    """On large maps CondConv runs B ordinary convolutions instead of one of B groups: the same
    output and gradients (float64, 1e-12)."""
    from blockzoo.conv import condconv

    torch.manual_seed(0)
    conv = CondConv(4, 6, 3, num_experts=3, stride=stride, groups=groups, bias=bias).double()
    x = torch.randn(3, 4, 7, 6, dtype=torch.float64)

    def run(loop_min: int) -> tuple[torch.Tensor, ...]:
        monkeypatch.setattr(condconv, "_LOOP_MIN_MACS", loop_min)
        conv.zero_grad()
        xg = x.clone().requires_grad_(True)
        y = conv(xg)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        return y.detach(), xg.grad, conv.weight.grad.clone()

    for a, b in zip(run(0), run(1 << 40), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_efficientformer_meta4d_folded_path_equals_the_module_path_and_refolds() -> None:
    """Without autograd Meta4D computes I with one lerp and folds s_2 and the second norm into
    the second convolution (cached): the module path's output (float64, 1e-12), redone after
    the norm's statistics, eps or the scale change; training mode keeps the module path."""

    torch.manual_seed(0)
    block = randomize_bn(blockzoo.create("efficientformer_meta4d", channels=6)).double().eval()
    with torch.no_grad():
        for p in block.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)

    def same() -> None:
        _equals_module_path(block, x)

    same()
    bn = block.mlp[1].bn
    with torch.no_grad():
        bn.running_var.mul_(2.0)
        same()
        block.scale2.add_(0.5)
        same()
    bn.eps = 0.25
    same()
    block.train()
    with torch.no_grad():
        y = block(x)
    assert bn.num_batches_tracked.item() == 1 and y.shape == x.shape  # the module path updated its stats


@pytest.mark.parametrize("norm", [None, "batchnorm"])
def test_inception_shared_input_path_equals_the_module_path(norm) -> None:
    """Without autograd the three 1x1 convolutions on x run as one (norms folded, cached) and the
    3x3 max pool as a separable maximum: the module path's output (float64, 1e-12), redone after
    a weight changes; training mode keeps the module path."""
    from blockzoo import _kept

    torch.manual_seed(0)
    block = blockzoo.create("inception", channels=6, out_1x1=3, red_3x3=4, out_3x3=5, red_5x5=2, out_5x5=3,
                            pool_proj=2, norm_layer=norm)
    block = randomize_bn(block).double().eval()
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)

    def same() -> None:
        _equals_module_path(block, x)

    same()
    assert block in _kept._DERIVED
    with torch.no_grad():
        block.branch5[0].conv.weight.add_(0.5)
    same()
    block.train()
    with torch.no_grad():
        block(x)
    if norm:
        assert block.branch1.bn.num_batches_tracked.item() == 1


@pytest.mark.parametrize("k", [3, 5])
def test_max_pool_same_equals_max_pool2d(k) -> None:
    from blockzoo._fastops import max_pool_same

    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    x[0, 0, 2, 2] = float("nan")
    x[1, 1, 0, 0] = float("inf")
    x[1, 2] = float("-inf")
    want = F.max_pool2d(x, k, 1, k // 2)
    torch.testing.assert_close(max_pool_same(x, k), want, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(max_pool_same(x[:, :, :1, :2], k), F.max_pool2d(x[:, :, :1, :2], k, 1, k // 2),
                               rtol=0, atol=0, equal_nan=True)
