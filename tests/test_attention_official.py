"""Attention blocks equal independent references: the official code's structure where the
paper is silent (SE, ECA, CBAM, SK, coordinate, triplet, SimAM, SGE, shuffle, DANet's PAM),
the paper's equations where they are explicit (BAM, polarized self-attention, DANet's CAM).

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

from blockzoo.attention import (
    BAM,
    CBAM,
    CoordinateAttention,
    DANet,
    EfficientChannelAttention,
    ExternalAttention,
    PolarizedParallel,
    PolarizedSequential,
    SelectiveKernel,
    ShuffleAttention,
    SimAM,
    SpatialGroupEnhance,
    SqueezeExcite,
    TripletAttention,
)


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


# ----------------------------------------------------------------- Coordinate (houqb/CoordAttention)


@pytest.mark.parametrize(("channels", "reduction", "min_hidden"), [(32, 4, 8), (16, 32, 8)])
def test_coordinate_equals_official_structure(channels: int, reduction: int, min_hidden: int) -> None:
    ca = _randomise(CoordinateAttention(channels, reduction=reduction, min_hidden=min_hidden))
    x = _x(2, channels, 5, 7)
    mip = max(8, channels // reduction)
    assert ca.conv1.weight.shape[:2] == (mip, channels) and ca.conv1.bias is None
    # CoordAtt: pool_h (B, C, H, 1), pool_w permuted to (B, C, W, 1), cat on dim 2 ->
    # conv1 (1x1, WITH bias b) -> bn1 -> h_swish -> split [H, W] -> conv_h / conv_w ->
    # sigmoid -> identity * a_w * a_h. The official conv1 bias b with running mean mu + b
    # equals ours (no bias) with running mean mu: BN absorbs the bias.
    b = torch.randn(mip, generator=torch.Generator().manual_seed(5), dtype=x.dtype)
    bn = ca.norm
    mu_official = bn.running_mean + b

    def bn_official(v: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1)
        return (bn.weight.reshape(shape) * (v - mu_official.reshape(shape))
                / torch.sqrt(bn.running_var.reshape(shape) + bn.eps) + bn.bias.reshape(shape))

    def h_swish(v: torch.Tensor) -> torch.Tensor:
        return v * torch.clamp(v + 3, 0, 6) / 6

    h = x.shape[2]
    y = torch.cat([x.mean(3, keepdim=True), x.mean(2, keepdim=True).permute(0, 1, 3, 2)], 2)
    y = h_swish(bn_official(F.conv2d(y, ca.conv1.weight, b)))
    y_h, y_w = y[:, :, :h], y[:, :, h:].permute(0, 1, 3, 2)
    a_h = torch.sigmoid(F.conv2d(y_h, ca.conv_h.weight, ca.conv_h.bias))
    a_w = torch.sigmoid(F.conv2d(y_w, ca.conv_w.weight, ca.conv_w.bias))
    with torch.no_grad():
        torch.testing.assert_close(ca(x), x * a_w * a_h, **TOL)


# ----------------------------------------------------------------- Triplet (landskape-ai/triplet-attention)


def test_triplet_equals_official_structure() -> None:
    ta = _randomise(TripletAttention(6, kernel_size=7))
    x = _x(2, 6, 5, 9)

    def gate(v: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
        # AttentionGate: ChannelPool = cat(max over dim 1, mean over dim 1) ->
        # BasicConv(2, 1, 7, padding 3, no bias, BN, no ReLU) -> sigmoid -> v * scale
        assert conv.bias is None
        pooled = torch.cat([v.amax(1, keepdim=True), v.mean(1, keepdim=True)], 1)
        return v * torch.sigmoid(_bn(F.conv2d(pooled, conv.weight, padding=3), bn))

    # cw: permute(0, 2, 1, 3) -> gate -> permute back; hc: permute(0, 3, 2, 1) -> gate ->
    # permute back; hw: gate on x; y = 1/3 (sum of the three). Our weights used as they are.
    out1 = gate(x.permute(0, 2, 1, 3), ta.gate_cw.conv, ta.gate_cw.norm).permute(0, 2, 1, 3)
    out2 = gate(x.permute(0, 3, 2, 1), ta.gate_ch.conv, ta.gate_ch.norm).permute(0, 3, 2, 1)
    out3 = gate(x, ta.gate_hw.conv, ta.gate_hw.norm)
    with torch.no_grad():
        torch.testing.assert_close(ta(x), (out1 + out2 + out3) / 3, **TOL)


def test_triplet_bn_follows_the_official_basic_conv() -> None:
    ta = TripletAttention(8)
    for gate in (ta.gate_cw, ta.gate_ch, ta.gate_hw):
        assert (gate.norm.num_features, gate.norm.eps, gate.norm.momentum) == (1, 1e-5, 0.01)
    assert _n_params(ta) == 3 * (2 * 7 * 7 + 2)  # official: 3 x (conv 98 + BN 2) = 300


# ----------------------------------------------------------------- SimAM (ZjjConan/SimAM)


def test_simam_equals_official_structure() -> None:
    simam = SimAM(5, lambda_=1e-3)
    x = _x(2, 5, 4, 7)
    # simam_module: n = w h - 1; d = (x - mean)^2; y = d / (4 (d.sum / n + lambda)) + 0.5
    n = 4 * 7 - 1
    d = (x - x.mean((2, 3), keepdim=True)).pow(2)
    y = d / (4 * (d.sum((2, 3), keepdim=True) / n + 1e-3)) + 0.5
    torch.testing.assert_close(simam(x), x * torch.sigmoid(y), **TOL)
    # a 1x1 input (official: 0 / 0): divisor 1, so every gate is sigmoid(1/2)
    x1 = _x(2, 5, 1, 1)
    torch.testing.assert_close(simam(x1), x1 * torch.sigmoid(torch.tensor(0.5, dtype=x1.dtype)), **TOL)


# ----------------------------------------------------------------- SGE (implus/PytorchInsight)


def test_sge_equals_official_structure() -> None:
    sge = _randomise(SpatialGroupEnhance(12, groups=3))
    x = _x(2, 12, 5, 6)
    b, c, h, w = x.shape
    g = 3
    # SpatialGroupEnhance: view (b g, c/g, h, w); xn = (x * avgpool(x)).sum(1); t = xn
    # flattened over h w; t = (t - mean) / (std + 1e-5) with the unbiased std; t * weight
    # + bias per group; x * sigmoid(t)
    xg = x.reshape(b * g, c // g, h, w)
    t = (xg * xg.mean((2, 3), keepdim=True)).sum(1).reshape(b * g, h * w)
    t = (t - t.mean(1, keepdim=True)) / (t.std(1, keepdim=True) + 1e-5)
    t = t.reshape(b, g, h, w) * sge.weight.reshape(1, g, 1, 1) + sge.bias.reshape(1, g, 1, 1)
    y = (xg * torch.sigmoid(t.reshape(b * g, 1, h, w))).reshape(b, c, h, w)
    with torch.no_grad():
        torch.testing.assert_close(sge(x), y, **TOL)
    assert _n_params(SpatialGroupEnhance(64, groups=64)) == 128  # official: weight + bias per group


# ----------------------------------------------------------------- Shuffle (wofmanaf/SA-Net)


def test_shuffle_equals_official_structure() -> None:
    sa = _randomise(ShuffleAttention(24, groups=3))
    x = _x(2, 24, 5, 6)
    b, c, h, w = x.shape
    # sa_layer: reshape (b G, C/G, h, w); chunk into x_0, x_1; channel half:
    # x_0 * sigmoid(cweight * avgpool(x_0) + cbias); spatial half: GroupNorm(c, c) WITH its
    # affine, then x_1 * sigmoid(sweight * gn + sbias); cat; reshape (b, C, h, w);
    # channel_shuffle(out, 2) = reshape (b, 2, C/2, h, w), permute(0, 2, 1, 3, 4), flatten
    xg = x.reshape(b * 3, -1, h, w)
    x0, x1 = xg[:, :4], xg[:, 4:]
    xn = x0 * torch.sigmoid(sa.cweight * x0.mean((2, 3), keepdim=True) + sa.cbias)
    mu = x1.mean((2, 3), keepdim=True)
    var = x1.var((2, 3), unbiased=False, keepdim=True)
    gn = (x1 - mu) / torch.sqrt(var + 1e-5)
    gn = gn * sa.gn.weight.reshape(1, -1, 1, 1) + sa.gn.bias.reshape(1, -1, 1, 1)
    xs = x1 * torch.sigmoid(sa.sweight * gn + sa.sbias)
    out = torch.cat([xn, xs], 1).reshape(b, c, h, w)
    out = out.reshape(b, 2, c // 2, h, w).permute(0, 2, 1, 3, 4).reshape(b, c, h, w)
    with torch.no_grad():
        torch.testing.assert_close(sa(x), out, **TOL)


def test_shuffle_parameter_counts() -> None:
    # official sa_layer(C, G): cweight, cbias, sweight, sbias and the GN affine, c = C / 2G each
    assert _n_params(ShuffleAttention(256, groups=64)) == 6 * 2
    assert _n_params(ShuffleAttention(2048, groups=64)) == 6 * 16
    sa = ShuffleAttention(64, groups=8)
    assert (sa.gn.num_groups, sa.gn.num_channels, sa.gn.affine) == (4, 4, True)
    # official start: W = 0, b = 1, GN gamma = 1, beta = 0
    starts = ((sa.cweight, 0), (sa.sweight, 0), (sa.cbias, 1), (sa.sbias, 1))
    for p, v in (*starts, (sa.gn.weight, 1), (sa.gn.bias, 0)):
        assert torch.equal(p, torch.full_like(p, v))


# ----------------------------------------------------------------- Polarized (paper equations win)


def _psa_reference(psa: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Liu et al. Eq. 2-5 written out; every 1x1 conv bias-free (official PSA.py)."""
    ch, sp = psa.channel_branch, psa.spatial_branch

    def a_ch(v: torch.Tensor) -> torch.Tensor:
        # A^ch = sigmoid(LN(W_z((sigma_1(W_v v)) x softmax_N(sigma_2(W_q v)))))
        wv = torch.einsum("oc,bcn->bon", ch.wv.weight.flatten(1), v.flatten(2))  # (B, C/2, N)
        wq = torch.einsum("oc,bcn->bon", ch.wq.weight.flatten(1), v.flatten(2))  # (B, 1, N)
        z = torch.einsum("bon,bn->bo", wv, wq[:, 0].softmax(-1))  # (B, C/2)
        z = z @ ch.wz.weight.flatten(1).T  # (B, C)
        z = F.layer_norm(z, z.shape[-1:], ch.norm.weight, ch.norm.bias, ch.norm.eps)
        return torch.sigmoid(z)[..., None, None]

    def a_sp(v: torch.Tensor) -> torch.Tensor:
        # A^sp = sigmoid(softmax_{C/2}(GAP(W_q v)) x W_v v)
        q = (v.mean((2, 3)) @ sp.wq.weight.flatten(1).T).softmax(-1)  # (B, C/2)
        wv = torch.einsum("oc,bchw->bohw", sp.wv.weight.flatten(1), v)  # (B, C/2, H, W)
        return torch.sigmoid(torch.einsum("bo,bohw->bhw", q, wv))[:, None]

    if psa.mode == "parallel":
        return a_ch(x) * x + a_sp(x) * x
    z = a_ch(x) * x
    return a_sp(z) * z


@pytest.mark.parametrize("cls", [PolarizedParallel, PolarizedSequential])
def test_polarized_equals_the_papers_equations(cls: type) -> None:
    psa = _randomise(cls(8))
    x = _x(2, 8, 5, 6)
    for conv in (psa.channel_branch.wv, psa.channel_branch.wq, psa.channel_branch.wz,
                 psa.spatial_branch.wq, psa.spatial_branch.wv):
        assert conv.bias is None  # official PSA.py: bias=False
    with torch.no_grad():
        torch.testing.assert_close(psa(x), _psa_reference(psa, x), **TOL)


def test_polarized_parameter_counts() -> None:
    # five bias-free 1x1 convs (C->C/2, C->1, C/2->C, C->C/2, C->C/2) + LayerNorm(C)
    c = 64
    assert _n_params(PolarizedParallel(c)) == c * c // 2 + c + c // 2 * c + 2 * (c * c // 2) + 2 * c


# ----------------------------------------------------------------- DANet (PAM official, CAM paper)


def test_danet_equals_reference() -> None:
    da = _randomise(DANet(16, reduction=8))
    x = _x(2, 16, 4, 5)
    b, c, h, w = x.shape
    n = h * w
    pam, cam = da.position, da.channel
    assert pam.key.bias is None and pam.query.weight.shape[0] == c // 8

    def conv1x1(conv: nn.Conv2d, v: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("oc,bcn->bon", conv.weight.flatten(1), v.flatten(2))
        return y if conv.bias is None else y + conv.bias[:, None]

    # PAM_Module: energy = query^T key (N x N), attention = softmax over the last axis,
    # out = value @ attention^T, gamma * out + x (the official key bias is cancelled)
    q, k, v = conv1x1(pam.query, x), conv1x1(pam.key, x), conv1x1(pam.value, x)
    att = torch.bmm(q.transpose(1, 2), k).softmax(-1)  # (B, N, N)
    e_pam = pam.alpha * torch.bmm(v, att.transpose(1, 2)).reshape(b, c, h, w) + x
    # CAM, the paper's Eq. 3-4: softmax_i(A_i . A_j) (the official code negates the energy)
    a = x.reshape(b, c, n)
    att_c = torch.bmm(a, a.transpose(1, 2)).softmax(-1)  # (B, C, C)
    e_cam = cam.beta * torch.bmm(att_c, a).reshape(b, c, h, w) + x
    with torch.no_grad():
        torch.testing.assert_close(da(x), e_pam + e_cam, **TOL)


# ----------------------------------------------------------------- External (paper Alg. 1; MenghaoGuo/EANet)


def test_external_equals_algorithm_1() -> None:
    ea = _randomise(ExternalAttention(12, memory_size=5))  # M_k, M_v now different
    x = _x(3, 7, 12)
    # Algorithm 1: attn = M_k(F) (B, N, S); softmax over N (dim 1); l1 over S (dim 2),
    # eps 1e-9 as External_attention; out = M_v(attn). Both memories bias-free.
    assert ea.mk.bias is None and ea.mv.bias is None
    attn = torch.einsum("bnc,sc->bns", x, ea.mk.weight).softmax(1)
    attn = attn / (1e-9 + attn.sum(2, keepdim=True))
    with torch.no_grad():
        torch.testing.assert_close(ea(x), torch.einsum("bns,cs->bnc", attn, ea.mv.weight), **TOL)


def test_external_starts_as_the_official_code() -> None:
    torch.manual_seed(0)
    ea = ExternalAttention(256, memory_size=64)
    assert torch.equal(ea.mv.weight, ea.mk.weight.T)  # M_v = M_k^T at the start
    assert ea.mv.weight.data_ptr() != ea.mk.weight.data_ptr()  # but two parameters
    std = ea.mk.weight.std().item()
    assert abs(std - (2 / 256) ** 0.5) < 0.1 * (2 / 256) ** 0.5  # N(0, 2/C); 16384 draws
