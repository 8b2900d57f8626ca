"""TNT, PiT and ConViT (issue 23): parameter counts and outputs equal to timm's, any input
size, ``attach`` after each stage, and their distinctive blocks (gated positional
self-attention, PiT pooling, the TNT block) against references written from the papers
(float64)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import blockzoo
from blockzoo.attention.gpsa import GatedPositionalSelfAttention, relative_offsets
from blockzoo.conv.pit_pooling import PiTPooling
from blockzoo.models.tnt import TNTBlock
from blockzoo.testing import zero_grad_parameters

# ------------------------------------------------------------------------ GPSA


def _gpsa_reference(gpsa: GatedPositionalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """Eq. (5)-(6) of arXiv 2103.10697, offsets written out per query / key pixel in loops."""
    b, c, h, w = x.shape
    nh, d = gpsa.num_heads, c // gpsa.num_heads
    t = x.flatten(2).transpose(1, 2)  # (B, N, C)
    wq, wk, wv = gpsa.qkv.weight.chunk(3)
    q, k, v = (F.linear(t, m).view(b, h * w, nh, d).transpose(1, 2) for m in (wq, wk, wv))
    content = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), -1)  # (B, h, N, N)
    pos = torch.empty(nh, h * w, h * w, dtype=x.dtype)
    for i in range(h * w):
        for j in range(h * w):
            dx, dy = j % w - i % w, j // w - i // w
            r = torch.tensor([dx, dy, dx * dx + dy * dy], dtype=x.dtype)
            pos[:, i, j] = gpsa.pos_proj.weight @ r + gpsa.pos_proj.bias
    g = torch.sigmoid(gpsa.gating_param)[:, None, None]
    a = (1 - g) * content + g * pos.softmax(-1)
    out = gpsa.out_proj((a @ v).transpose(1, 2).reshape(b, h * w, c))
    return out.transpose(1, 2).reshape(b, c, h, w)


@pytest.mark.parametrize("size", [(3, 4), (5, 2), (1, 6)])
def test_gpsa_equals_its_equations(size) -> None:
    torch.manual_seed(0)
    gpsa = GatedPositionalSelfAttention(12, 3).double()
    for p in (gpsa.pos_proj.weight, gpsa.pos_proj.bias, gpsa.gating_param):
        torch.nn.init.normal_(p)
    x = torch.randn(2, 12, *size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(gpsa(x), _gpsa_reference(gpsa, x), rtol=1e-10, atol=1e-10)


def test_gpsa_gate_moves_between_content_and_position() -> None:
    torch.manual_seed(0)
    gpsa = GatedPositionalSelfAttention(8, 2).double()
    x = torch.randn(2, 8, 4, 3, dtype=torch.float64)
    t = x.flatten(2).transpose(1, 2)
    b, n, c = t.shape
    _, _, v = (z.view(b, n, 2, 4).transpose(1, 2) for z in gpsa.qkv(t).chunk(3, -1))
    with torch.no_grad():
        gpsa.gating_param.fill_(60.0)  # sigma = 1: positional attention only, the same for every sample
        a, _ = gpsa.attention(t, 4, 3)
        torch.testing.assert_close(a[0], a[1], rtol=0, atol=1e-12)
        gpsa.gating_param.fill_(-60.0)  # sigma = 0: plain multi-head self-attention
        q, k, _ = (z.view(b, n, 2, 4).transpose(1, 2) for z in gpsa.qkv(t).chunk(3, -1))
        want = torch.softmax(q @ k.transpose(-1, -2) / 2.0, -1) @ v
        got = gpsa.attend_tokens(t, 4, 3)
        torch.testing.assert_close(got, gpsa.out_proj(want.transpose(1, 2).reshape(b, n, c)), rtol=1e-10,
                                   atol=1e-10)


def test_gpsa_locality_init_centres_each_head_on_its_offset() -> None:
    gpsa = GatedPositionalSelfAttention(18, 9, locality_strength=2.0).double()
    assert torch.equal(gpsa.qkv.weight[36:], torch.eye(18, dtype=torch.float64))  # W_val = I
    r = relative_offsets(7, 7, dtype=torch.float64)  # (49, 49, 3)
    centre = 3 * 7 + 3  # query at (3, 3)
    with torch.no_grad():
        logits = gpsa.pos_proj(r[centre]).T  # (heads, keys)
    for p in range(9):
        row, col = p % 3, p // 3  # head p = row + 3 col attends around (row - 1, col - 1)
        j = int(logits[p].argmax())
        assert (j // 7 - 3, j % 7 - 3) == (row - 1, col - 1)


def test_relative_offsets_of_a_rectangular_grid() -> None:
    r = relative_offsets(2, 3)
    # query 1 is (y, x) = (0, 1); key 5 is (1, 2): dx = 1, dy = 1
    assert r[1, 5].tolist() == [1.0, 1.0, 2.0]
    assert r[5, 0].tolist() == [-2.0, -1.0, 5.0]


def test_gpsa_pos_bias_never_changes_the_output_and_is_exactly_the_zero_grad() -> None:
    torch.manual_seed(0)
    gpsa = GatedPositionalSelfAttention(8, 2).double()
    x = torch.randn(1, 8, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        y = gpsa(x)
        gpsa.pos_proj.bias.add_(5.0)
        torch.testing.assert_close(gpsa(x), y, rtol=1e-12, atol=1e-12)
    # the registry exemptions claim exactly these zero-gradient parameters
    assert zero_grad_parameters(blockzoo.spec("gated_positional_self_attention")) == ["pos_proj.bias"]
    # at the example config: one GPSA block (local_layers=1) before the plain one
    assert zero_grad_parameters(blockzoo.spec("convit_tiny")) == ["blocks.0.attn.pos_proj.bias"]


def test_convit_class_token_joins_after_the_local_layers() -> None:
    model = blockzoo.create_model("convit_tiny", num_classes=3, depth=3, local_layers=2).eval()
    kinds = [type(b).__name__ for b in model.blocks]
    assert kinds == ["GPSABlock", "GPSABlock", "TransformerEncoderBlock"]
    with torch.no_grad():
        z = model.forward_features(torch.randn(1, 3, 48, 32))
    assert z.shape == (1, 1 + 3 * 2, 192)
    with pytest.raises(ValueError, match=r"local_layers=3 must be in \[0, depth=3\)"):
        blockzoo.create_model("convit_tiny", depth=3, local_layers=3)


# ------------------------------------------------------------------------ PiT pooling


def test_pit_pooling_is_a_depthwise_strided_conv_and_a_linear_class_map() -> None:
    torch.manual_seed(0)
    pool = PiTPooling(3, 6).double()
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    cls = torch.randn(2, 1, 3, dtype=torch.float64)
    y, t = pool(x, cls)
    assert y.shape == (2, 6, 4, 3)  # ceil(H / 2), ceil(W / 2)
    # output channel c' reads input channel floor(c' / 2) only, over a 3 x 3 window of stride 2
    xp = F.pad(x, (1, 1, 1, 1))
    want = torch.empty_like(y)
    for o in range(6):
        for i in range(4):
            for j in range(3):
                win = xp[:, o // 2, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
                want[:, o, i, j] = (win * pool.conv.weight[o, 0]).sum((1, 2)) + pool.conv.bias[o]
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(t, cls @ pool.fc.weight.T + pool.fc.bias, rtol=1e-12, atol=1e-12)
    assert pool(x).shape == y.shape  # without class tokens: the map only
    assert zero_grad_parameters(blockzoo.spec("pit_pooling")) == ["fc.weight", "fc.bias"]


def test_pit_pooling_rejects_a_width_that_is_not_a_multiple() -> None:
    with pytest.raises(ValueError, match="dim_out=10 must be a multiple of dim=4"):
        PiTPooling(4, 10)


def test_pit_maps_and_smallest_input() -> None:
    model = blockzoo.create_model("pit_ti", num_classes=3).eval()
    assert model.grid == (27, 27) and tuple(model.pos_embed.shape) == (1, 64, 27, 27)
    with pytest.raises(blockzoo.ShapeError, match=r"input 15x40 is smaller than one 16x16 patch"):
        model(torch.randn(1, 3, 15, 40))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 16, 16)).shape == (1, 3)


# ------------------------------------------------------------------------ TNT


def test_tnt_inner_transformer_keeps_each_patch_to_itself() -> None:
    torch.manual_seed(0)
    block = TNTBlock(4, 8, 4, num_heads_inner=2, num_heads=2).double().eval()
    y = torch.randn(2 * 3, 4, 4, dtype=torch.float64)  # B = 2, N = 3 patches of M = 4 pixels
    z = torch.randn(2, 1 + 3, 8, dtype=torch.float64)
    y2 = y.clone()
    y2[4] += 1.0  # sample 1, patch 1
    with torch.no_grad():
        a_y, a_z = block(y, z)
        b_y, b_z = block(y2, z)
    changed = (a_y - b_y).abs().amax((1, 2)) > 0
    assert changed.tolist() == [False, False, False, False, True, False]
    assert torch.equal(a_z[0], b_z[0])  # the other sample is untouched
    # Z^n += LN(W Vec(LN(Y^n))) for the patches only; the class token gets the outer block alone
    add = block.norm2_proj(block.proj(block.norm1_proj(a_y.reshape(2, 3, 16))))
    want = block.outer(torch.cat([z[:, :1], z[:, 1:] + add], 1))
    torch.testing.assert_close(a_z, want, rtol=1e-12, atol=1e-12)


def test_tnt_pixel_embedding_works_on_each_patch_alone() -> None:
    torch.manual_seed(0)
    model = blockzoo.create_model("tnt_s", num_classes=3, depth=1).double().eval()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        y = model.pixel_embed(x, model.pixel_pos)  # (B N, 16, 24)
        first = F.conv2d(x[:, :, :16, :16], model.pixel_embed.proj.weight, model.pixel_embed.proj.bias,
                         stride=4, padding=3) + model.pixel_pos
    assert y.shape == (4, 16, 24)
    torch.testing.assert_close(y[0], first[0].flatten(1).T, rtol=1e-12, atol=1e-12)


def test_tnt_pixel_embedding_names_the_patch_multiple() -> None:
    model = blockzoo.create_model("tnt_s", num_classes=3, depth=1)
    with pytest.raises(blockzoo.ShapeError, match="PixelEmbed"):
        model.pixel_embed(torch.randn(1, 3, 24, 32), model.pixel_pos)


def test_gpsa_rejects_heads_that_do_not_divide_and_a_wrong_grid() -> None:
    with pytest.raises(ValueError, match="num_heads=5 must divide dim=12"):
        GatedPositionalSelfAttention(12, 5)
    gpsa = GatedPositionalSelfAttention(8, 2)
    with pytest.raises(blockzoo.ShapeError, match="GatedPositionalSelfAttention"):
        gpsa.attend_tokens(torch.randn(1, 7, 8), 2, 3)  # 7 tokens are not a 2 x 3 grid
