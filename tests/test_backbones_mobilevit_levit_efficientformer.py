"""Backbones of issue 23: MobileViT-XXS, LeViT-128S, EfficientFormer-L1.

Parameter counts equal to the reference, forwards at 224 and a non-square size, ``attach``
after each stage, timm-layout loading beyond the fixtures (tests/test_weights.py proves equal
outputs), and the distinctive blocks (LeViT attention with attention bias and its shrink form,
EfficientFormer's Meta4D) against references written here from the papers' equations (float64).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import blockzoo
from blockzoo.attention.levit import LeViTAttention
from blockzoo.attention.mobilevit import MobileViTBlock
from blockzoo.conv.efficientformer import EfficientFormerMeta4D
from blockzoo.weights import synthetic_state_dict

FIXTURES = Path(__file__).parent / "fixtures" / "weights"


@pytest.mark.parametrize("name", ["levit_128s", "efficientformer_l1"])
def test_distilled_models_average_their_two_heads(name: str) -> None:
    torch.manual_seed(0)
    model = blockzoo.create_model(name, num_classes=7).double().eval()
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        z = model.forward_features(x).mean((2, 3))
        a, b = model.head(z), model.head_dist(z)
        assert not torch.allclose(a, b)
        torch.testing.assert_close(model(x), (a + b) / 2, rtol=1e-12, atol=1e-12)
    # without the distillation head, one head fewer
    plain = blockzoo.create_model(name, num_classes=7, distilled=False)
    assert plain.head_dist is None
    count = sum(p.numel() for p in plain.parameters())
    dist = sum(p.numel() for p in model.head_dist.parameters())
    assert count == sum(p.numel() for p in model.parameters()) - dist


@pytest.mark.parametrize("timm_name", ["levit_128s", "efficientformer_l1"])
def test_other_num_classes_leaves_both_heads_fresh(timm_name: str, tmp_path: Path, caplog) -> None:
    fx = json.loads((FIXTURES / f"{timm_name}.json").read_text())
    tensors = synthetic_state_dict(fx["keys"])
    path = tmp_path / "w.pth"
    torch.save(tensors, path)
    with caplog.at_level(logging.WARNING, logger="blockzoo.weights"):
        model = blockzoo.create_model(fx["model"], num_classes=10, weights=path)
    assert "head_dist" in caplog.text and "left fresh" in caplog.text
    head = model.head.linear if timm_name == "levit_128s" else model.head
    assert head.weight.shape[0] == 10
    # the rest is the file's
    if timm_name == "levit_128s":
        key, got = "stages.2.blocks.3.attn.attention_biases", model.stages[2].blocks[3].attn
    else:  # timm's Meta3D block is index 4 (after its Flat), ours 3
        key, got = "stages.3.blocks.4.token_mixer.attention_biases", model.stages[3].blocks[3].token_mixer
    assert torch.equal(got.attention_biases.detach(), tensors[key])


# ------------------------------------------------------------------------ LeViT attention


def _levit_reference(attn: LeViTAttention, x: torch.Tensor) -> torch.Tensor:
    """Sec. 4.2-4.3 position by position: A = q.k / sqrt(d) + B[h, min(|dy|, R-1), min(|dx|, R-1)]."""
    b, _, height, width = x.shape
    s, r, nh, d, e = attn.stride, attn.resolution, attn.num_heads, attn.key_dim, attn.val_dim
    table = attn.attention_biases.view(nh, r, r)
    t = x.flatten(2).transpose(1, 2)  # (B, N, C)
    qpos = [(y, xx) for y in range(0, height, s) for xx in range(0, width, s)]
    kpos = [(y, xx) for y in range(height) for xx in range(width)]
    if s == 1:
        qkv = attn.qkv(t).view(b, height * width, nh, 2 * d + e)
        q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
    else:
        kv = attn.kv(t).view(b, height * width, nh, d + e)
        k, v = kv[..., :d], kv[..., d:]
        sub = torch.stack([x[:, :, y, xx] for y, xx in qpos], 1)  # (B, N_q, C)
        q = attn.q(sub).view(b, len(qpos), nh, d)
    iy = torch.tensor([[min(abs(qy - ky), r - 1) for ky, kx in kpos] for qy, qx in qpos])  # (N_q, N)
    ix = torch.tensor([[min(abs(qx - kx), r - 1) for ky, kx in kpos] for qy, qx in qpos])
    bias = table[:, iy, ix]  # (h, N_q, N): B[h, min(|dy|, R-1), min(|dx|, R-1)]
    logits = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d) + bias
    y = torch.einsum("bhqk,bkhe->bqhe", logits.softmax(-1), v).reshape(b, len(qpos), nh * e)
    out = attn.proj(attn.act(y))
    hq, wq = -(-height // s), -(-width // s)
    return out.transpose(1, 2).reshape(b, attn.dim_out, hq, wq)


@pytest.mark.parametrize("stride,size", [(1, (4, 4)), (1, (6, 3)), (2, (5, 7)), (2, (8, 8))])
def test_levit_attention_matches_the_paper_equation(stride: int, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    attn = LeViTAttention(8, 12 if stride == 2 else None, key_dim=3, num_heads=2, attn_ratio=2.0,
                          stride=stride, resolution=5).double()
    with torch.no_grad():
        attn.attention_biases.normal_()  # non-zero biases (they start at 0)
        for m in attn.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()
    attn.eval()
    x = torch.randn(2, 8, *size, dtype=torch.float64)
    with torch.no_grad():
        got = attn(x)
        assert got.shape == (2, attn.dim_out, -(-size[0] // stride), -(-size[1] // stride))
        torch.testing.assert_close(got, _levit_reference(attn, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("stride,size,norm", [(1, (6, 3), True), (2, (5, 7), True), (1, (4, 4), False)])
def test_levit_written_out_attention_equals_the_reference_with_gradients(stride, size, norm) -> None:
    # the explicit products (q scaled, the bias added in place) against the position-by-position
    # reference: outputs and gradients to 1e-12 in float64, in training (BN batch statistics)
    torch.manual_seed(0)
    attn = LeViTAttention(8, 12 if stride == 2 else None, key_dim=3, num_heads=2, attn_ratio=2.0,
                          stride=stride, resolution=5, norm=norm).double()
    with torch.no_grad():
        attn.attention_biases.normal_()
    x = torch.randn(2, 8, *size, dtype=torch.float64, requires_grad=True)
    got, want = attn(x), _levit_reference(attn, x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(got)
    params = [x, *attn.parameters()]
    for a, b in zip(torch.autograd.grad(got, params, g), torch.autograd.grad(want, params, g), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_levit_attention_bias_moves_the_output() -> None:
    torch.manual_seed(0)
    attn = LeViTAttention(8, key_dim=4, num_heads=2, resolution=4).eval()
    x = torch.randn(1, 8, 4, 4)
    with torch.no_grad():
        before = attn(x)
        attn.attention_biases[1, 5] += 3.0  # one head, offset (1, 1)
        after = attn(x)
    assert not torch.allclose(before, after)


def test_levit_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="key_dim"):
        LeViTAttention(8, key_dim=0)
    with pytest.raises(blockzoo.ShapeError):
        LeViTAttention(8)(torch.randn(1, 6, 4, 4))


# ------------------------------------------------------------------------ EfficientFormer Meta4D


def test_meta4d_matches_the_paper_equation() -> None:
    torch.manual_seed(0)
    blk = EfficientFormerMeta4D(6, mlp_ratio=2.0, layer_scale=0.5).double()
    with torch.no_grad():
        blk.scale1.uniform_(0.2, 1.0)
        blk.scale2.uniform_(0.2, 1.0)
        for m in blk.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    blk.eval()
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    # Eq. (3): the 3 x 3 mean over the pixels inside the map, minus the pixel
    pooled = torch.empty_like(x)
    for i in range(5):
        for j in range(7):
            pooled[:, :, i, j] = x[:, :, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2].mean((2, 3))
    s1, s2 = blk.scale1.view(1, -1, 1, 1), blk.scale2.view(1, -1, 1, 1)
    mixed = x + s1 * (pooled - x)
    # Eq. (4): conv-BN-GELU-conv-BN
    (c1, c2) = (blk.mlp[0], blk.mlp[1])

    def bn(z, m):
        return F.batch_norm(z, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    h = F.gelu(bn(F.conv2d(mixed, c1.conv.weight, c1.conv.bias), c1.bn))
    want = mixed + s2 * bn(F.conv2d(h, c2.conv.weight, c2.conv.bias), c2.bn)
    with torch.no_grad():
        torch.testing.assert_close(blk(x), want, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------ MobileViT block option


def test_mobilevit_final_norm_bias_is_the_only_difference() -> None:
    plain = MobileViTBlock(16, dim=24, depth=1, num_heads=2)
    ref = MobileViTBlock(16, dim=24, depth=1, num_heads=2, final_norm_bias=True)
    assert plain.norm.bias is None and ref.norm.bias.shape == (24,)
    count = sum(p.numel() for p in ref.parameters()) - sum(p.numel() for p in plain.parameters())
    assert count == 24
    # with trained (eval) statistics the shift acts: it is needed to reproduce loaded weights
    torch.manual_seed(0)
    ref.eval()
    x = torch.randn(1, 16, 6, 6)
    with torch.no_grad():
        before = ref(x)
        ref.norm.bias.fill_(0.5)
        assert not torch.allclose(before, ref(x))
