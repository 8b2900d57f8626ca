"""More attention blocks equal independent references (issue 17, the remaining blocks):
CoT, EPSANet's PSA module, ParNet's RepVGG-SSE block, ACmix and CCNet's criss-cross
attention, each against the structure of the authors' released code (named in each test),
written with plain functional ops on the block's own weights, never by calling the
block's submodules or helpers. BatchNorm statistics are randomised first (default
statistics would hide a missing or misplaced BN); float64 throughout.

The parameter counts are the released modules' (counted by hand from their constructors,
shown term by term), minus any bias our block drops because it cannot change the output.
"""

import pytest
import torch
import torch.nn.functional as F

from blockzoo.attention import (
    ACmix,
    ContextualTransformer,
    CrissCrossAttention,
    ParNetAttention,
    PyramidSplitAttention,
)

# the same float64 helpers (random weights and BN statistics, BN written out, tolerance)
from test_attention_official import TOL, _bn, _n_params, _randomise, _x

# ----------------------------------------------------------------- CoT (JDAI-CV/CoTNet)


def _cot_reference(cot: ContextualTransformer, x: torch.Tensor) -> torch.Tensor:
    """models/cotnet.py ``CotLayer.forward`` with the cupy ``aggregation_zeropad`` kernel
    written as its loop: out[c] = sum_{kh, kw} w[c mod G, kh k + kw] * v_pad[c, h + kh, w + kw]."""
    B, C, H, W = x.shape
    k, G = cot.kernel_size, cot.num_heads
    ke, em, vc, se = cot.key_embed, cot.embed, cot.conv1x1, cot.se
    # key_embed: k x k grouped conv (no bias) -> BN -> ReLU
    k1 = torch.relu(_bn(F.conv2d(x, ke[0].weight, padding=k // 2, groups=ke[0].groups), ke[1]))
    # embed on cat([x, k]) (x first): 1x1 (no bias) -> BN -> ReLU -> 1x1 (bias) -> GroupNorm
    e = torch.relu(_bn(F.conv2d(torch.cat([x, k1], 1), em[0].weight), em[1]))
    wgt = F.conv2d(e, em[3].weight, em[3].bias)  # (B, G k k, H, W)
    # GroupNorm(G groups) written out: each group = one head's k*k channels and all pixels
    grp = wgt.view(B, G, -1)
    grp = (grp - grp.mean(-1, keepdim=True)) / torch.sqrt(grp.var(-1, unbiased=False, keepdim=True)
                                                         + em[4].eps)
    wgt = grp.view(B, G * k * k, H, W) * em[4].weight.view(1, -1, 1, 1) + em[4].bias.view(1, -1, 1, 1)
    wgt = wgt.view(B, G, k * k, H, W)  # the release's view(b, 1, -1, k*k, H, W), head axis kept
    # conv1x1 (value): 1x1 no bias -> BN
    v = _bn(F.conv2d(x, vc[0].weight), vc[1])
    vp = F.pad(v, (k // 2,) * 4)
    out = torch.zeros_like(v)
    for c in range(C):
        for kh in range(k):
            for kw in range(k):
                out[:, c] += wgt[:, c % G, kh * k + kw] * vp[:, c, kh:kh + H, kw:kw + W]
    k2 = F.silu(_bn(out, cot.bn))  # self.bn -> swish
    # radix-2 split attention: gap of the sum, se MLP, view (B, C, radix), softmax over radix
    gap = (k2 + k1).mean((2, 3), keepdim=True)
    assert se[0].bias is None  # cancelled by the BN after it (the release keeps one)
    hid = torch.relu(_bn(F.conv2d(gap, se[0].weight), se[1]))
    attn = F.conv2d(hid, se[3].weight, se[3].bias).view(B, C, 2).softmax(2)
    return k2 * attn[:, :, 0, None, None] + k1 * attn[:, :, 1, None, None]


@pytest.mark.parametrize("kw", [dict(channels=16), dict(channels=24, num_heads=3, key_groups=2),
                                dict(channels=16, kernel_size=5, num_heads=4, min_hidden=4)])
def test_cot_equals_official_structure(kw: dict) -> None:
    cot = _randomise(ContextualTransformer(**kw))
    x = _x(2, kw["channels"], 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(cot(x), _cot_reference(cot, x), **TOL)


def test_cot_default_heads_share_eight_channels() -> None:
    assert [ContextualTransformer(c).num_heads for c in (8, 16, 64, 12, 20)] == [1, 2, 8, 1, 1]


def test_cot_parameter_count_and_keys_are_the_releases() -> None:
    C, k, G = 64, 3, 64 // 8
    official = (
        C * (C // 4) * k * k + 2 * C  # key_embed: conv (groups 4) + BN
        + 2 * C * (C // 2) + 2 * (C // 2)  # embed: 1x1 2C -> C/2 + BN
        + (C // 2) * G * k * k + G * k * k  # 1x1 C/2 -> G k k with bias
        + 2 * G * k * k  # GroupNorm
        + C * C + 2 * C  # conv1x1 + BN
        + 2 * C  # bn
        + C * 32 + 32 + 2 * 32  # se: 1x1 C -> max(2C/4, 32) with bias + BN
        + 32 * 2 * C + 2 * C  # 1x1 -> 2C with bias
    )
    assert official == 26744
    cot = ContextualTransformer(C)
    assert _n_params(cot) == official - 32 == 26712  # less the release's cancelled se.0.bias
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    release_keys = (
        {"key_embed.0.weight", "embed.0.weight", "embed.3.weight", "embed.3.bias",
         "embed.4.weight", "embed.4.bias", "conv1x1.0.weight", "se.0.weight", "se.0.bias",
         "se.3.weight", "se.3.bias"}
        | {f"{m}.{b}" for m in ("key_embed.1", "embed.1", "conv1x1.1", "bn", "se.1") for b in bn}
    )
    assert set(cot.state_dict()) == release_keys - {"se.0.bias"}


# ----------------------------------------------------------------- EPSA (murufeng/EPSANet)


@pytest.mark.parametrize("kw", [dict(channels=16, groups=(1, 2, 2, 4), reduction=2),
                                dict(channels=32, groups=(1, 4, 8, 8), reduction=4),
                                dict(channels=12, kernel_sizes=(3, 5, 7), groups=(1, 2, 4), reduction=2)])
def test_epsa_equals_official_structure(kw: dict) -> None:
    psa = _randomise(PyramidSplitAttention(**kw))
    C, S = kw["channels"], len(psa.convs)
    c = C // S
    x = _x(2, C, 7, 5)
    # PSAModule: conv_i reads the WHOLE input (C -> C/S, groups G_i, no bias); one
    # SEWeightModule (avgpool -> 1x1 + bias -> ReLU -> 1x1 + bias -> sigmoid) shared by
    # the scales; softmax over the scale axis; weighted features
    feats = [F.conv2d(x, conv.weight, padding=conv.kernel_size[0] // 2, groups=conv.groups)
             for conv in psa.convs]
    fc1, fc2 = psa.se[0], psa.se[2]
    se = [torch.sigmoid(F.conv2d(torch.relu(F.conv2d(f.mean((2, 3), keepdim=True), fc1.weight, fc1.bias)),
                                 fc2.weight, fc2.bias)) for f in feats]
    att = torch.stack(se, 1).softmax(1)  # (B, S, c, 1, 1)
    weighted = [att[:, i] * f for i, f in enumerate(feats)]
    # the release concatenates in reverse (out = cat(x_i, out)); ours is the paper's order
    official = torch.cat(weighted[::-1], 1)
    with torch.no_grad():
        y = psa(x)
    for i in range(S):
        j = S - 1 - i
        torch.testing.assert_close(y[:, i * c:(i + 1) * c], official[:, j * c:(j + 1) * c], **TOL)


def test_epsa_parameter_counts_are_the_releases() -> None:
    # PSAModule(64, 64): 4 convs 64 -> 16 (k 3/5/7/9, groups 1/4/8/16) + SEWeightModule(16)
    convs = 16 * 64 * 9 + 16 * 16 * 25 + 16 * 8 * 49 + 16 * 4 * 81
    se = 16 * 1 + 1 + 1 * 16 + 16  # 16 -> 16 // 16 = 1 -> 16, with biases
    assert _n_params(PyramidSplitAttention(64)) == convs + se == 27121
    # the split reading (each conv 16 -> 16) had 6817
    assert 16 * 16 * 9 + 16 * 4 * 25 + 16 * 2 * 49 + 16 * 1 * 81 + se == 6817
    assert [c.in_channels for c in PyramidSplitAttention(64).convs] == [64] * 4


# ----------------------------------------------------------------- ParNet (imankgoyal/NonDeepNetworks)


@pytest.mark.parametrize("channels", [8, 13])
def test_parnet_equals_official_structure(channels: int) -> None:
    pa = _randomise(ParNetAttention(channels))
    x = _x(2, channels, 6, 5)
    # RepVGGBlock(se_block=True), in == out, stride 1: rbr_identity = BN(x);
    # id_out = id_out * SE1(id_out) with SE1 = avgpool -> ConvSig (1x1 conv, bias=False,
    # sigmoid); out = act(rbr_dense(x) + rbr_1x1(x) + id_out), conv_bn = conv (no bias) + BN
    assert pa.excite.bias is None
    ident = _bn(x, pa.skip_norm)
    ident = ident * torch.sigmoid(F.conv2d(ident.mean((2, 3), keepdim=True), pa.excite.weight))
    dense = _bn(F.conv2d(x, pa.conv3x3[0].weight, padding=1), pa.conv3x3[1])
    one = _bn(F.conv2d(x, pa.conv1x1[0].weight), pa.conv1x1[1])
    with torch.no_grad():
        torch.testing.assert_close(pa(x), F.silu(dense + one + ident), **TOL)


def test_parnet_parameter_count_is_the_releases() -> None:
    C = 64
    # rbr_identity BN + rbr_dense (3x3 + BN) + rbr_1x1 (1x1 + BN) + SE1's bias-free 1x1
    assert _n_params(ParNetAttention(C)) == 2 * C + (9 * C * C + 2 * C) + (C * C + 2 * C) + C * C == 45440


# ----------------------------------------------------------------- ACmix (LeapLabTHU/ACmix)


def test_acmix_initial_rates_and_bias_free_fc_are_the_releases() -> None:
    m = ACmix(16, num_heads=2, kernel_att=3, kernel_conv=3)
    assert m.alpha.item() == 0.5 and m.beta.item() == 0.5  # init_rate_half
    assert m.fc.bias is None and m.dep_conv.bias is not None
    # the release at this size: q/k/v 3 (16*16 + 16) + conv_p (2*8 + 8) + fc 6*9
    # + dep_conv (16 * 9 * 9 + 16) + 2 rates = 2208; ours has the relative bias
    # table (2 heads x 9 offsets) instead of conv_p
    assert _n_params(m) == 2208 - (2 * 8 + 8) + 2 * 9 == 2202


def test_acmix_equals_official_structure_away_from_the_border() -> None:
    m = _randomise(ACmix(8, num_heads=2, kernel_att=3, kernel_conv=3))
    with torch.no_grad():
        m.rel_bias.zero_()  # the release's conv_p set to zero: no position term either side
    x = _x(2, 8, 6, 7)
    B, C, H, W = x.shape
    h, d, Ka, Kc = 2, 4, 3, 3
    q, k, v = (F.conv2d(x, c.weight, c.bias) for c in (m.q, m.k, m.v))
    # attention path: reflection pad, unfold, softmax over the window (dim 1), weighted sum
    pad = Ka // 2

    def unfold(t: torch.Tensor) -> torch.Tensor:
        return F.unfold(F.pad(t, (pad,) * 4, mode="reflect"), Ka).view(B * h, d, Ka * Ka, H, W)

    qa = q.view(B * h, d, H, W) * d**-0.5
    att = (qa.unsqueeze(2) * unfold(k.view(B * h, d, H, W))).sum(1).softmax(1)  # (B h, Ka^2, H, W)
    out_att = (att.unsqueeze(1) * unfold(v.view(B * h, d, H, W))).sum(2).view(B, C, H, W)
    # conv path: fc (no bias) on cat([q, k, v] as (B, h, d, N)) over dim 1, permute, dep_conv
    cat = torch.cat([t.view(B, h, d, H * W) for t in (q, k, v)], 1)  # (B, 3h, d, N)
    f_all = F.conv2d(cat, m.fc.weight)  # (B, Kc^2, d, N)
    f_conv = f_all.permute(0, 2, 1, 3).reshape(B, d * Kc * Kc, H, W)
    out_conv = F.conv2d(f_conv, m.dep_conv.weight, m.dep_conv.bias, padding=1, groups=d)
    official = m.alpha * out_att + m.beta * out_conv
    with torch.no_grad():
        y = m(x)
    # windows inside the image: reflection padding (release) and masking (ours) agree
    inner = (..., slice(pad, H - pad), slice(pad, W - pad))
    torch.testing.assert_close(y[inner], official[inner], **TOL)
    # at the border they differ (documented deviation)
    assert not torch.allclose(y[..., 0, :], official[..., 0, :])


# ----------------------------------------------------------------- CCNet (speedinghzl/CCNet)


@pytest.mark.parametrize("recurrence", [1, 2])
def test_criss_cross_equals_official_structure(recurrence: int) -> None:
    cca = _randomise(CrissCrossAttention(16, reduction=4, recurrence=recurrence))
    x = _x(2, 16, 5, 7)
    B, _, H, W = x.shape
    # networks/ccnet.py CrissCrossAttention: energy_H = bmm over each column + INF on the
    # diagonal, energy_W = bmm over each row, one softmax over cat(H, W), out_H + out_W,
    # gamma * out + x; RCCA applies the same module ``recurrence`` times. The key conv's
    # bias (dropped by ours) is zero here: softmax cancels it.
    key_b = torch.zeros(cca.qk_channels, dtype=x.dtype)

    def once(t: torch.Tensor) -> torch.Tensor:
        q = F.conv2d(t, cca.query.weight, cca.query.bias)
        k = F.conv2d(t, cca.key.weight, key_b)
        v = F.conv2d(t, cca.value.weight, cca.value.bias)
        q_h = q.permute(0, 3, 1, 2).reshape(B * W, -1, H).permute(0, 2, 1)  # (B W, H, C')
        q_w = q.permute(0, 2, 1, 3).reshape(B * H, -1, W).permute(0, 2, 1)  # (B H, W, C')
        k_h = k.permute(0, 3, 1, 2).reshape(B * W, -1, H)
        k_w = k.permute(0, 2, 1, 3).reshape(B * H, -1, W)
        v_h = v.permute(0, 3, 1, 2).reshape(B * W, -1, H)
        v_w = v.permute(0, 2, 1, 3).reshape(B * H, -1, W)
        inf = torch.diag(torch.full((H,), float("inf"), dtype=t.dtype)).neg().unsqueeze(0)
        e_h = (torch.bmm(q_h, k_h) + inf).view(B, W, H, H).permute(0, 2, 1, 3)  # (B, H, W, H)
        e_w = torch.bmm(q_w, k_w).view(B, H, W, W)
        a = torch.cat([e_h, e_w], 3).softmax(3)
        a_h = a[..., :H].permute(0, 2, 1, 3).reshape(B * W, H, H)
        a_w = a[..., H:].reshape(B * H, W, W)
        out_h = torch.bmm(v_h, a_h.permute(0, 2, 1)).view(B, W, -1, H).permute(0, 2, 3, 1)
        out_w = torch.bmm(v_w, a_w.permute(0, 2, 1)).view(B, H, -1, W).permute(0, 2, 1, 3)
        return cca.gamma * (out_h + out_w) + t

    ref = x
    for _ in range(recurrence):
        ref = once(ref)
    with torch.no_grad():
        torch.testing.assert_close(cca(x), ref, **TOL)
