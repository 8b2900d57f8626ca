"""HAT-Net-Tiny (issue 23, paper-only: no reference implementation installed) and its
hierarchical multi-head self-attention (H-MHSA).

Parameter count against the authors' released model, multiply-adds at 224, forwards at other
sizes (``attach`` after each stage: test_backbones_paper_only.py), and the blocks' maths
against independent references written from the released code's structure (float64,
explicit loops over grids and heads)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import blockzoo
from blockzoo.attention.hat import HierarchicalMHSA
from blockzoo.attention.maps import record_attention
from blockzoo.bench.flops import flop_report
from blockzoo.checks import ConfigError
from blockzoo.models.hatnet import HATInvertedResidual

# HAT-Net-Tiny as released (yun-liu/HAT-Net, HAT_Net.py, ``HAT_Net_tiny``): widths, depths, FFN
# expansions, grids; the README's table prints 12.7M parameters and 2.0G FLOPs at 224x224.
TINY = dict(dims=(48, 96, 240, 384), depths=(2, 2, 6, 3), expansions=(8, 8, 4, 4), grids=(8, 7, 7, 1))


def _released_count(dims, depths, expansions, grids, stem=16, classes=1000, k=3) -> tuple[int, int]:
    """Parameters of the released model, module by module as HAT_Net.py builds it, and how many
    of them sit in its attention's ``proj_norm``, a GroupNorm its forward never calls."""
    conv = lambda cin, cout, kk=1, bias=True: cin * cout * kk * kk + (cout if bias else 0)  # noqa: E731
    n = conv(3, stem, 3) + 2 * stem + conv(stem, dims[0], 3)  # patch_embed: conv, GN, conv
    unused = 0
    for i, (c, depth, e, g) in enumerate(zip(dims, depths, expansions, grids, strict=True)):
        if i:
            n += conv(dims[i - 1], c, 3) + 2 * c  # Downsample: conv 3x3/2 + GN
        attn = 2 * c + conv(c, 3 * c) + conv(c, c) + 2 * c  # norm, qkv, proj, proj_norm
        if g > 1:
            attn += 2 * c + 2 * c + conv(c, c) + conv(c, 2 * c)  # grid_norm, ds_norm, q, kv
        ffn = 2 * c + conv(c, e * c, bias=False) + e * c * k * k + conv(e * c, c, bias=False) + 2 * c
        n += depth * (attn + ffn)
        unused += depth * 2 * c
    return n + dims[-1] * classes + classes, unused


def test_parameter_count_is_the_released_models_less_its_unused_norms() -> None:
    released, unused = _released_count(**TINY)
    assert (released, unused) == (12_655_912, 5_760)  # README: "12.7M"
    n = sum(p.numel() for p in blockzoo.create_model("hatnet_tiny").parameters())
    assert n == 12_650_152 == released - unused
    assert round(n / 1e6, 1) == 12.7


def test_macs_at_224() -> None:
    # Our counter / 2 at 224x224, measured once: 1.969G in convolutions (the README's "2.0G")
    # plus 0.158G in the attention products.
    s = blockzoo.spec("hatnet_tiny")
    with torch.device("meta"):
        model = blockzoo.create_model("hatnet_tiny").eval()
        report = flop_report(model, s.make_input(batch=1, size=(224, 224), device="meta"))
    assert report.flops / 2 == pytest.approx(2.128e9, rel=1e-3)
    assert not report.uncounted


def test_full_model_forward_at_224_and_sizes_off_the_grids() -> None:
    torch.manual_seed(0)
    model = blockzoo.create_model("hatnet_tiny").eval()
    with torch.no_grad():
        for size in ((224, 224), (72, 40), (33, 47)):  # the last two are padded inside H-MHSA
            out = model(torch.randn(1, 3, *size))
            assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_follows_the_released_tiny_config() -> None:
    model = blockzoo.create_model("hatnet_tiny")
    attns = [[b.attn for b in stage.blocks] for stage in model.stages]
    assert [len(a) for a in attns] == [2, 2, 6, 3]
    got = [(a[0].dim, a[0].num_heads, a[0].head_dim, a[0].grid_size, a[0].ds_ratio) for a in attns]
    assert got == [(48, 1, 48, 8, 8), (96, 2, 48, 7, 4), (240, 5, 48, 7, 2), (384, 8, 48, 1, 1)]
    assert [stage.blocks[0].ffn.expand.conv.out_channels for stage in model.stages] == [384, 768, 960, 1536]
    assert attns[3][0].q is None and attns[3][0].kv is None  # the last stage is plain global MHSA
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_groups == 1 and m.eps == 1e-6 for m in norms)


# ------------------------------------------------------------------------ H-MHSA


def _gn(z: torch.Tensor, norm: torch.nn.GroupNorm) -> torch.Tensor:
    return F.group_norm(z, 1, norm.weight, norm.bias, eps=1e-6)


def _conv1x1(z: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    return torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], z) + conv.bias[None, :, None, None]


def _softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for q (d, n), k, v (d, m) channel-first; returns (d, n)."""
    a = (q.T @ k / math.sqrt(q.shape[0])).softmax(-1)  # (n, m)
    return (a @ v.T).T


def _hmhsa_reference(m: HierarchicalMHSA, x: torch.Tensor) -> torch.Tensor:
    """H-MHSA with explicit loops: each grid is the G x G block of the image clipped to its
    border (no padding), each pooled key the mean of the real pixels of its r x r cell."""
    b, c, height, width = x.shape
    nh, d, g, r = m.num_heads, m.head_dim, m.grid_size, m.ds_ratio
    qkv = _conv1x1(_gn(x, m.norm), m.qkv)
    q, k, v = qkv[:, :c], qkv[:, c:2 * c], qkv[:, 2 * c:]
    base = None
    if g > 1:
        local = torch.zeros_like(x)
        for i in range(b):
            for y in range(0, height, g):
                for x0 in range(0, width, g):
                    cell = (slice(y, y + g), slice(x0, x0 + g))
                    for j in range(nh):
                        ch = slice(j * d, (j + 1) * d)
                        tq, tk, tv = (t[i, ch, cell[0], cell[1]] for t in (q, k, v))  # (d, gy, gx)
                        out = _softmax_attention(tq.flatten(1), tk.flatten(1), tv.flatten(1))
                        local[i, ch, cell[0], cell[1]] = out.reshape(tq.shape)
        base = _gn(x + local, m.grid_norm)
        ph, pw = -(-height // r), -(-width // r)
        pooled = torch.stack([torch.stack([base[:, :, a * r:(a + 1) * r, e * r:(e + 1) * r].mean((2, 3))
                                           for e in range(pw)], -1) for a in range(ph)], -2)
        q = _conv1x1(base, m.q)
        kv = _conv1x1(_gn(pooled, m.ds_norm), m.kv)
        k, v = kv[:, :c], kv[:, c:]
    glob = torch.zeros_like(x)
    for i in range(b):
        for j in range(nh):
            ch = slice(j * d, (j + 1) * d)
            out = _softmax_attention(q[i, ch].flatten(1), k[i, ch].flatten(1), v[i, ch].flatten(1))
            glob[i, ch] = out.reshape(d, height, width)
    return _conv1x1(glob if base is None else glob + base, m.proj)


def _randomised(m: torch.nn.Module) -> torch.nn.Module:
    for mod in m.modules():
        if isinstance(mod, torch.nn.GroupNorm):
            torch.nn.init.normal_(mod.weight, 1.0, 0.3)
            torch.nn.init.normal_(mod.bias, 0.0, 0.3)
    return m


@pytest.mark.parametrize(("size", "grid", "ratio", "heads"), [
    ((8, 8), 4, 2, 2),  # whole grids and cells: the released computation
    ((12, 8), 4, 4, 3),
    ((7, 9), 4, 2, 2),  # padded grids, partial pooling cells
    ((5, 11), 3, 4, 1),
    ((3, 2), 4, 8, 2),  # smaller than one grid and one cell
    ((6, 5), 1, 1, 3),  # G = 1: plain global MHSA
])
def test_hierarchical_mhsa_equals_the_looped_reference(size, grid, ratio, heads) -> None:
    torch.manual_seed(0)
    m = _randomised(HierarchicalMHSA(12, heads, grid_size=grid, ds_ratio=ratio)).double().eval()
    x = torch.randn(2, 12, *size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _hmhsa_reference(m, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("transposed_max", [10 ** 9, 0])
@pytest.mark.parametrize(("size", "grid", "ratio"), [((8, 8), 4, 2), ((7, 9), 4, 2), ((6, 5), 1, 1)])
def test_hierarchical_mhsa_eval_global_attention_equals_the_autograd_path(
        size, grid, ratio, transposed_max, monkeypatch) -> None:
    # without autograd the global attention runs transposed from the channel-first projections
    # (few logits) or as fused SDPA on contiguous q, k, v (many); both equal the attend path
    # (autograd on) to 1e-12 in float64
    from blockzoo.attention import hat

    monkeypatch.setattr(hat, "_TRANSPOSED_MAX_LOGITS", transposed_max)
    calls = []
    real = HierarchicalMHSA._global
    monkeypatch.setattr(HierarchicalMHSA, "_global", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    m = _randomised(HierarchicalMHSA(12, 3, grid_size=grid, ds_ratio=ratio)).double().eval()
    x = torch.randn(2, 12, *size, dtype=torch.float64)
    with torch.no_grad():
        got = m(x)
    assert calls == [1]
    torch.testing.assert_close(got, m(x).detach(), rtol=1e-12, atol=1e-12)
    assert calls == [1]  # autograd on: the attend path


def test_hierarchical_mhsa_with_grid_1_is_pytorchs_multihead_attention() -> None:
    torch.manual_seed(0)
    m = _randomised(HierarchicalMHSA(12, 3, grid_size=1, ds_ratio=1)).double().eval()
    mha = torch.nn.MultiheadAttention(12, 3, batch_first=True, dtype=torch.float64).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(m.qkv.weight[:, :, 0, 0])
        mha.in_proj_bias.copy_(m.qkv.bias)
        mha.out_proj.weight.copy_(m.proj.weight[:, :, 0, 0])
        mha.out_proj.bias.copy_(m.proj.bias)
        x = torch.randn(2, 12, 5, 7, dtype=torch.float64)
        t = _gn(x, m.norm).flatten(2).transpose(1, 2)  # (B, N, C)
        want = mha(t, t, t, need_weights=False)[0].transpose(1, 2).reshape(x.shape)
        torch.testing.assert_close(m(x), want, rtol=1e-10, atol=1e-10)


def test_padded_keys_get_no_weight_and_each_grid_row_sums_to_one() -> None:
    torch.manual_seed(0)
    m = HierarchicalMHSA(8, 2, grid_size=4, ds_ratio=2).eval()
    with record_attention(m) as maps, torch.no_grad():
        m(torch.randn(1, 8, 6, 5))  # padded to 8 x 8: 2 x 2 grids of 16
    local = maps["local_map"]  # (B n, h, G^2, G^2)
    assert local.shape == (4, 2, 16, 16)
    torch.testing.assert_close(local.sum(-1), torch.ones(4, 2, 16))
    real = torch.zeros(8, 8, dtype=torch.bool)
    real[:6, :5] = True
    real = real.reshape(2, 4, 2, 4).transpose(1, 2).reshape(4, 16)  # (n, G^2) per grid
    assert (local.masked_select(~real[:, None, None, :].expand_as(local)) == 0).all()
    assert (local.masked_select(real[:, None, None, :].expand_as(local)) > 0).all()
    assert maps["attn_map"].shape == (1, 2, 30, 9)  # every token over the 3 x 3 pooled cells


def test_hierarchical_mhsa_config_errors() -> None:
    with pytest.raises(ConfigError, match="num_heads=3 must divide dim=16"):
        HierarchicalMHSA(16, 3)
    with pytest.raises(ConfigError, match="ds_ratio=2 needs a local step"):
        HierarchicalMHSA(16, 2, grid_size=1, ds_ratio=2)
    with pytest.raises(ConfigError, match="grid_size=0 must be >= 1"):
        HierarchicalMHSA(16, 2, grid_size=0)
    with pytest.raises(ConfigError, match=r"head_dim=7 must divide dims\[0\]=48"):
        blockzoo.create_model("hatnet_tiny", head_dim=7)


def test_hierarchical_mhsa_names_a_wrong_input() -> None:
    m = HierarchicalMHSA(8, 2, grid_size=2, ds_ratio=2)
    with pytest.raises(blockzoo.ShapeError, match=r"HierarchicalMHSA: expected input \(B, C=8, H, W\)"):
        m(torch.randn(1, 6, 4, 4))


# ------------------------------------------------------------------------ the FFN


def test_inverted_residual_equals_the_equation() -> None:
    torch.manual_seed(0)
    ffn = _randomised(HATInvertedResidual(6, 3, kernel_size=3)).double()
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    # IRB(x) = GN(W_3 SiLU(DWConv(SiLU(W_1 GN(x))))), no conv biases
    h = F.conv2d(_gn(x, ffn.norm), ffn.expand.conv.weight)
    h = F.conv2d(F.silu(h), ffn.dw.conv.weight, padding=1, groups=18)
    h = F.conv2d(F.silu(h), ffn.project.conv.weight)
    want = _gn(h, ffn.project.bn)
    assert all(m.bias is None for m in ffn.modules() if isinstance(m, torch.nn.Conv2d))
    with torch.no_grad():
        torch.testing.assert_close(ffn(x), want, rtol=1e-10, atol=1e-10)
