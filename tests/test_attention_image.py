"""The maths of the image plug-in attention blocks (channel / spatial / hybrid gates).

Each test checks a property the paper states or the equation itself, computed
independently of the block's forward (explicit softmax, closed forms, loops over the
few offsets or branches), so that a wrong implementation fails.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import blockzoo
from blockzoo import ShapeError
from blockzoo.attention import (
    BAM,
    CBAM,
    ContextualTransformer,
    CoordinateAttention,
    DANet,
    DoubleAttention,
    EfficientChannelAttention,
    GlobalFilter,
    ParNetAttention,
    PolarizedSelfAttention,
    PyramidSplitAttention,
    ResidualAttentionHead,
    S2Attention,
    SelectiveKernel,
    ShuffleAttention,
    SimAM,
    SpatialGroupEnhance,
    SqueezeExcite,
    TripletAttention,
    eca_kernel_size,
    spatial_shift,
)
from blockzoo.attention.maps import record_attention


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _in_open_unit(t: torch.Tensor) -> bool:
    return bool(((t > 0) & (t < 1)).all())


# ----------------------------------------------------------------- SE, ECA, CBAM: x times gates


@pytest.mark.parametrize("block", [SqueezeExcite(16, reduction=4), EfficientChannelAttention(16)])
def test_channel_gate_blocks_scale_input_by_gate_in_unit_interval(block) -> None:
    block = block.double().eval()
    x = _x(3, 16, 5, 7)
    with record_attention(block) as maps:
        y = block(x)
    (gate,) = maps.values()
    assert gate.shape == (3, 16, 1, 1)
    assert _in_open_unit(gate)
    torch.testing.assert_close(y, x * gate)


def test_cbam_is_input_times_channel_gate_times_spatial_gate() -> None:
    cbam = CBAM(16, reduction=4).double().eval()
    x = _x(2, 16, 6, 9)
    with record_attention(cbam) as maps:
        y = cbam(x)
    mc, ms = maps["channel_map"], maps["spatial_map"]
    assert mc.shape == (2, 16, 1, 1) and ms.shape == (2, 1, 6, 9)
    assert _in_open_unit(mc) and _in_open_unit(ms)
    torch.testing.assert_close(y, x * mc * ms)
    # M_c = sigmoid(MLP(avg) + MLP(max)); M_s from [mean_c; max_c] of x' = M_c x
    mlp = cbam.channel_gate.mlp
    want_mc = torch.sigmoid(mlp(x.mean((2, 3), keepdim=True)) + mlp(x.amax((2, 3), keepdim=True)))
    torch.testing.assert_close(mc, want_mc)
    xp = x * want_mc
    pooled = torch.cat([xp.mean(1, keepdim=True), xp.amax(1, keepdim=True)], 1)
    gate = cbam.spatial_gate
    torch.testing.assert_close(ms, torch.sigmoid(gate.bn(gate.conv(pooled))))  # BN as the official code


# ----------------------------------------------------------------- ECA


@pytest.mark.parametrize(
    ("channels", "k"), [(16, 3), (64, 3), (128, 5), (256, 5), (512, 5), (1024, 5), (2048, 7)]
)
def test_eca_kernel_size_follows_paper_formula(channels: int, k: int) -> None:
    # k = |log2(C)/gamma + b/gamma|_odd, gamma = 2, b = 1
    t = int(abs(math.log2(channels) / 2 + 1 / 2))
    assert k == (t if t % 2 else t + 1)
    assert eca_kernel_size(channels) == k
    eca = EfficientChannelAttention(channels)
    assert eca.kernel_size == k and eca.conv.kernel_size == (k,)


def test_eca_kernel_size_argument_and_gamma() -> None:
    assert EfficientChannelAttention(64, kernel_size=7).conv.kernel_size == (7,)
    assert EfficientChannelAttention(64, gamma=1.0).kernel_size == 7  # log2(64) + 1 = 7
    with pytest.raises(ValueError, match="kernel_size=4"):
        EfficientChannelAttention(64, kernel_size=4)


def test_eca_gate_only_sees_k_neighbouring_channels() -> None:
    eca = EfficientChannelAttention(32, kernel_size=3).double().eval()
    x = _x(1, 32, 4, 5)
    x2 = x.clone()
    x2[:, 20] += 3.0  # a channel far from channel 5
    with record_attention(eca) as maps:
        eca(x)
        g1 = maps["attn_map"].clone()
        eca(x2)
        g2 = maps["attn_map"]
    torch.testing.assert_close(g1[:, :19], g2[:, :19])  # channels >= 2 away unaffected
    assert not torch.allclose(g1[:, 19:22], g2[:, 19:22])
    # equals sigmoid(conv1d over the pooled channels)
    z = x.mean((2, 3))[:, None]
    torch.testing.assert_close(g1.flatten(1), torch.sigmoid(F.conv1d(z, eca.conv.weight, padding=1))[:, 0])


@pytest.mark.parametrize(("channels", "kernel_size", "size"),
                         [(32, 3, (4, 5)), (7, 5, (3, 3)), (64, 7, (1, 1))])
def test_eca_band_path_equals_the_conv_path(channels: int, kernel_size: int, size: tuple[int, int]) -> None:
    # without autograd: GAP and the conv across channels as one product with the conv's banded
    # matrix (cached); the same output and map as the conv path (grad mode on), refolded after
    # an in-place change of the kernel, and with a dilated conv
    eca = EfficientChannelAttention(channels, kernel_size=kernel_size).double().eval()
    x = _x(3, channels, *size)
    for step in range(3):
        with record_attention(eca) as maps:
            want = eca(x)
            want_map = maps["attn_map"].clone()
            with torch.no_grad():
                got = eca(x)
        torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(maps["attn_map"], want_map, rtol=1e-12, atol=1e-12)
        with torch.no_grad():
            got = eca(x)  # (nobody recording)
        torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-12)
        with torch.no_grad():
            eca.conv.weight.mul_(-2.0)
        if step == 1:
            eca.conv.dilation, eca.conv.padding = (2,), (kernel_size - 1,)


# ----------------------------------------------------------------- SimAM


def test_simam_has_no_parameters_and_matches_energy_closed_form() -> None:
    simam = SimAM(8)
    assert sum(p.numel() for p in simam.parameters()) == 0
    lam = simam.lambda_
    x = _x(2, 8, 5, 6)
    mu = x.mean((2, 3), keepdim=True)
    var = x.var((2, 3), keepdim=True, unbiased=True)  # 1/(M-1) sum (x - mu)^2
    # e*_t = 4 (sigma^2 + lambda) / ((t - mu)^2 + 2 sigma^2 + 2 lambda)
    energy = 4 * (var + lam) / ((x - mu) ** 2 + 2 * var + 2 * lam)
    torch.testing.assert_close(simam(x), x * torch.sigmoid(1 / energy))


def test_simam_weights_distinctive_neurons_more() -> None:
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    x[0, 0, 1, 2] = 5.0
    simam = SimAM(1)
    with record_attention(simam) as maps:
        simam(x)
    w = maps["attn_map"][0, 0]
    assert w[1, 2] == w.max() and w[1, 2] > w[0, 0]


# ----------------------------------------------------------------- Coordinate attention


def test_coordinate_attention_gates_factor_into_h_and_w() -> None:
    ca = CoordinateAttention(16, reduction=4, min_hidden=4).double().eval()
    x = _x(2, 16, 5, 7).abs() + 0.5  # no zeros, so y / x is the gate
    with record_attention(ca) as maps:
        y = ca(x)
    gh, gw = maps["h_map"], maps["w_map"]
    assert gh.shape == (2, 16, 5, 1) and gw.shape == (2, 16, 1, 7)
    assert _in_open_unit(gh) and _in_open_unit(gw)
    torch.testing.assert_close(y, x * gh * gw)
    # the total gate G = y / x has rank one per channel: G[h,w] G[h',w'] = G[h,w'] G[h',w]
    g = y / x
    lhs = g[:, :, :, None, :, None] * g[:, :, None, :, None, :]
    rhs = g[:, :, :, None, None, :] * g[:, :, None, :, :, None]
    torch.testing.assert_close(lhs, rhs)


def test_coordinate_attention_h_gate_reads_only_row_means() -> None:
    ca = CoordinateAttention(8, min_hidden=4).double().eval()
    x = _x(1, 8, 4, 6)
    # add a pattern whose row means are zero but column means are not all zero
    bump = torch.zeros_like(x)
    bump[..., 0, 0], bump[..., 0, 1] = 1.0, -1.0
    with record_attention(ca) as maps:
        ca(x)
        gh = maps["h_map"].clone()
        ca(x + bump)
    torch.testing.assert_close(maps["h_map"], gh)


# ----------------------------------------------------------------- DANet


def _explicit_softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    w = torch.exp(q @ k.transpose(-2, -1))
    return (w / w.sum(-1, keepdim=True)) @ v


@pytest.mark.parametrize("size", [(5, 11), (13, 3), (1, 1)])
def test_danet_works_at_unseen_sizes_and_equals_explicit_softmax(size) -> None:
    da = DANet(16, init_scale=0.7).double().eval()
    with torch.no_grad():
        da.position.alpha.fill_(0.7)
        da.channel.beta.fill_(-0.3)
    x = _x(2, 16, *size) * 0.3
    y = da(x)
    assert y.shape == x.shape
    pam, cam = da.position, da.channel
    q = pam.query(x).flatten(2).transpose(1, 2)  # (B, N, c)
    k = pam.key(x).flatten(2).transpose(1, 2)
    v = pam.value(x).flatten(2).transpose(1, 2)  # (B, N, C)
    # E_j = alpha sum_i s_ji D_i + x_j, s_ji = softmax_i(B_i . C_j)
    e_pos = 0.7 * _explicit_softmax_attention(q, k, v).transpose(1, 2).reshape_as(x) + x
    a = x.flatten(2)
    e_ch = -0.3 * _explicit_softmax_attention(a, a, a).reshape_as(x) + x
    torch.testing.assert_close(pam(x), e_pos)
    torch.testing.assert_close(cam(x), e_ch)
    torch.testing.assert_close(y, e_pos + e_ch)


def test_danet_recorded_position_map_is_softmax_over_hw() -> None:
    da = DANet(8, init_scale=1.0).double().eval()
    x = _x(1, 8, 3, 5)
    with torch.no_grad():
        fast = da(x)
    with record_attention(da) as maps, torch.no_grad():
        slow = da(x)
    torch.testing.assert_close(fast, slow)  # SDPA path == explicit path
    s = maps["position.attn_map"]
    assert s.shape == (1, 1, 15, 15)
    torch.testing.assert_close(s.sum(-1), torch.ones(1, 1, 15, dtype=s.dtype))
    assert maps["channel.attn_map"].shape == (1, 1, 8, 8)


def _danet_sdpa(da: DANet, x: torch.Tensor) -> torch.Tensor:
    """DANet as it was computed before its two-bmm CPU path: both modules through SDPA."""
    pam, cam = da.position, da.channel
    q, k, v = (conv(x).flatten(2).transpose(1, 2).unsqueeze(1) for conv in (pam.query, pam.key, pam.value))
    p = F.scaled_dot_product_attention(q, k, v, scale=1.0).squeeze(1).transpose(1, 2).reshape_as(x)
    a = x.flatten(2).unsqueeze(1)
    c = F.scaled_dot_product_attention(a, a, a, scale=1.0).squeeze(1).view_as(x)
    return (pam.alpha * p + x) + (cam.beta * c + x)


@pytest.mark.parametrize("reduction", [4, 1])
def test_danet_eval_paths_equal_the_module_path(reduction, monkeypatch) -> None:
    """Without autograd, PAM's q, k, v run as one stacked 1x1 conv, and from
    _SDPA_MIN_POSITIONS positions on as one projection to zero-padded q, k and v through SDPA;
    both equal the module-by-module path (float64), and both follow a weight change."""
    from blockzoo import _kept
    from blockzoo._fastcall import module_path
    from blockzoo.attention import danet

    torch.manual_seed(0)
    da = DANet(8, reduction=reduction).double().eval()
    with torch.no_grad():
        da.position.alpha.fill_(0.7)
        da.channel.beta.fill_(-0.4)
    pam = da.position
    for size, minimum in (((3, 5), 10 ** 9), ((3, 5), 15), ((4, 4), 15)):
        monkeypatch.setattr(danet, "_SDPA_MIN_POSITIONS", minimum)
        x = _x(2, 8, *size)
        for _ in range(2):  # the second time after a weight change: the cached stacks follow
            _kept._DERIVED.pop(pam, None)
            with torch.no_grad():
                got = da(x)
                key = "padded_qkv" if size[0] * size[1] >= minimum else "stacked_pointwise"
                assert set(_kept._DERIVED[pam]) == {key}  # the new path ran
                with module_path():
                    want = da(x)
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
            with torch.no_grad():
                pam.key.weight.mul_(-2.0)
                pam.value.bias.add_(0.5)


@pytest.mark.parametrize("size", [(4, 5), (1, 1)])
def test_danet_bmm_path_equals_the_sdpa_path_with_gradients(size, monkeypatch) -> None:
    from torch.nn.modules.module import register_module_forward_hook

    from blockzoo.attention import danet

    torch.manual_seed(0)
    da = DANet(16, reduction=4).double()
    with torch.no_grad():
        da.position.alpha.fill_(0.7)
        da.channel.beta.fill_(-0.4)
        da.position.key.weight.mul_(3)
    x = (_x(2, 16, *size) * 0.5).requires_grad_()
    params = list(da.parameters())
    outs = {}
    for how in ("bmm", "fused", "modules", "sdpa"):
        monkeypatch.setattr(danet, "_fused", lambda _x, f=how == "fused": f)
        handle = register_module_forward_hook(lambda *_a: None) if how == "modules" else None
        try:
            y = _danet_sdpa(da, x) if how == "sdpa" else da(x)
        finally:
            if handle is not None:
                handle.remove()
        outs[how] = (y, *torch.autograd.grad((y * y.detach().cos()).sum(), [x, *params]))
    for how in ("bmm", "fused", "modules"):
        for got, want in zip(outs[how], outs["sdpa"], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert (outs["bmm"][0] - 2 * x).abs().max() > 0.1  # both modules change the input


def test_danet_starts_as_identity_with_paper_init() -> None:
    x = _x(2, 8, 4, 5)
    torch.testing.assert_close(DANet(8).double()(x), 2 * x)  # PAM(x) + CAM(x), both identity


# ----------------------------------------------------------------- SK, EPSA, S2: softmax across branches


def test_sk_output_is_softmax_weighted_sum_of_branches() -> None:
    sk = SelectiveKernel(16, groups=4, reduction=4, min_hidden=4).double().eval()
    x = _x(2, 16, 6, 7)
    with record_attention(sk) as maps:
        y = sk(x)
    a = maps["attn_map"]
    assert a.shape == (2, 2, 16, 1, 1)
    torch.testing.assert_close(a.sum(1), torch.ones(2, 16, 1, 1, dtype=a.dtype))
    branches = [b(x) for b in sk.branches]
    torch.testing.assert_close(y, sum(a[:, m] * u for m, u in enumerate(branches)))
    # kernel 5 is a 3x3 conv with dilation 2, as in the paper
    conv5 = sk.branches[1][0]
    assert conv5.kernel_size == (3, 3) and conv5.dilation == (2, 2)


def test_epsa_weights_softmax_across_scales() -> None:
    psa = PyramidSplitAttention(16, groups=(1, 2, 2, 4), reduction=2).double().eval()
    x = _x(2, 16, 5, 6)
    with record_attention(psa) as maps:
        y = psa(x)
    att = maps["attn_map"]
    assert att.shape == (2, 4, 4, 1, 1)
    torch.testing.assert_close(att.sum(1), torch.ones(2, 4, 1, 1, dtype=att.dtype))
    feats = [conv(x) for conv in psa.convs]  # every scale reads the whole input
    torch.testing.assert_close(y, torch.cat([att[:, i] * f for i, f in enumerate(feats)], 1))
    assert [c.kernel_size[0] for c in psa.convs] == [3, 5, 7, 9]
    with pytest.raises(ValueError, match="groups"):
        PyramidSplitAttention(16)  # C/S = 4 is not divisible by groups 8 and 16


def test_spatial_shift_moves_each_quarter_one_step() -> None:
    x = torch.arange(4 * 3 * 4, dtype=torch.float64).view(1, 4, 3, 4)
    y = spatial_shift(x, "hw")
    torch.testing.assert_close(y[0, 0, 1:], x[0, 0, :-1])  # +H
    torch.testing.assert_close(y[0, 0, 0], x[0, 0, 0])  # border kept
    torch.testing.assert_close(y[0, 1, :-1], x[0, 1, 1:])  # -H
    torch.testing.assert_close(y[0, 2, :, 1:], x[0, 2, :, :-1])  # +W
    torch.testing.assert_close(y[0, 3, :, :-1], x[0, 3, :, 1:])  # -W
    z = spatial_shift(x, "wh")
    torch.testing.assert_close(z[0, 0, :, 1:], x[0, 0, :, :-1])  # +W first
    torch.testing.assert_close(z[0, 2, 1:], x[0, 2, :-1])  # then +H


@pytest.mark.parametrize("shape", [(1, 4, 3, 4), (2, 8, 1, 5), (2, 8, 6, 2)])
def test_spatial_shift_autograd_and_inference_paths_agree(shape: tuple[int, ...]) -> None:
    x = _x(*shape)
    with torch.no_grad():
        fast = spatial_shift(x, "hw"), spatial_shift(x, "wh")  # in-place slice copies
    xg = x.clone().requires_grad_()
    for order, want in zip(("hw", "wh"), fast, strict=True):
        torch.testing.assert_close(spatial_shift(xg, order), want, rtol=0, atol=0)  # concatenation


def test_s2_attention_no_grad_path_equals_autograd_path() -> None:
    s2 = S2Attention(8).double().eval()
    x = _x(2, 8, 5, 3)
    with torch.no_grad():
        fast = s2(x)
    torch.testing.assert_close(s2(x.requires_grad_()), fast, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 8, 5, 3), (1, 4, 1, 6), (3, 8, 2, 1)])
def test_s2_attention_gather_path_equals_copy_path_and_autograd(shape: tuple[int, ...],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import blockzoo.attention.s2 as s2_module

    s2 = S2Attention(shape[1]).double().eval()
    x = _x(*shape)
    with torch.no_grad():
        gathered = s2(x)  # small: the three branches by one index_select
        monkeypatch.setattr(s2_module, "_GATHER_MAX", 0)
        copied = s2(x)  # the slice-copy path of large inputs
    torch.testing.assert_close(gathered, copied, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s2(x.requires_grad_()), gathered, rtol=1e-12, atol=1e-12)


def test_s2_attention_split_weights_sum_to_one() -> None:
    s2 = S2Attention(8).double().eval()
    x = _x(2, 8, 4, 5)
    with record_attention(s2) as maps:
        y = s2(x)
    a = maps["attn_map"]
    assert a.shape == (2, 3, 8, 1, 1)
    torch.testing.assert_close(a.sum(1), torch.ones(2, 8, 1, 1, dtype=a.dtype))
    x1, x2, x3 = s2.expand(x).chunk(3, 1)
    mix = a[:, 0] * spatial_shift(x1, "hw") + a[:, 1] * spatial_shift(x2, "wh") + a[:, 2] * x3
    torch.testing.assert_close(y, s2.proj(mix))
    with pytest.raises(ValueError, match="multiple of 4"):
        S2Attention(6)


# ----------------------------------------------------------------- BAM, SGE, Shuffle, Triplet, PSA


def test_bam_is_x_plus_x_times_gate() -> None:
    bam = BAM(16, reduction=4).double().eval()
    x = _x(2, 16, 6, 5)
    with record_attention(bam) as maps:
        y = bam(x)
    m = maps["attn_map"]
    assert m.shape == (2, 16, 6, 5) and _in_open_unit(m)
    torch.testing.assert_close(y, x * (1 + m))
    # M = sigmoid(M_c + M_s): its logit is a channel term plus a spatial term
    logit = torch.logit(m)
    torch.testing.assert_close(logit - logit[:, :1], (logit - logit[:, :1])[:, :, :1, :1].expand_as(logit))
    assert bam.spatial_branch[3].dilation == (4, 4)


def test_sge_gate_is_sigmoid_of_normalised_similarity() -> None:
    sge = SpatialGroupEnhance(8, groups=2).double().eval()
    with torch.no_grad():
        sge.weight.copy_(torch.tensor([1.5, -0.5]).view(1, 2, 1, 1, 1))
        sge.bias.copy_(torch.tensor([0.2, 0.1]).view(1, 2, 1, 1, 1))
    x = _x(2, 8, 4, 5)
    y = sge(x)
    for gi in range(2):
        xg = x[:, 4 * gi: 4 * gi + 4]
        c = (xg * xg.mean((2, 3), keepdim=True)).sum(1, keepdim=True)
        chat = (c - c.mean((2, 3), keepdim=True)) / (c.std((2, 3), keepdim=True) + sge.eps)
        gate = torch.sigmoid(sge.weight[0, gi] * chat + sge.bias[0, gi])
        torch.testing.assert_close(y[:, 4 * gi: 4 * gi + 4], xg * gate[:, 0:1], rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # the in-place sigmoid without autograd: the same output
        torch.testing.assert_close(sge(x), y.detach(), rtol=1e-12, atol=1e-12)


def test_shuffle_attention_with_constant_gates_is_a_channel_shuffle() -> None:
    sa = ShuffleAttention(16, groups=2).double().eval()  # weights 0, biases 1: gates sigmoid(1)
    x = _x(2, 16, 3, 4)
    y = sa(x)
    # groups of 8 (halves of 4) are concatenated back in order, then shuffled with 2 groups:
    # output channel 2 i + j comes from input channel j * 8 + i
    perm = [j * 8 + i for i in range(8) for j in range(2)]
    torch.testing.assert_close(y, torch.sigmoid(torch.tensor(1.0, dtype=x.dtype)) * x[:, perm])
    with pytest.raises(ValueError, match="2 \\* groups"):
        ShuffleAttention(12, groups=4)


def test_triplet_attention_is_mean_of_three_gated_copies() -> None:
    ta = TripletAttention(8, kernel_size=3).double().eval()
    x = _x(2, 8, 5, 6)
    with record_attention(ta) as maps:
        y = ta(x)
    g_cw, g_ch, g_hw = maps["cw_map"], maps["ch_map"], maps["hw_map"]
    assert g_cw.shape == (2, 8, 1, 6) and g_ch.shape == (2, 8, 5, 1) and g_hw.shape == (2, 1, 5, 6)
    assert all(_in_open_unit(g) for g in (g_cw, g_ch, g_hw))
    torch.testing.assert_close(y, (x * g_cw + x * g_ch + x * g_hw) / 3)
    # the (H, W) branch is CBAM-like: conv over [max_c; mean_c]
    z = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], 1)
    gate = ta.gate_hw
    torch.testing.assert_close(g_hw, torch.sigmoid(gate.norm(gate.conv(z))))


@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_polarized_self_attention_composition(mode: str) -> None:
    psa = PolarizedSelfAttention(8, mode=mode).double().eval()
    x = _x(2, 8, 4, 5)
    with record_attention(psa) as maps:
        y = psa(x)
    ach, asp = maps["channel_map"], maps["spatial_map"]
    assert ach.shape == (2, 8, 1, 1) and asp.shape == (2, 1, 4, 5)
    assert _in_open_unit(ach) and _in_open_unit(asp)
    # channel branch: sigmoid(LN(W_z(W_v x softmax_N(W_q x))))
    cb = psa.channel_branch
    w = torch.softmax(cb.wq(x).flatten(2), -1)
    pooled = (cb.wv(x).flatten(2) * w).sum(-1)[..., None, None]
    torch.testing.assert_close(ach, torch.sigmoid(cb.norm(cb.wz(pooled).flatten(1)))[..., None, None])
    if mode == "parallel":
        torch.testing.assert_close(y, x * ach + x * asp)
    else:
        torch.testing.assert_close(y, (x * ach) * asp)
    with pytest.raises(ValueError, match="mode"):
        PolarizedSelfAttention(8, mode="both")


@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_polarized_reordered_products_equal_the_module_path_with_gradients(mode: str) -> None:
    """The branches' fast path pools before W_v / W_q (the same products in another order):
    equal, in float64, to every 1x1 conv run as a module on the whole map (a global hook
    forces that path), outputs, maps and gradients."""
    from torch.nn.modules.module import register_module_forward_hook


    torch.manual_seed(0)
    psa = PolarizedSelfAttention(8, mode=mode).double()
    with torch.no_grad():
        psa.channel_branch.norm.weight.uniform_(0.5, 1.5)
        psa.channel_branch.norm.bias.uniform_(-0.5, 0.5)
    x = _x(2, 8, 4, 5).requires_grad_()
    params = list(psa.parameters())
    outs = []
    for hooked in (False, True):
        handle = register_module_forward_hook(lambda *_a: None) if hooked else None
        try:
            with record_attention(psa) as maps:
                y = psa(x)
        finally:
            if handle is not None:
                handle.remove()
        grads = torch.autograd.grad((y * y.detach().cos()).sum(), [x, *params])
        outs.append((y, *maps.values(), *grads))
    assert len(outs[0]) == len(outs[1]) == 1 + 4 + 1 + len(params)  # y, four maps, gradients
    for fast, modules in zip(*outs, strict=True):
        torch.testing.assert_close(fast, modules, rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # and without autograd or a recording
        torch.testing.assert_close(psa(x), outs[1][0], rtol=1e-12, atol=1e-12)


def test_polarized_entries_are_the_two_layouts() -> None:
    assert blockzoo.create("polarized_parallel", channels=8).mode == "parallel"
    assert blockzoo.create("polarized_sequential", channels=8).mode == "sequential"


# ----------------------------------------------------------------- A2, CoT, CSRA, GFNet, ParNet


def test_double_attention_gather_then_distribute() -> None:
    a2 = DoubleAttention(8, c_m=6, c_n=3, residual=False).double().eval()
    x = _x(2, 8, 4, 5)
    with record_attention(a2) as maps:
        y = a2(x)
    gather, dist = maps["gather_map"], maps["distribute_map"]
    torch.testing.assert_close(gather.sum(-1), torch.ones(2, 3, dtype=x.dtype))  # over positions
    torch.testing.assert_close(dist.sum(1), torch.ones(2, 20, dtype=x.dtype))  # over descriptors
    a = a2.phi(x).flatten(2)  # (B, m, N)
    g = torch.einsum("bmn,bkn->bmk", a, gather)  # n descriptors, each an attention pool
    z = torch.einsum("bmk,bkn->bmn", g, dist).view(2, 6, 4, 5)
    torch.testing.assert_close(y, a2.proj(z))
    a2.residual = True
    torch.testing.assert_close(a2(x), x + y)


def test_cot_dynamic_context_is_local_attention_over_window() -> None:
    cot = ContextualTransformer(8, key_groups=2, num_heads=2, min_hidden=4).double().eval()
    x = _x(1, 8, 5, 6)
    with record_attention(cot) as maps:
        y = cot(x)
    a = maps["attn_map"]  # (B, G, K, H, W), GroupNorm-ed: zero mean per head
    assert a.shape == (1, 2, 9, 5, 6)
    torch.testing.assert_close(a.mean((2, 3, 4)), torch.zeros(1, 2, dtype=x.dtype))
    # K_2(p) = sum over the 3x3 offsets o of A(p, o) V(p + o), zero outside the map;
    # channel c uses head c mod G
    v = F.pad(cot.conv1x1(x), (1, 1, 1, 1))
    k2 = torch.zeros_like(x)
    for o, (di, dj) in enumerate((i, j) for i in range(3) for j in range(3)):
        shifted = v[:, :, di: di + 5, dj: dj + 6]
        k2 += a[:, torch.arange(8) % 2, o] * shifted
    k2 = F.silu(cot.bn(k2))
    k1 = cot.key_embed(x)
    f = maps["fuse_map"]  # (B, 2, C, 1, 1): [K_2, K_1]
    torch.testing.assert_close(f.sum(1), torch.ones(1, 8, 1, 1, dtype=x.dtype))
    torch.testing.assert_close(y, f[:, 0] * k2 + f[:, 1] * k1)


def test_csra_logits_are_average_plus_lambda_attention() -> None:
    head = ResidualAttentionHead(8, 5, temperatures=(2.0, math.inf), lam=0.3).double().eval()
    x = _x(3, 8, 4, 6)
    y = head(x)
    assert y.shape == (3, 5)
    want = torch.zeros(3, 5, dtype=x.dtype)
    for conv, t in zip(head.heads, (2.0, math.inf), strict=True):
        m = conv.weight.flatten(1)  # (K, C)
        s = torch.einsum("kc,bcn->bkn", m / m.norm(dim=1, keepdim=True), x.flatten(2))
        att = s.amax(-1) if math.isinf(t) else (torch.softmax(t * s, -1) * s).sum(-1)
        want += s.mean(-1) + 0.3 * att
    torch.testing.assert_close(y, want)
    # lambda = 0: plain average pooling through each head's normalised classifier
    head.lam = 0.0
    avg = sum(x.mean((2, 3)) @ (w / w.norm(dim=1, keepdim=True)).T
              for w in (c.weight.flatten(1) for c in head.heads))
    torch.testing.assert_close(head(x), avg)
    assert blockzoo.spec("csra").example.out_shape((2, 8, 3, 3), {"num_classes": 5}) == (2, 5)


def test_csra_cached_normalised_weights_equal_the_autograd_path_and_follow_changes() -> None:
    # without autograd the normalised (T K, C) classes are kept; equal to the autograd path
    # (computed per call) to 1e-12 in float64, also after an in-place change and a new weight
    from blockzoo import _kept

    head = ResidualAttentionHead(8, 5, temperatures=(2.0, math.inf), lam=0.3).double().eval()
    x = _x(3, 8, 4, 6)
    for step in range(3):
        with torch.no_grad():
            got = head(x)
        assert "normalised" in _kept._DERIVED[head]
        torch.testing.assert_close(got, head(x).detach(), rtol=1e-12, atol=1e-12)
        with torch.no_grad():
            if step == 0:
                head.heads[0].weight.mul_(-2.0).add_(0.1)
            else:
                head.heads[1].weight = torch.nn.Parameter(torch.randn_like(head.heads[1].weight))


def test_gfnet_equals_explicit_fourier_filter_and_identity_filter() -> None:
    gf = GlobalFilter(4, 6, 8).double()
    x = _x(2, 4, 6, 8)
    k = torch.complex(gf.weight[..., 0], gf.weight[..., 1])
    want = torch.fft.irfft2(torch.fft.rfft2(x, norm="ortho") * k, s=(6, 8), norm="ortho")
    torch.testing.assert_close(gf(x), want)
    with torch.no_grad():
        gf.weight.zero_()
        gf.weight[..., 0] = 1.0  # K = 1: the layer is the identity
    torch.testing.assert_close(gf(x), x)
    torch.testing.assert_close(gf(_x(1, 4, 5, 11)), _x(1, 4, 5, 11))  # interpolated K = 1 still


def test_gfnet_fast_path_equals_filter_for_product() -> None:
    # eval without autograd: a complex view of the weight and an in-place product; with autograd
    # or a recording: filter_for's copy; all equal the explicit product, gradients too
    gf = GlobalFilter(4, 6, 8).double()
    x = _x(3, 4, 6, 8)
    k = gf.filter_for(6, 8).detach()
    want = torch.fft.irfft2(torch.fft.rfft2(x, norm="ortho") * k, s=(6, 8), norm="ortho")
    with torch.no_grad():
        torch.testing.assert_close(gf(x), want, rtol=0, atol=1e-12)
        x9 = _x(3, 4, 6, 9)  # W = 9: the same W // 2 + 1, the same filter
        want9 = torch.fft.irfft2(torch.fft.rfft2(x9, norm="ortho") * k, s=(6, 9), norm="ortho")
        torch.testing.assert_close(gf(x9), want9, rtol=0, atol=1e-12)
    with record_attention(gf) as maps:
        with torch.no_grad():
            torch.testing.assert_close(gf(x), want, rtol=0, atol=1e-12)
    torch.testing.assert_close(next(iter(maps.values())), k, rtol=0, atol=0)
    xg = x.clone().requires_grad_(True)
    gf(xg).square().sum().backward()
    wg, gx = gf.weight.grad.clone(), xg.grad.clone()
    gf.weight.grad = None
    xr = x.clone().requires_grad_(True)
    kr = torch.complex(gf.weight[..., 0], gf.weight[..., 1])
    torch.fft.irfft2(torch.fft.rfft2(xr, norm="ortho") * kr, s=(6, 8), norm="ortho").square().sum().backward()
    torch.testing.assert_close(gx, xr.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(wg, gf.weight.grad, rtol=0, atol=1e-12)


def test_gfnet_is_a_circular_convolution() -> None:
    gf = GlobalFilter(1, 5, 6).double()
    kernel = _x(5, 6, seed=3)
    with torch.no_grad():
        kf = torch.fft.rfft2(kernel, norm="backward")
        gf.weight.copy_(torch.stack([kf.real, kf.imag], -1)[None])
    x = _x(1, 1, 5, 6, seed=4)
    # y(p) = sum_q kernel(q) x(p - q mod size)
    want = torch.zeros(5, 6, dtype=x.dtype)
    for i in range(5):
        for j in range(6):
            want += kernel[i, j] * torch.roll(x[0, 0], (i, j), (0, 1))
    torch.testing.assert_close(gf(x)[0, 0], want)


def test_gfnet_without_resize_rejects_other_sizes() -> None:
    gf = GlobalFilter(4, 6, 8, resize=False)
    assert gf(torch.randn(1, 4, 6, 9)).shape == (1, 4, 6, 9)  # same W // 2 + 1
    with pytest.raises(ShapeError, match="GlobalFilter"):
        gf(torch.randn(1, 4, 7, 8))


def test_parnet_attention_branches() -> None:
    pa = ParNetAttention(8).double().eval()
    x = _x(2, 8, 5, 4)
    with record_attention(pa) as maps:
        y = pa(x)
    gate = maps["attn_map"]
    assert gate.shape == (2, 8, 1, 1) and _in_open_unit(gate)
    s = pa.skip_norm(x)
    torch.testing.assert_close(y, F.silu(pa.conv1x1(x) + pa.conv3x3(x) + s * gate))
    torch.testing.assert_close(gate, torch.sigmoid(pa.excite(s.mean((2, 3), keepdim=True))))


def _parnet_random() -> ParNetAttention:
    pa = ParNetAttention(8).double().eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in pa.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
        for bn in pa.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.running_mean.copy_(torch.randn(8, generator=g, dtype=torch.float64))
                bn.running_var.copy_(torch.rand(8, generator=g, dtype=torch.float64) + 0.5)
    return pa


def test_parnet_attention_merged_inference_path_equals_module_path() -> None:
    pa = _parnet_random()
    x = _x(2, 8, 5, 4)
    want = pa(x)  # grad enabled: the branches as modules
    with torch.no_grad():
        torch.testing.assert_close(pa(x), want, rtol=1e-12, atol=1e-12)  # one merged 3x3 conv
        torch.testing.assert_close(pa(x), want, rtol=1e-12, atol=1e-12)  # merge reused
        pa.conv1x1[1].running_var.mul_(2.0)  # any source change: refolded, remerged
        pa.conv3x3[0].weight.add_(0.25)
        got = pa(x)
    torch.testing.assert_close(got, pa(x), rtol=1e-12, atol=1e-12)
    seen = []
    pa.conv1x1.register_forward_hook(lambda *_: seen.append(1))  # a hook: the module path
    with torch.no_grad():
        torch.testing.assert_close(pa(x), got, rtol=1e-12, atol=1e-12)
    assert seen == [1]


# ----------------------------------------------------------------- catalogue-wide


def test_every_image_attention_drop_in_keeps_shape_at_odd_sizes() -> None:
    names = [n for n in blockzoo.list_blocks("attention") if blockzoo.spec(n).input == "image"]
    assert len(names) >= 20
    for n in names:
        s = blockzoo.spec(n)
        if s.example.out_shape != "same":
            continue  # heads and embeddings (csra, crossformer_cel) change the shape by design
        block = s.build_example().eval()
        # odd, non-square, and within every block's documented limits (coatnet's
        # relative-bias table covers up to 12 x 12 at its example config)
        (x,) = s.make_input(batch=1, size=(3, 11))
        with torch.no_grad():
            y = block(x)
        if s.example.out_shape == "same":
            assert y.shape == x.shape, n


# Image entries of the attention family that compute no attention weights or gates.
NO_ATTENTION_MAP = {
    "crossformer_cel": "the cross-scale embedding layer is convolutions only; CrossFormer's "
                       "attention lives in crossformer_sda / crossformer_lda",
    "patch_embed": "the ViT patch embedding is one strided convolution; no attention weights",
    "conv_position_encoding": "CoaT's position encoding is a depthwise convolution; no attention weights",
    "factorized_attention": "CoaT's factorized attention never forms query-key weights: softmax(K) is "
                            "multiplied into V first (a d x d context per head)",
}


def test_every_image_attention_block_exposes_its_maps_without_changing_output() -> None:
    """Gates/weights pass through an AttentionMap; recording them (which may switch a fused
    SDPA path to the explicit one) leaves the output unchanged."""
    names = [n for n in blockzoo.list_blocks("attention") if blockzoo.spec(n).input == "image"]
    for n in names:
        if n in NO_ATTENTION_MAP:
            continue
        s = blockzoo.spec(n)
        block = s.build_example().double().eval()
        (x,) = s.make_input(batch=2, size=(5, 7), dtype=torch.float64)
        with torch.no_grad():
            plain = block(x)
            with record_attention(block) as maps:
                recorded = block(x)
        assert maps, f"{n}: no attention map was recorded"
        torch.testing.assert_close(recorded, plain, msg=f"{n}: recording changed the output")


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: SelectiveKernel(16, kernel_sizes=(3, 4)), "kernel_sizes"),
        (lambda: SelectiveKernel(16, groups=3), "groups=3"),
        (lambda: SpatialGroupEnhance(10, groups=4), "groups=4"),
        (lambda: ContextualTransformer(12, num_heads=5), "num_heads=5"),
        (lambda: CBAM(16, kernel_size=4), "kernel_size=4"),
        (lambda: BAM(16, dilation=0), "dilation=0"),
        (lambda: SimAM(4, lambda_=0.0), "lambda_"),
        (lambda: ResidualAttentionHead(8, 3, temperatures=()), "temperatures"),
        (lambda: GlobalFilter(4, 0, 8), "height=0"),
        (lambda: DANet(8, reduction=0), "reduction=0"),
    ],
)
def test_bad_constructor_arguments_name_the_offending_value(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("name", ["se", "eca", "cbam", "danet", "coord_attention", "simam", "csra"])
def test_wrong_channels_raise_shape_error_naming_block(name: str) -> None:
    block = blockzoo.create(name, channels=8, **({"num_classes": 5} if name == "csra" else {}))
    with pytest.raises(ShapeError, match=r"C=8.*\(2, 9, 5, 5\)"):
        block(torch.randn(2, 9, 5, 5))


# Biases that a later layer cancels exactly are not parameters (their gradient would be 0):
# before a softmax over the axis they are constant on, or before a BatchNorm.
NO_OP_BIASES = [
    # PSA: the official code's 1x1 convs are all bias-free, so no bias exists to cancel
    (lambda: PolarizedSelfAttention(8), ["channel_branch.wq.bias", "spatial_branch.wq.bias"],
     ["channel_branch.wq.weight", "spatial_branch.wq.weight"]),
    (lambda: DANet(8), ["position.key.bias"], ["position.key.weight", "position.query.bias"]),
    (lambda: DoubleAttention(8), ["theta.bias"], ["theta.weight", "phi.bias", "rho.bias"]),
    (lambda: BAM(8, reduction=2),
     ["channel_branch.2.bias", "spatial_branch.0.bias", "spatial_branch.3.bias",
      "spatial_branch.6.bias", "spatial_branch.9.bias"],
     ["channel_branch.0.bias", "channel_branch.3.bias", "spatial_branch.1.bias"]),
    (lambda: BAM(8, reduction=2, norm_layer=None), [],
     ["channel_branch.2.bias", "spatial_branch.0.bias", "spatial_branch.9.bias"]),
    (lambda: CoordinateAttention(8), ["conv1.bias"], ["conv1.weight", "norm.bias", "conv_h.bias"]),
    (lambda: CoordinateAttention(8, norm_layer=None), [], ["conv1.bias"]),
    # CoT: the release's se.0 bias feeds a BN; W_delta's bias stays (GroupNorm pools 9 of them)
    (lambda: ContextualTransformer(8), ["se.0.bias"], ["se.0.weight", "se.3.bias", "embed.3.bias"]),
]


@pytest.mark.parametrize(("make", "gone", "kept"), NO_OP_BIASES)
def test_cancelled_biases_are_not_parameters(make, gone, kept) -> None:
    keys = set(make().state_dict())
    assert not keys & set(gone)
    assert set(kept) <= keys


def test_sk_default_groups_are_the_papers() -> None:
    # Li et al., Table 1: SKNet-50's SK[M=2, G=32, r=16] with L = 32
    sk = blockzoo.create("sk", channels=64)
    assert [b[0].groups for b in sk.branches] == [32, 32]
    assert sk.fuse[0].out_channels == 32  # d = max(C / r, L) = max(4, 32)
    with pytest.raises(ValueError, match="groups=32"):
        blockzoo.create("sk", channels=48)


@pytest.mark.parametrize(("kernels", "stride", "merge"), [((2, 4), 2, True), ((4, 8, 16), 4, True),
                                                         ((2, 4), 2, False)])
def test_crossformer_cel_eval_paths_equal_the_autograd_path(monkeypatch: pytest.MonkeyPatch,
                                                            kernels: tuple[int, ...], stride: int,
                                                            merge: bool) -> None:
    """CEL without autograd (the convolutions merged into one with zero-padded kernels on small
    inputs, the concatenation written channels-last for the LayerNorm) equals the autograd path
    in float64, and follows an in-place change of a weight."""
    from blockzoo.attention import crossformer

    if not merge:
        monkeypatch.setattr(crossformer, "MERGE_EXTRA_MACS", -1)
    torch.manual_seed(0)
    cel = crossformer.CrossScaleEmbedding(3, 12, kernel_sizes=kernels, stride=stride).double().eval()
    with torch.no_grad():
        for p in cel.parameters():
            p.normal_()
    merged: list[bool] = []
    run = crossformer.CrossScaleEmbedding._merged
    monkeypatch.setattr(crossformer.CrossScaleEmbedding, "_merged",
                        lambda self, *a: merged.append((y := run(self, *a)) is not None) or y)
    for _ in range(2):
        x = torch.randn(2, 3, 13, 10, dtype=torch.float64)
        with torch.no_grad():
            fast = cel(x)
        slow = cel(x)
        assert merged[-2] is merge and not merged[-1]
        assert fast.stride() == slow.stride()
        torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
        with torch.no_grad():
            cel.convs[0].weight.mul_(-2.0)  # the kept padded kernels must follow


@pytest.mark.parametrize("name", ["crossformer_sda", "crossformer_lda"])
def test_crossformer_kept_position_bias_equals_the_autograd_path(name: str) -> None:
    """SDA / LDA without autograd keep the DPB's (h, M, M) bias per group size: the output equals
    the autograd path in float64, follows an in-place change of a DPB weight, and a hook on the
    DPB's MLP still fires (it then runs per call)."""
    torch.manual_seed(0)
    block = blockzoo.spec(name).build_example().double().eval()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_()
    x = torch.randn(2, block.channels, 8, 12, dtype=torch.float64)
    for _ in range(2):
        with torch.no_grad():
            fast = block(x)
        torch.testing.assert_close(fast, block(x), rtol=1e-12, atol=1e-12)
        with torch.no_grad():
            block.dpb.mlp[-1].weight.mul_(-3.0)  # the kept bias must follow
    seen: list[int] = []
    handle = block.dpb.mlp[0].register_forward_hook(lambda *_a: seen.append(1))
    with torch.no_grad():
        hooked = block(x)
    handle.remove()
    assert seen
    with torch.no_grad():
        torch.testing.assert_close(hooked, block(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("window", "merge"), [(None, True), (None, False), (3, True)])
def test_factorized_attention_eval_path_equals_the_autograd_path(monkeypatch: pytest.MonkeyPatch,
                                                                 window: int | None, merge: bool) -> None:
    """Factorized attention without autograd (CRPE's kernels merged into one zero-padded depthwise
    convolution on small inputs, the scale on the (d, d) context, Q o conv added in place) equals
    the autograd path in float64 and follows an in-place change of a CRPE kernel."""
    from blockzoo.attention import coat

    if not merge:
        monkeypatch.setattr(coat, "MERGE_EXTRA_MACS", -1)
    torch.manual_seed(0)
    kw = {} if window is None else {"crpe_window": window}
    attn = coat.FactorizedAttention(16, num_heads=8, **kw).double().eval()
    with torch.no_grad():
        for p in attn.parameters():
            p.uniform_(-0.5, 0.5)
    used: list[bool] = []
    conv_v = coat.ConvRelPosEnc.conv_v
    monkeypatch.setattr(coat.ConvRelPosEnc, "conv_v",
                        lambda self, *a: used.append((y := conv_v(self, *a)) is not None) or y)
    for _ in range(2):
        x = torch.randn(2, 16, 6, 7, dtype=torch.float64)
        with torch.no_grad():
            fast = attn(x)
        assert used and used[-1]
        torch.testing.assert_close(fast, attn(x), rtol=1e-12, atol=1e-12)
        with torch.no_grad():
            attn.crpe.conv_list[0].weight.mul_(-3.0)  # the kept kernels must follow
