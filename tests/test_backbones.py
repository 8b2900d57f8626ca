"""Backbones (issue 23): parameter counts equal to the reference, forwards at 224 and other
sizes, ``attach`` after each stage, and the distinctive blocks' maths against
independent references written from the papers (float64)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import blockzoo
from blockzoo.attention.pvt import SpatialReductionAttention
from blockzoo.attention.swin import PatchMerging, ShiftedWindowAttention
from blockzoo.conv.convnext import ConvNeXtV2Block, GlobalResponseNorm

# Parameter counts at the default config (1000 classes) of PyTorch Image Models 1.0.31:
# sum(p.numel() for p in timm.create_model(REF).parameters()) for REF in brackets.
TIMM_PARAMS = {
    "deit_tiny": 5_717_416,  # deit_tiny_patch16_224
    "deit_tiny_distilled": 5_910_800,  # deit_tiny_distilled_patch16_224
    "swin_tiny": 28_288_354,  # swin_tiny_patch4_window7_224
    "pvt_v2_b0": 3_666_760,  # pvt_v2_b0
    "convnextv2_atto": 3_708_400,  # convnextv2_atto
    "mobilenetv3_small": 2_542_856,  # mobilenetv3_small_100
    "mobilenetv3_large": 5_483_032,  # mobilenetv3_large_100
    "cait_xxs24": 11_956_264,  # cait_xxs24_224
    "volo_d1": 26_632_040,  # volo_d1_224
    # LeViT and EfficientFormer with the distillation head, as timm's default models have it
    "mobilevit_xxs": 1_272_024,  # mobilevit_xxs
    "levit_128s": 7_777_058,  # levit_128s (LevitDistilled)
    "efficientformer_l1": 12_289_928,  # efficientformer_l1
    "swinv2_tiny": 28_347_154,  # swinv2_tiny_window8_256
    "coat_lite_tiny": 5_721_960,  # coat_lite_tiny
    "crossvit_tiny": 7_014_800,  # crossvit_tiny_240
    "tnt_s": 23_768_584,  # tnt_s_patch16_224
    "pit_ti": 4_847_272,  # pit_ti_224
    "convit_tiny": 5_710_512,  # convit_tiny
    "pcpvt_small": 24_106_216,  # twins_pcpvt_small
    "twins_svt_small": 24_060_776,  # twins_svt_small
}

# A non-square size each design takes (any size for these: they pad where they must).
OTHER_SIZE = {
    "deit_tiny": (160, 96),
    "deit_tiny_distilled": (100, 60),
    "swin_tiny": (100, 60),
    "pvt_v2_b0": (100, 60),
    "convnextv2_atto": (100, 60),
    "mobilenetv3_small": (100, 60),
    "mobilenetv3_large": (100, 60),
    "cait_xxs24": (100, 60),  # zero-padded to multiples of 16
    "volo_d1": (100, 60),
    "mobilevit_xxs": (100, 60),  # padded and masked to the patch
    "levit_128s": (100, 60),  # offsets beyond the bias table clipped to its largest
    "efficientformer_l1": (100, 60),
    "swinv2_tiny": (37, 45),  # padded to the windows
    "coat_lite_tiny": (37, 45),
    "crossvit_tiny": (37, 45),  # position embeddings resized
    "tnt_s": (33, 47),  # zero-padded to multiples of 16
    "pit_ti": (33, 47),  # any size >= 16
    "convit_tiny": (33, 47),
    "pcpvt_small": (100, 60),  # each patch embedding zero-pads to its patch
    "twins_svt_small": (100, 60),  # and each LSA to its 7 x 7 groups
}

# Where ``attach`` puts a block "after each stage": a glob over qualified names, and how
# many places it matches. ViT/DeiT has one resolution and token outputs; the one
# image-shaped (B, C, H, W) place is the patch projection.
STAGES = {
    "deit_tiny": ("patch_embed.proj", 1),
    "deit_tiny_distilled": ("patch_embed.proj", 1),
    "swin_tiny": ("layers.[0-9]", 4),
    "pvt_v2_b0": ("stages.[0-9]", 4),
    "convnextv2_atto": ("stages.[0-9]", 4),
    "mobilenetv3_small": ("blocks.[0-9]", 6),  # five bneck stages and the last 1x1 conv
    "mobilenetv3_large": ("blocks.[0-9]", 7),
    "cait_xxs24": ("patch_embed.proj", 1),  # one resolution, token outputs (like ViT)
    "volo_d1": ("stages.[0-9]", 4),
    "mobilevit_xxs": ("stages.[0-9]", 5),
    "levit_128s": ("stages.[0-9]", 3),
    "efficientformer_l1": ("stages.[0-9]", 4),
    "swinv2_tiny": ("layers.[0-9]", 4),
    "coat_lite_tiny": ("stages.[0-2]", 3),  # the last stage ends in tokens (its class token feeds the head)
    "crossvit_tiny": ("patch_embed.*.proj", 2),  # tokens after the two patch projections
    "tnt_s": ("pixel_embed.proj", 1),  # one resolution: the pixel embedding's conv
    "pit_ti": ("*.conv", 3),  # the stem's and the two pooling layers' depthwise convs
    "convit_tiny": ("patch_embed.proj", 1),
    "pcpvt_small": ("stages.[0-9]", 4),
    "twins_svt_small": ("stages.[0-9]", 4),
}
# CaiT's LayerScale starts at 1e-5: the class token would hardly see the patches at init
ATTACH_KW = {"cait_xxs24": dict(layer_scale=0.5)}


@pytest.mark.parametrize("name", sorted(TIMM_PARAMS))
def test_parameter_count_equals_the_reference(name: str) -> None:
    model = blockzoo.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == TIMM_PARAMS[name]


@pytest.mark.parametrize("name", sorted(TIMM_PARAMS))
def test_forward_at_224_and_a_non_square_size(name: str) -> None:
    torch.manual_seed(0)
    model = blockzoo.create_model(name).eval()
    with torch.no_grad():
        for size in ((224, 224), OTHER_SIZE[name]):
            out = model(torch.randn(1, 3, *size))
            assert out.shape == (1, 1000)
            assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(STAGES))
def test_attach_after_each_stage(name: str) -> None:
    torch.manual_seed(0)
    model = blockzoo.create_model(name, num_classes=5, **ATTACH_KW.get(name, {})).eval()
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        before = model(x)
    after, n = STAGES[name]
    model, where = blockzoo.attach(model, "se", after=after, example_input=x)
    assert len(where) == n
    with torch.no_grad():
        out = model(x)
    assert out.shape == before.shape == (1, 5)
    assert not torch.allclose(out, before)  # the SE gates (in (0, 1)) change the features


# ------------------------------------------------------------------------ DeiT


def test_deit_uses_the_released_layernorm_epsilon() -> None:
    model = blockzoo.create_model("deit_tiny", depth=2)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 5 and all(m.eps == 1e-6 for m in norms)


def test_deit_distilled_averages_class_and_distillation_heads() -> None:
    torch.manual_seed(0)
    model = blockzoo.create_model("deit_tiny_distilled", num_classes=7, depth=2).double().eval()
    x = torch.randn(2, 3, 32, 48, dtype=torch.float64)
    with torch.no_grad():
        z = model.forward_features(x)  # (B, 2 + N, D)
        assert z.shape == (2, 2 + 2 * 3, 192)
        want = (model.head(model.norm(z[:, 0])) + model.head_dist(model.norm(z[:, 1]))) / 2
        torch.testing.assert_close(model(x), want, rtol=1e-12, atol=1e-12)
        # the distillation head is not a copy of the class head
        assert not torch.allclose(model.head(model.norm(z[:, 0])), model.head_dist(model.norm(z[:, 1])))


def test_deit_distilled_needs_the_class_token() -> None:
    with pytest.raises(ValueError, match="distilled=True needs pool='cls'"):
        blockzoo.create_model("deit_tiny_distilled", pool="mean")


# ------------------------------------------------------------------------ Swin


def _swin_reference(attn: ShiftedWindowAttention, x: torch.Tensor) -> torch.Tensor:
    """Eq. (4) over all H W tokens at once, written in image coordinates (no roll, no windows).

    Token i may attend token j iff both lie in the same shifted window: with window M and
    shift s along an axis, the windows of the shifted partition are the blocks
    floor((y - s) / M) of the image (the cyclic roll only batches them; Sec. 3.2). An axis
    no longer than M is one window, unshifted. Keys are the real pixels only.
    """
    b, c, h, w = x.shape
    (mh, mw), (sh, sw) = attn.window_size, attn.shift_size
    if h <= mh:
        mh_eff, sh = h, 0
    else:
        mh_eff = mh
    if w <= mw:
        mw_eff, sw = w, 0
    else:
        mw_eff = mw
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    label = torch.div(ys - sh, mh_eff, rounding_mode="floor") * 10_000 + torch.div(xs - sw, mw_eff,
                                                                                  rounding_mode="floor")
    allowed = label[:, None] == label[None, :]
    dy = ys[:, None] - ys[None, :] + mh - 1
    dx = xs[:, None] - xs[None, :] + mw - 1
    nh, d = attn.num_heads, attn.head_dim
    bias = torch.full((nh, h * w, h * w), -math.inf, dtype=x.dtype)
    table = attn.relative_position_bias_table  # ((2M_h - 1)(2M_w - 1), h)
    rel = table[(dy * (2 * mw - 1) + dx).clamp(0, table.shape[0] - 1)].permute(2, 0, 1)  # (h, HW, HW)
    bias = torch.where(allowed, rel, bias)
    t = x.flatten(2).transpose(1, 2)  # (B, HW, C)
    q, k, v = attn.qkv(t).view(b, h * w, 3, nh, d).permute(2, 0, 3, 1, 4)
    a = (q @ k.transpose(-1, -2) / math.sqrt(d) + bias).softmax(-1)
    out = (a @ v).transpose(1, 2).reshape(b, h * w, nh * d)
    return attn.proj(out).transpose(1, 2).reshape(b, c, h, w)


@pytest.mark.parametrize(("size", "window", "shift"), [
    ((8, 8), 4, 0),  # W-MSA
    ((8, 8), 4, 2),  # SW-MSA, no padding
    ((7, 10), 4, 2),  # padded to 8 x 12, padded keys masked
    ((12, 6), 3, 1),
    ((3, 9), 4, 2),  # H <= M: one unshifted window along H
    ((6, 5), (3, 2), (1, 1)),  # rectangular window
])
def test_shifted_window_attention_equals_masked_full_attention(size, window, shift) -> None:
    torch.manual_seed(0)
    attn = ShiftedWindowAttention(12, 3, window_size=window, shift_size=shift).double().eval()
    torch.nn.init.normal_(attn.relative_position_bias_table, std=1.0)
    x = torch.randn(2, 12, *size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), _swin_reference(attn, x), rtol=1e-10, atol=1e-10)


def test_shifted_window_attention_rejects_a_shift_as_large_as_the_window() -> None:
    with pytest.raises(ValueError, match="shift_size=4 must be in"):
        ShiftedWindowAttention(8, 2, window_size=4, shift_size=4)


def test_patch_merging_concatenates_in_the_papers_order() -> None:
    torch.manual_seed(0)
    merge = PatchMerging(3, 5).double()
    x = torch.randn(2, 6, 4, 3, dtype=torch.float64)  # (B, H, W, C)
    z = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
    torch.testing.assert_close(merge(x), merge.reduction(F.layer_norm(z, (12,), merge.norm.weight,
                                                                      merge.norm.bias)))
    assert merge(torch.randn(1, 5, 3, 3, dtype=torch.float64)).shape == (1, 3, 2, 5)  # odd: padded


# ------------------------------------------------------------------------ PVT v2


@pytest.mark.parametrize(("size", "ratio"), [((8, 8), 4), ((9, 7), 2), ((5, 6), 1)])
def test_spatial_reduction_attention_equals_its_equations(size, ratio) -> None:
    torch.manual_seed(0)
    sra = SpatialReductionAttention(12, 3, sr_ratio=ratio).double().eval()
    x = torch.randn(2, 12, *size, dtype=torch.float64)
    b, c, h, w = x.shape
    t = x.flatten(2).transpose(1, 2)  # (B, N, C)
    wq, wk, wv = sra.attn.qkv.weight.chunk(3)
    bq, bk, bv = sra.attn.qkv.bias.chunk(3)
    if ratio > 1:
        # SR(x) = LN(Conv_{R x R, stride R}(x)): keys from floor(H / R) x floor(W / R) cells
        r = F.conv2d(x, sra.sr.weight, sra.sr.bias, stride=ratio).flatten(2).transpose(1, 2)
        assert r.shape[1] == (h // ratio) * (w // ratio)
        r = F.layer_norm(r, (c,), sra.norm.weight, sra.norm.bias)
    else:
        r = t

    def heads(z: torch.Tensor) -> torch.Tensor:
        return z.view(b, z.shape[1], 3, 4).transpose(1, 2)  # (B, h, L, d)

    q, k, v = heads(t @ wq.T + bq), heads(r @ wk.T + bk), heads(r @ wv.T + bv)
    a = (q @ k.transpose(-1, -2) / 2.0).softmax(-1)  # 1 / sqrt(d), d = 4
    out = sra.attn.out_proj((a @ v).transpose(1, 2).reshape(b, h * w, c))
    with torch.no_grad():
        torch.testing.assert_close(sra(x), out.transpose(1, 2).reshape(b, c, h, w), rtol=1e-10, atol=1e-10)


def test_spatial_reduction_attention_rejects_a_map_smaller_than_the_ratio() -> None:
    sra = SpatialReductionAttention(8, 2, sr_ratio=4)
    with pytest.raises(blockzoo.ShapeError, match="SpatialReductionAttention: the map is 3x9"):
        sra(torch.randn(1, 8, 3, 9))


def test_pvt_v2_names_its_smallest_input() -> None:
    model = blockzoo.create_model("pvt_v2_b0", num_classes=3).eval()
    with pytest.raises(blockzoo.ShapeError, match=r"stage 1 a 7x10 map.*expected H, W >= 29"):
        model(torch.randn(1, 3, 28, 40))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 29, 29)).shape == (1, 3)


# ------------------------------------------------------------------------ ConvNeXt V2


def _grn_channels_last(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Eq. (1)-(3) of arXiv 2301.00808 on (B, H, W, C), as the paper's Algorithm 1 writes it."""
    gx = torch.sqrt((x * x).sum(dim=(1, 2), keepdim=True))  # (B, 1, 1, C)
    nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
    return gamma * (x * nx) + beta + x


def test_grn_equals_the_papers_algorithm_and_starts_as_identity() -> None:
    torch.manual_seed(0)
    grn = GlobalResponseNorm(6).double()
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    torch.testing.assert_close(grn(x), x, rtol=0, atol=0)  # gamma = beta = 0
    torch.nn.init.normal_(grn.weight)
    torch.nn.init.normal_(grn.bias)
    want = _grn_channels_last(x.permute(0, 2, 3, 1), grn.weight, grn.bias).permute(0, 3, 1, 2)
    torch.testing.assert_close(grn(x), want, rtol=1e-12, atol=1e-12)


def test_convnextv2_block_equals_the_channels_last_formulation() -> None:
    torch.manual_seed(0)
    block = ConvNeXtV2Block(8).double()
    torch.nn.init.normal_(block.mlp.grn.weight)
    torch.nn.init.normal_(block.mlp.grn.bias)
    x = torch.randn(2, 8, 9, 6, dtype=torch.float64)
    h = F.conv2d(x, block.conv_dw.weight, block.conv_dw.bias, padding=3, groups=8).permute(0, 2, 3, 1)
    h = F.layer_norm(h, (8,), block.norm.weight, block.norm.bias, eps=1e-6)
    h = F.gelu(F.linear(h, block.mlp.fc1.weight[:, :, 0, 0], block.mlp.fc1.bias))
    h = _grn_channels_last(h, block.mlp.grn.weight, block.mlp.grn.bias)
    h = F.linear(h, block.mlp.fc2.weight[:, :, 0, 0], block.mlp.fc2.bias).permute(0, 3, 1, 2)
    torch.testing.assert_close(block(x), x + h, rtol=1e-10, atol=1e-10)


def test_convnextv2_names_its_smallest_input() -> None:
    model = blockzoo.create_model("convnextv2_atto", num_classes=3).eval()
    with pytest.raises(blockzoo.ShapeError, match=r"expected H, W >= 32.*got 31x64"):
        model(torch.randn(1, 3, 31, 64))


# ------------------------------------------------------------------------ MobileNetV3


def test_mobilenetv3_small_follows_table_2() -> None:
    from blockzoo.conv.mbconv import MBConv

    model = blockzoo.create_model("mobilenetv3_small")
    bnecks = [m for m in model.modules() if isinstance(m, MBConv)]
    # (E, O, stride, SE bottleneck or None, activation) per row of Table 2
    got = [(b.dw.conv.in_channels, b.dim_out, b.stride,
            b.se.hidden if isinstance(b.se, blockzoo.attention.SqueezeExcite) else None,
            type(b.dw.act).__name__) for b in bnecks]
    assert got == [
        (16, 16, 2, 8, "ReLU"), (72, 24, 2, None, "ReLU"), (88, 24, 1, None, "ReLU"),
        (96, 40, 2, 24, "Hardswish"), (240, 40, 1, 64, "Hardswish"), (240, 40, 1, 64, "Hardswish"),
        (120, 48, 1, 32, "Hardswish"), (144, 48, 1, 40, "Hardswish"), (288, 96, 2, 72, "Hardswish"),
        (576, 96, 1, 144, "Hardswish"), (576, 96, 1, 144, "Hardswish"),
    ]
    se = bnecks[0].se
    assert isinstance(se.act, torch.nn.ReLU) and isinstance(se.gate, torch.nn.Hardsigmoid)
    residual = [False, False, True, False, True, True, False, True, False, True, True]  # s = 1 and C = O
    assert [b.residual for b in bnecks] == residual


def test_make_divisible_rounds_to_the_nearest_multiple_but_never_10_percent_down() -> None:
    from blockzoo.models.mobilenetv3 import make_divisible

    assert [make_divisible(v) for v in (4, 17, 22, 30, 36, 60, 144)] == [8, 16, 24, 32, 40, 64, 144]
    assert make_divisible(18) == 24  # 16 would be more than 10% below 18
    assert make_divisible(9.5) == 16  # 8 would be 16% below 9.5


def test_mbconv_se_hidden_needs_an_se() -> None:
    from blockzoo.conv.mbconv import MBConv

    with pytest.raises(ValueError, match="se_hidden=8 needs se_ratio > 0"):
        MBConv(16, se_ratio=0.0, se_hidden=8)


def test_mobilenetv3_grad_exemption_is_exactly_the_projection_bn_biases() -> None:
    from blockzoo.testing import zero_grad_parameters

    # register(exempt={"grad": ...}) claims these, and only these, have a zero training gradient
    stages = (1, 2, 3, 2, 3)  # bnecks per stage of Table 2
    want = [f"blocks.{i}.{j}.project.bn.bias" for i, n in enumerate(stages) for j in range(n)]
    assert zero_grad_parameters(blockzoo.spec("mobilenetv3_small")) == want
