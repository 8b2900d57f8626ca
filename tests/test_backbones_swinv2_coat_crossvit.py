"""Backbones of issue 23: Swin V2-T, CoaT-Lite Tiny, CrossViT-Ti.

Parameter counts equal to timm's, timm-layout weights giving timm's outputs (fixtures of
scripts/make_weight_fixtures.py), other input sizes, ``attach`` after each stage, and the
distinctive blocks' maths against references written from the papers' equations (float64).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import blockzoo
from blockzoo.attention.coat import ConvPosEnc, FactorizedAttention
from blockzoo.attention.crossvit import ClassCrossAttention
from blockzoo.attention.swin import PatchMerging, ShiftedWindowAttention
from blockzoo.attention.swinv2 import CosineWindowAttention, log_spaced_coords
from blockzoo.weights import layout_for, map_state_dict

# ------------------------------------------------------------------------ Swin V2


def _cpb_reference(attn: CosineWindowAttention, mh: int, mw: int) -> torch.Tensor:
    """(h, N, N) bias 16 sigmoid(G(log-spaced(dy, dx))), one token pair at a time (Eq. 4)."""
    n = mh * mw
    out = torch.zeros(attn.num_heads, n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            t = torch.tensor([(i // mw - j // mw) / max(mh - 1, 1), (i % mw - j % mw) / max(mw - 1, 1)],
                             dtype=torch.float64) * 8
            t = torch.sign(t) * torch.log2(1 + t.abs()) / 3  # log2(8) = 3
            out[:, i, j] = 16 * torch.sigmoid(attn.cpb_mlp(t))
    return out


def _swinv2_reference(attn: CosineWindowAttention, x: torch.Tensor) -> torch.Tensor:
    """Eq. (2) over all H W tokens at once in image coordinates: a key is allowed iff it lies in the
    query's (shifted) window, the window being the blocks floor((y - s) / M) of the image."""
    b, c, h, w = x.shape
    (mh, mw), (sh, sw) = attn.window_size, attn.shift_size
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    label = (torch.div(ys - sh, mh, rounding_mode="floor") * 1000
             + torch.div(xs - sw, mw, rounding_mode="floor"))
    allowed = label[:, None] == label[None, :]
    table = _cpb_reference(attn, mh, mw)  # (h, N, N) of one window
    pos = torch.zeros(attn.num_heads, h * w, h * w, dtype=torch.float64)
    for i in range(h * w):
        for j in range(h * w):
            if allowed[i, j]:
                qi = (ys[i] - sh) % mh * mw + (xs[i] - sw) % mw  # place inside the window
                kj = (ys[j] - sh) % mh * mw + (xs[j] - sw) % mw
                pos[:, i, j] = table[:, qi, kj]
    t = x.flatten(2).transpose(1, 2)  # (B, HW, C)
    wq, wk, wv = attn.qkv.weight.chunk(3)
    nh, d = attn.num_heads, attn.head_dim

    def heads(z: torch.Tensor) -> torch.Tensor:
        return z.view(b, h * w, nh, d).transpose(1, 2)

    q, k, v = heads(t @ wq.T + attn.q_bias), heads(t @ wk.T), heads(t @ wv.T + attn.v_bias)
    cos = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-1, -2)  # (B, h, HW, HW)
    tau_inv = attn.logit_scale.clamp(max=math.log(100)).exp()  # (h, 1, 1)
    logits = torch.where(allowed, cos * tau_inv + pos, torch.full_like(cos, -math.inf))
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, h * w, c)
    return attn.proj(out).transpose(1, 2).reshape(b, c, h, w)


@pytest.mark.parametrize(("size", "window", "shift"), [((8, 8), 4, 0), ((8, 8), 4, 2), ((6, 9), 3, 1)])
def test_cosine_window_attention_equals_its_equations(size, window, shift) -> None:
    torch.manual_seed(0)
    attn = CosineWindowAttention(8, 2, window_size=window, shift_size=shift, cpb_hidden=16).double().eval()
    for p in (attn.q_bias, attn.v_bias, *attn.cpb_mlp.parameters()):
        torch.nn.init.normal_(p)
    with torch.no_grad():
        attn.logit_scale.copy_(torch.tensor([2.0, 5.0]).log().view(2, 1, 1))
    x = torch.randn(2, 8, *size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), _swinv2_reference(attn, x), rtol=1e-10, atol=1e-10)


def test_cosine_attention_temperature_is_clamped_at_100() -> None:
    attn = CosineWindowAttention(4, 1, window_size=2, cpb_hidden=4).double().eval()
    x = torch.randn(1, 4, 2, 2, dtype=torch.float64)
    with torch.no_grad():
        attn.logit_scale.fill_(math.log(100))
        a = attn(x)
        attn.logit_scale.fill_(math.log(1e4))
        torch.testing.assert_close(attn(x), a, rtol=0, atol=0)


def test_log_spaced_coords_follow_eq_4() -> None:
    c = log_spaced_coords(8, 8, (8, 8)).view(15, 15, 2)
    # offset 7 of an 8-window is 8 after scaling: log2(9) / log2(8); offset 0 stays 0
    assert c[14, 7, 0].item() == pytest.approx(math.log2(9) / 3)
    assert c[0, 7, 0].item() == pytest.approx(-math.log2(9) / 3)
    assert c[7, 7].abs().max().item() == 0
    # a smaller window normalised by the pre-training window keeps the same per-offset values
    small = log_spaced_coords(4, 4, (8, 8)).view(7, 7, 2)
    torch.testing.assert_close(small, c[4:11, 4:11])


def test_swinv2_block_is_res_post_norm() -> None:
    from blockzoo.models.swinv2 import SwinV2Block

    torch.manual_seed(0)
    block = SwinV2Block(8, 2, window_size=2, shift_size=1).double().eval()
    for norm in (block.norm1, block.norm2):
        torch.nn.init.normal_(norm.weight)
        torch.nn.init.normal_(norm.bias)
    z = torch.randn(2, 4, 6, 8, dtype=torch.float64)
    with torch.no_grad():
        h = z + F.layer_norm(block.attn.attend_grid(z), (8,), block.norm1.weight, block.norm1.bias)
        want = h + F.layer_norm(block.mlp(h), (8,), block.norm2.weight, block.norm2.bias)
        torch.testing.assert_close(block(z), want, rtol=1e-12, atol=1e-12)


def test_patch_merging_norm_after_reduces_first() -> None:
    torch.manual_seed(0)
    merge = PatchMerging(3, 5, norm_after=True).double()
    assert merge.norm.normalized_shape == (5,)
    x = torch.randn(2, 4, 6, 3, dtype=torch.float64)
    z = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
    want = F.layer_norm(merge.reduction(z), (5,), merge.norm.weight, merge.norm.bias)
    torch.testing.assert_close(merge(x), want)


def test_swin_v1_window_attention_is_unchanged_by_the_shared_mask() -> None:
    # the mask helper Swin V1 now shares: -inf between sub-windows and on padded keys
    attn = ShiftedWindowAttention(4, 1, window_size=2, shift_size=1)
    mask = attn._mask(3, 3, 4, 4, attn._plan(3, 3), "cpu", torch.float32)
    assert mask.shape == (4, 4, 4)
    assert set(mask.unique().tolist()) == {0.0, -math.inf}


# ------------------------------------------------------------------------ CoaT


def _factor_reference(attn: FactorizedAttention, x: torch.Tensor) -> torch.Tensor:
    """Eq. (5)-(8): per head (Q / sqrt(d)) (softmax_N(K)^T V) + Q o DWConv(V), heads split over kernels."""
    b, c, h, w = x.shape
    nh, d = attn.num_heads, attn.head_dim
    t = x.flatten(2).transpose(1, 2)
    q, k, v = (t @ attn.qkv.weight.T + attn.qkv.bias).view(b, h * w, 3, nh, d).permute(2, 0, 3, 1, 4)
    heads = []
    for i in range(nh):
        factor = (q[:, i] / math.sqrt(d)) @ (k[:, i].softmax(dim=1).transpose(1, 2) @ v[:, i])  # (B, N, d)
        # head i's depthwise conv: find its kernel among the CRPE's convs (heads in order)
        start = 0
        for conv in attn.crpe.conv_list:
            if i * d < start + conv.in_channels:
                off = i * d - start
                wgt, bias = conv.weight[off:off + d], conv.bias[off:off + d]
                break
            start += conv.in_channels
        vi = v[:, i].transpose(1, 2).reshape(b, d, h, w)
        conv_v = F.conv2d(vi, wgt, bias, padding=wgt.shape[-1] // 2, groups=d).flatten(2).transpose(1, 2)
        heads.append(factor + q[:, i] * conv_v)
    out = torch.cat(heads, -1) @ attn.proj.weight.T + attn.proj.bias
    return out.transpose(1, 2).reshape(b, c, h, w)


def test_factorized_attention_equals_its_equations() -> None:
    torch.manual_seed(0)
    attn = FactorizedAttention(16, 8).double().eval()  # heads: 2 with 3x3, 3 with 5x5, 3 with 7x7
    assert [c.kernel_size[0] for c in attn.crpe.conv_list] == [3, 5, 7]
    x = torch.randn(2, 16, 7, 5, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), _factor_reference(attn, x), rtol=1e-10, atol=1e-10)


def test_factorized_attention_leaves_class_tokens_without_position_term() -> None:
    torch.manual_seed(0)
    attn = FactorizedAttention(8, 2, crpe_window=3).double().eval()
    x = torch.randn(1, 1 + 12, 8, dtype=torch.float64)
    with torch.no_grad():
        with_pos = attn.attend_tokens(x, (3, 4), prefix=1)
        attn_no = FactorizedAttention(8, 2, crpe_window=None).double().eval()
        attn_no.load_state_dict({k: v for k, v in attn.state_dict().items() if not k.startswith("crpe")})
        without = attn_no.attend_tokens(x, (3, 4), prefix=1)
    torch.testing.assert_close(with_pos[:, 0], without[:, 0], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(with_pos[:, 1:], without[:, 1:])


def test_factorized_attention_rejects_head_splits_that_miss_heads() -> None:
    with pytest.raises(ValueError, match=r"head counts sum to num_heads=8"):
        FactorizedAttention(16, 8, crpe_window={3: 2, 5: 2})


def test_conv_position_encoding_is_a_residual_depthwise_conv() -> None:
    torch.manual_seed(0)
    cpe = ConvPosEnc(6).double()
    x = torch.randn(2, 6, 5, 4, dtype=torch.float64)
    want = x + F.conv2d(x, cpe.proj.weight, cpe.proj.bias, padding=1, groups=6)
    torch.testing.assert_close(cpe(x), want)
    tokens = torch.cat([torch.randn(2, 1, 6, dtype=torch.float64), x.flatten(2).transpose(1, 2)], 1)
    out = cpe.forward_tokens(tokens, (5, 4), prefix=1)
    torch.testing.assert_close(out[:, 0], tokens[:, 0])
    torch.testing.assert_close(out[:, 1:], want.flatten(2).transpose(1, 2))


def test_coat_layout_keeps_the_copy_timm_loads_last() -> None:
    # timm's state dict lists a stage's shared CPE under cpe1 and under every block;
    # torch's load_state_dict writes the last block's copy last
    layout = layout_for("coat_lite_tiny")
    t = {"cpe1.proj.weight": torch.zeros(1), "serial_blocks1.0.cpe.proj.weight": torch.ones(1),
         "serial_blocks1.1.cpe.proj.weight": torch.full((1,), 2.0),
         "serial_blocks1.1.factoratt_crpe.crpe.conv_list.0.bias": torch.full((1,), 3.0),
         "crpe1.conv_list.0.bias": torch.zeros(1), "norm4.weight": torch.ones(1)}
    mapped = map_state_dict(layout, t)
    assert not mapped.unknown
    assert sorted(mapped.tensors) == ["norm.weight", "stages.0.cpe.proj.weight",
                                      "stages.0.crpe.conv_list.0.bias"]
    assert mapped.tensors["stages.0.cpe.proj.weight"].item() == 2.0
    assert mapped.tensors["stages.0.crpe.conv_list.0.bias"].item() == 3.0


# ------------------------------------------------------------------------ CrossViT


def test_class_cross_attention_equals_its_equations() -> None:
    torch.manual_seed(0)
    ca = ClassCrossAttention(8, 2).double().eval()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    mha = ca.attn
    z = F.layer_norm(x, (8,), ca.norm1.weight, ca.norm1.bias, eps=1e-6)

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(3, t.shape[1], 2, 4).transpose(1, 2)

    q = heads(z[:, :1] @ mha.q_proj.weight.T + mha.q_proj.bias)  # one query: the class token
    k = heads(z @ mha.k_proj.weight.T + mha.k_proj.bias)
    v = heads(z @ mha.v_proj.weight.T + mha.v_proj.bias)
    a = (q @ k.transpose(-1, -2) / 2.0).softmax(-1)  # sqrt(d) = 2
    y = x[:, :1] + ((a @ v).transpose(1, 2).reshape(3, 1, 8) @ mha.out_proj.weight.T + mha.out_proj.bias)
    with torch.no_grad():
        out = ca(x)
    torch.testing.assert_close(out[:, :1], y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[:, 1:], x[:, 1:], rtol=0, atol=0)


def test_class_cross_attention_key_bias_is_the_only_zero_gradient() -> None:
    from blockzoo.testing import zero_grad_parameters

    # register(exempt={"grad": ...}) claims exactly this
    assert zero_grad_parameters(blockzoo.spec("class_cross_attention")) == ["attn.k_proj.bias"]


def test_crossvit_branches_see_240_and_224() -> None:
    model = blockzoo.create_model("crossvit_tiny")
    assert model._scaled(240, 240, 0) == (240, 240) and model._scaled(240, 240, 1) == (224, 224)
    assert [tuple(p.shape) for p in model.pos_embeds] == [(1, 401, 96), (1, 197, 192)]


def test_crossvit_averages_the_branch_heads() -> None:
    torch.manual_seed(0)
    model = blockzoo.create_model("crossvit_tiny", num_classes=4, depths=((1, 1),)).double().eval()
    x = torch.randn(2, 3, 48, 48, dtype=torch.float64)
    with torch.no_grad():
        xs = model.forward_features(x)
        want = (model.head[0](xs[0][:, 0]) + model.head[1](xs[1][:, 0])) / 2
        torch.testing.assert_close(model(x), want, rtol=1e-12, atol=1e-12)
