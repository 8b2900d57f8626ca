"""Maths of the window / transformer-style image attention blocks.

Each test checks a property the paper states or an equality with a reference
written here with explicit loops / masks (the loops live in the tests, never in
the blocks), on tiny float64 inputs.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from blockzoo import ShapeError
from blockzoo.attention.acmix import ACmix
from blockzoo.attention.axial import AxialAttention
from blockzoo.attention.coatnet import RelativeAttention2d
from blockzoo.attention.criss_cross import CrissCrossAttention
from blockzoo.attention.crossformer import CrossScaleEmbedding, LongDistanceAttention, ShortDistanceAttention
from blockzoo.attention.deformable import DeformableAttention
from blockzoo.attention.halo import HaloAttention
from blockzoo.attention.maps import record_attention
from blockzoo.attention.moa import MultiResolutionOverlappedAttention
from blockzoo.attention.mobilevit import MobileViTBlock
from blockzoo.attention.outlook import OutlookAttention

D = torch.float64


def _img(c, h, w, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, generator=g, dtype=D)


def _rand_params(m, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return m


# --------------------------------------------------------------------------- criss-cross


def test_criss_cross_reads_only_row_and_column():
    m = _rand_params(CrissCrossAttention(8, reduction=2, gamma_init=1.0)).double().eval()
    x = _img(8, 6, 7)
    y = m(x)
    i, j = 2, 3
    for (pi, pj) in [(0, 0), (5, 6), (4, 1)]:  # neither in row 2 nor column 3
        x2 = x.clone()
        x2[:, :, pi, pj] += 5.0
        assert torch.allclose(m(x2)[:, :, i, j], y[:, :, i, j], atol=1e-12)
    # a pixel of the row and one of the column do change it
    for (pi, pj) in [(i, 0), (5, j)]:
        x2 = x.clone()
        x2[:, :, pi, pj] += 5.0
        assert not torch.allclose(m(x2)[:, :, i, j], y[:, :, i, j])


def test_criss_cross_weights_sum_to_one_over_the_cross():
    m = _rand_params(CrissCrossAttention(8, reduction=2, gamma_init=1.0)).double().eval()
    x = _img(8, 5, 6)
    with record_attention(m) as maps:
        m(x)
    a = maps["attn_map"]  # (B, H, W, H + W)
    assert a.shape == (2, 5, 6, 11)
    assert torch.allclose(a.sum(-1), torch.ones(2, 5, 6, dtype=D))
    # the pixel's own column entry is masked: it is counted once, in the row part
    ii = torch.arange(5)
    assert (a[:, ii, :, ii] == 0).all()


def test_criss_cross_recurrence_two_reaches_everything():
    m = _rand_params(CrissCrossAttention(8, reduction=2, gamma_init=1.0, recurrence=2)).double().eval()
    x = _img(8, 6, 7)
    x2 = x.clone()
    x2[:, :, 0, 0] += 5.0
    assert not torch.allclose(m(x2)[:, :, 4, 5], m(x)[:, :, 4, 5])


def test_criss_cross_reference_loop():
    m = _rand_params(CrissCrossAttention(4, reduction=2, gamma_init=0.7)).double().eval()
    x = _img(4, 3, 4, b=1)
    q, k, v = m.query(x)[0], m.key(x)[0], m.value(x)[0]
    H, W = 3, 4
    ref = torch.empty_like(x[0])
    for i in range(H):
        for j in range(W):
            cross = [(t, j) for t in range(H) if t != i] + [(i, t) for t in range(W)]
            e = torch.stack([q[:, i, j] @ k[:, a, c] for a, c in cross])
            a = e.softmax(0)
            ref[:, i, j] = sum(a[n] * v[:, p, c] for n, (p, c) in enumerate(cross))
    ref = m.gamma * ref + x[0]
    assert torch.allclose(m(x)[0], ref, atol=1e-10)


def _criss_cross_einsum(m: CrissCrossAttention, x: torch.Tensor) -> torch.Tensor:
    """The block as it was computed before its batched-matmul path (einsum on (B, C, H, W))."""
    for _ in range(m.recurrence):
        H = x.shape[2]
        q, k, v = m.query(x), m.key(x), m.value(x)
        e_col = torch.einsum("bcij,bckj->bijk", q, k)
        e_col = e_col.masked_fill(torch.eye(H, dtype=torch.bool)[:, None, :], float("-inf"))
        a = torch.cat([e_col, torch.einsum("bcij,bcik->bijk", q, k)], dim=-1).softmax(dim=-1)
        y = torch.einsum("bijk,bckj->bcij", a[..., :H], v) + torch.einsum("bijk,bcik->bcij", a[..., H:], v)
        x = m.gamma * y + x
    return x


@pytest.mark.parametrize(("size", "recurrence"), [((5, 7), 2), ((1, 4), 1), ((6, 1), 1)])
def test_criss_cross_matmul_path_equals_the_einsum_path_with_gradients(size, recurrence):
    m = _rand_params(CrissCrossAttention(8, reduction=2, gamma_init=0.8, recurrence=recurrence)).double()
    x = _img(8, *size).requires_grad_()
    params = list(m.parameters())
    got, want = m(x), _criss_cross_einsum(m, x)
    assert got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    seed = got.detach().cos()
    for g, w in zip(torch.autograd.grad((got * seed).sum(), [x, *params]),
                    torch.autograd.grad((want * seed).sum(), [x, *params]), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- axial


def test_axial_h_does_not_mix_columns():
    m = _rand_params(AxialAttention(8, axis="h", num_heads=2)).double().eval()
    x = _img(8, 6, 5)
    y = m(x)
    x2 = x.clone()
    x2[:, :, :, 2] += torch.randn(2, 8, 6, dtype=D)
    y2 = m(x2)
    others = [0, 1, 3, 4]
    assert torch.allclose(y2[..., others], y[..., others], atol=1e-12)
    assert not torch.allclose(y2[..., 2], y[..., 2])


def test_axial_w_does_not_mix_rows():
    m = _rand_params(AxialAttention(8, axis="w", num_heads=2)).double().eval()
    x = _img(8, 6, 5)
    y = m(x)
    x2 = x.clone()
    x2[:, :, 3, :] += 1.0
    y2 = m(x2)
    others = [0, 1, 2, 4, 5]
    assert torch.allclose(y2[:, :, others], y[:, :, others], atol=1e-12)


def test_axial_h_equals_multihead_attention_per_column():
    m = _rand_params(AxialAttention(8, axis="h", num_heads=2)).double().eval()
    x = _img(8, 5, 3, b=1)
    p = m.passes[0]
    qkv = p.qkv(x)[0]  # (3*h*d, H, W)
    ref = torch.empty(8, 5, 3, dtype=D)
    for j in range(3):
        col = qkv[:, :, j].T  # (H, 3*h*d)
        q, k, v = col.view(5, 3, 2, 4).permute(1, 2, 0, 3)  # (h, H, d)
        a = (q @ k.transpose(-1, -2) / 2.0).softmax(-1)
        ref[:, :, j] = (a @ v).permute(0, 2, 1).reshape(8, 5)
    ref = p.proj(ref[None])
    assert torch.allclose(m(x), ref, atol=1e-10)


def test_axial_both_reaches_everything_and_records_two_maps():
    m = _rand_params(AxialAttention(8, num_heads=2)).double().eval()
    x = _img(8, 5, 6)
    x2 = x.clone()
    x2[:, :, 0, 0] += 3.0
    assert not torch.allclose(m(x2)[:, :, 4, 5], m(x)[:, :, 4, 5])
    with record_attention(m) as maps:
        y = m(x)
    assert torch.allclose(y, m(x), atol=1e-12)  # explicit path == SDPA path
    assert maps["passes.0.attn_map"].shape == (2, 2, 6, 5, 5)  # along H: (B, h, W, H, H)
    assert maps["passes.1.attn_map"].shape == (2, 2, 5, 6, 6)


# --------------------------------------------------------------------------- CoAtNet


def test_coatnet_bias_depends_only_on_offset():
    m = RelativeAttention2d(8, num_heads=2, max_size=(6, 7)).double()
    _rand_params(m)
    H, W = 5, 7
    bias = m.relative_bias(H, W).view(2, H, W, H, W)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        ih, jh = torch.randint(0, H, (2,), generator=g).tolist()
        iw, jw = torch.randint(0, W, (2,), generator=g).tolist()
        # the same offset placed elsewhere in the image
        th = torch.randint(-min(ih, jh), H - max(ih, jh), (1,), generator=g).item()
        tw = torch.randint(-min(iw, jw), W - max(iw, jw), (1,), generator=g).item()
        assert torch.equal(bias[:, ih, iw, jh, jw], bias[:, ih + th, iw + tw, jh + th, jw + tw])
        assert torch.equal(bias[:, ih, iw, jh, jw], m.rel_table[:, ih - jh + 5, iw - jw + 6])


def test_coatnet_bias_enters_the_logits():
    m = _rand_params(RelativeAttention2d(8, num_heads=2, max_size=6)).double().eval()
    x = _img(8, 4, 5)
    with record_attention(m) as maps:
        y = m(x)
    B, h, d = 2, 2, 4
    q, k, v = m.qkv(x).view(B, 3, h, d, 20).permute(1, 0, 2, 4, 3)
    a = (q @ k.transpose(-1, -2) / math.sqrt(d) + m.relative_bias(4, 5)).softmax(-1)
    assert torch.allclose(maps["attn_map"], a, atol=1e-12)
    ref = m.proj((a @ v).transpose(-1, -2).reshape(B, 8, 4, 5))
    assert torch.allclose(y, ref, atol=1e-10)
    assert torch.allclose(m(x), y, atol=1e-10)  # SDPA path


@pytest.mark.parametrize("shape", [(2, 8, 4, 5), (1, 8, 1, 1), (3, 8, 6, 2)])
def test_coatnet_inference_path_equals_sdpa_path(shape):
    m = _rand_params(RelativeAttention2d(8, num_heads=2, max_size=6)).double().eval()
    x = torch.randn(*shape, dtype=torch.float64)
    want = m(x)  # grad enabled: the SDPA path
    with torch.no_grad():
        assert torch.allclose(m(x), want, rtol=0, atol=1e-12)  # matmul path, bias built
        assert torch.allclose(m(x), want, rtol=0, atol=1e-12)  # bias reused
    with torch.inference_mode():
        assert torch.allclose(m(x), want, rtol=0, atol=1e-12)


def test_coatnet_inference_bias_follows_the_table():
    m = _rand_params(RelativeAttention2d(8, num_heads=2, max_size=6)).double().eval()
    x = torch.randn(2, 8, 4, 5, dtype=torch.float64)
    with torch.no_grad():
        m(x)  # the bias is kept
        m.rel_table.mul_(3.0)  # in place: a new version
        got = m(x)
    assert torch.allclose(got, m(x), rtol=0, atol=1e-12)
    other = _rand_params(RelativeAttention2d(8, num_heads=2, max_size=6), seed=2).double().eval()
    m.load_state_dict(other.state_dict())
    with torch.no_grad():
        got = m(x)
    assert torch.allclose(got, other(x), rtol=0, atol=1e-12)
    m.resize_table(7)  # a new table object
    with torch.no_grad():
        got = m(x)
    assert torch.allclose(got, m(x), rtol=0, atol=1e-12)


def test_coatnet_beyond_table_raises_and_resize_extends():
    m = RelativeAttention2d(8, num_heads=2, max_size=(4, 5))
    with pytest.raises(ShapeError, match="H <= 4, W <= 5"):
        m(torch.randn(1, 8, 5, 5))
    m.resize_table((6, 6))
    assert m.rel_table.shape == (2, 11, 11)
    assert m(torch.randn(1, 8, 5, 6)).shape == (1, 8, 5, 6)


def test_coatnet_resize_keeps_table_when_same_size():
    m = RelativeAttention2d(8, num_heads=2, max_size=4).double()
    t = m.rel_table.detach().clone()
    m.resize_table(4)
    assert torch.allclose(m.rel_table, t, atol=1e-12)


# --------------------------------------------------------------------------- HaloNet


def _halo_reference(m, x):
    """Per-pixel loop: attend to the block's window pixels that lie inside the image."""
    B, _, H, W = x.shape
    b, s, h, d = m.block_size, m.halo_size, m.num_heads, m.head_dim
    q = m.q(x).view(B, h, d, H, W)
    k, v = m.kv(x).view(B, 2, h, d, H, W).unbind(1)
    out = torch.empty(B, h, d, H, W, dtype=x.dtype)
    for i in range(H):
        for j in range(W):
            bi, bj = i // b * b, j // b * b
            keys = [(u, t) for u in range(bi - s, bi + b + s) for t in range(bj - s, bj + b + s)
                    if 0 <= u < H and 0 <= t < W]
            qi = q[:, :, :, i, j]  # (B, h, d)
            logits = []
            for (u, t) in keys:
                r = m.rel_h[u - i + b + s - 1] + m.rel_w[t - j + b + s - 1]
                logits.append(((qi * k[:, :, :, u, t]).sum(-1) + (qi * r).sum(-1)) / math.sqrt(d))
            a = torch.stack(logits, -1).softmax(-1)  # (B, h, K)
            vs = torch.stack([v[:, :, :, u, t] for (u, t) in keys], -1)  # (B, h, d, K)
            out[:, :, :, i, j] = (vs * a[:, :, None]).sum(-1)
    return m.proj(out.reshape(B, h * d, H, W))


@pytest.mark.parametrize("size", [(4, 6), (5, 7), (3, 2)])
def test_halo_equals_reference_loop(size):
    m = _rand_params(HaloAttention(8, block_size=2, halo_size=1, num_heads=2)).double().eval()
    x = _img(8, *size)
    assert torch.allclose(m(x), _halo_reference(m, x), atol=1e-10)


@pytest.mark.parametrize("size", [(5, 7), (4, 4)])
def test_halo_batched_products_equal_the_loop_with_gradients(size):
    # the written-out path (the combined relative table, the key mask added in place to the
    # relative logits, baddbmm, windows from Tensor.unfold): output and gradients equal the
    # per-pixel loop to 1e-12 in float64, and hooks on the 1x1 convs still fire
    torch.manual_seed(0)
    m = _rand_params(HaloAttention(8, block_size=2, halo_size=1, num_heads=2, qkv_bias=True)).double()
    x = _img(8, *size).requires_grad_()
    got, want = m(x), _halo_reference(m, x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(got)
    params = [x, *m.parameters()]
    for a, b in zip(torch.autograd.grad(got, params, g), torch.autograd.grad(want, params, g), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    seen = []
    handles = [c.register_forward_hook(lambda c, *_a: seen.append(c)) for c in (m.q, m.kv, m.proj)]
    try:
        torch.testing.assert_close(m(x), want, rtol=1e-12, atol=1e-12)
    finally:
        for handle in handles:
            handle.remove()
    assert seen == [m.q, m.kv, m.proj]


def _pad_extra(extra):
    """A pad_to_multiple that adds ``extra`` more rows/columns than needed (forces the pad path)."""

    def pad(x, mh, mw):
        H, W = x.shape[-2:]
        ph, pw = (-H) % mh + extra * mh, (-W) % mw + extra * mw
        return F.pad(x, (0, pw, 0, ph)), ph, pw

    return pad


def test_halo_padding_path_equals_unpadded(monkeypatch):
    import blockzoo.attention.halo as halo

    m = _rand_params(HaloAttention(8, block_size=3, halo_size=1, num_heads=2)).double().eval()
    x = _img(8, 6, 9)  # divides: no padding on the normal path
    y = m(x)
    monkeypatch.setattr(halo, "pad_to_multiple", _pad_extra(1))
    assert torch.allclose(m(x), y, atol=1e-10)


def test_halo_records_block_weights():
    m = _rand_params(HaloAttention(8, block_size=2, halo_size=1, num_heads=2)).double().eval()
    x = _img(8, 5, 4)
    with record_attention(m) as maps:
        y = m(x)
    a = maps["attn_map"]  # (B, h, n, b*b, w*w)
    assert a.shape == (2, 2, 6, 4, 16)
    assert torch.allclose(a.sum(-1), torch.ones_like(a[..., 0]))
    assert torch.allclose(y, m(x), atol=1e-10)


# --------------------------------------------------------------------------- Outlook (VOLO)


def _outlook_reference(m, x):
    """Loop over window centres: y[c + o_m] += sum_n A_c[m, n] v[c + o_n] (zero v outside)."""
    B, C, H, W = x.shape
    h, d, K, st = m.num_heads, m.head_dim, m.kernel_size, m.stride
    p = K // 2
    v = m.v(x).view(B, h, d, H, W)
    xbar = F.avg_pool2d(x, st, st, ceil_mode=True) if st > 1 else x
    logits = m.attn(xbar).view(B, h, K * K, K * K, *xbar.shape[-2:])
    offs = [(a - p, b - p) for a in range(K) for b in range(K)]
    y = torch.zeros(B, h, d, H, W, dtype=x.dtype)
    for ci, i in enumerate(range(0, H, st)):
        for cj, j in enumerate(range(0, W, st)):
            a = (logits[..., ci, cj] / math.sqrt(d)).softmax(-1)  # (B, h, K*K, K*K)
            vw = torch.stack([v[..., i + u, j + t] if 0 <= i + u < H and 0 <= j + t < W
                              else torch.zeros(B, h, d, dtype=x.dtype) for u, t in offs], -2)
            yw = a @ vw  # (B, h, K*K, d)
            for mm, (u, t) in enumerate(offs):
                if 0 <= i + u < H and 0 <= j + t < W:
                    y[..., i + u, j + t] += yw[:, :, mm]
    return m.proj(y.reshape(B, C, H, W))


@pytest.mark.parametrize("kernel_size, stride, size", [(3, 1, (4, 5)), (3, 2, (5, 4)), (5, 2, (6, 7))])
def test_outlook_equals_reference_loop(kernel_size, stride, size):
    m = _rand_params(OutlookAttention(8, num_heads=2, kernel_size=kernel_size, stride=stride))
    m = m.double().eval()
    x = _img(8, *size)
    assert torch.allclose(m(x), _outlook_reference(m, x), atol=1e-10)


def test_outlook_weights_come_from_the_centre_only():
    """A_c is a function of xbar_c alone: perturbing another pixel leaves A_c unchanged."""
    m = _rand_params(OutlookAttention(8, num_heads=2)).double().eval()
    x = _img(8, 5, 6)
    with record_attention(m) as maps:
        m(x)
        a1 = maps["attn_map"].clone()
        x2 = x.clone()
        x2[:, :, 0, 0] += 1.0
        m(x2)
        a2 = maps["attn_map"]
    assert torch.allclose(a1[:, :, 1:], a2[:, :, 1:])
    assert not torch.allclose(a1[:, :, 0], a2[:, :, 0])


# --------------------------------------------------------------------------- ACmix


def test_acmix_attention_path_equals_window_loop():
    m = _rand_params(ACmix(8, num_heads=2, kernel_att=3, kernel_conv=3)).double().eval()
    with torch.no_grad():
        m.alpha.fill_(1.0)
        m.beta.fill_(0.0)
    x = _img(8, 4, 5)
    B, C, H, W = x.shape
    h, d, K = 2, 4, 3
    q, k, v = (f(x).view(B, h, d, H, W) for f in (m.q, m.k, m.v))
    ref = torch.empty(B, h, d, H, W, dtype=D)
    for i in range(H):
        for j in range(W):
            win = [(a * K + b, i + a - 1, j + b - 1) for a in range(K) for b in range(K)
                   if 0 <= i + a - 1 < H and 0 <= j + b - 1 < W]
            logits = torch.stack([(q[..., i, j] * k[..., u, t]).sum(-1) / math.sqrt(d) + m.rel_bias[:, o]
                                  for o, u, t in win], -1)
            a = logits.softmax(-1)  # (B, h, |win|)
            ref[..., i, j] = sum(a[..., n, None] * v[..., u, t] for n, (_, u, t) in enumerate(win))
    assert torch.allclose(m(x), ref.reshape(B, C, H, W), atol=1e-10)


def test_acmix_conv_path_starts_as_sum_of_shifts():
    m = ACmix(8, num_heads=2, kernel_att=3, kernel_conv=3).double().eval()
    _rand_params(m.fc)
    _rand_params(m.q, 2), _rand_params(m.k, 3), _rand_params(m.v, 4)
    with torch.no_grad():
        m.alpha.fill_(0.0)
        m.beta.fill_(1.0)  # starts at 0.5 (release); 1 isolates the shifts
    x = _img(8, 4, 5)
    B, C, H, W = x.shape
    h, d, K = 2, 4, 3
    qkv = torch.stack([m.q(x), m.k(x), m.v(x)], 1).view(B, 3 * h, d, H * W)
    f = m.fc(qkv).view(B, K * K, d, H, W)  # f_m per feature index
    ref = torch.zeros(B, C, H, W, dtype=D)
    for c in range(C):
        g = c // h  # the feature index this output channel's group reads
        for mm in range(K * K):
            du, dt = mm // K - 1, mm % K - 1
            for i in range(H):
                for j in range(W):
                    if 0 <= i + du < H and 0 <= j + dt < W:
                        ref[:, c, i, j] += f[:, mm, g, i + du, j + dt]
    assert torch.allclose(m(x), ref, atol=1e-10)


# --------------------------------------------------------------------------- MobileViT


def test_mobilevit_padding_path_equals_unpadded(monkeypatch):
    import blockzoo.attention.mobilevit as mv

    m = _rand_params(MobileViTBlock(8, dim=8, depth=2, num_heads=2, patch_size=2)).double().eval()
    for size in [(6, 8), (7, 9)]:
        x = _img(8, *size)
        y = m(x)
        with monkeypatch.context() as mp:
            mp.setattr(mv, "pad_to_multiple", _pad_extra(1))
            assert torch.allclose(m(x), y, atol=1e-10)


def test_mobilevit_attends_across_patches_at_one_pixel_position():
    """With a 1x1 local conv, pixel (i, j) reaches (i', j') only if they share the in-patch position."""
    m = _rand_params(MobileViTBlock(8, dim=8, depth=1, num_heads=2, patch_size=2, kernel_size=1))
    m = m.double().eval()
    x = _img(8, 6, 6)
    y = m(x)
    x2 = x.clone()
    x2[:, :, 0, 0] += 3.0
    y2 = m(x2)
    assert not torch.allclose(y2[:, :, 4, 2], y[:, :, 4, 2])  # same in-patch position (0, 0)
    assert torch.allclose(y2[:, :, 4, 3], y[:, :, 4, 3], atol=1e-12)  # position (0, 1)
    assert torch.allclose(y2[:, :, 5, 5], y[:, :, 5, 5], atol=1e-12)  # position (1, 1)
    with record_attention(m) as maps:
        assert torch.allclose(m(x), y, atol=1e-10)
    assert maps["layers.0.attn_map"].shape == (2, 4, 2, 9, 9)  # (B, P, h, N, N)


# --------------------------------------------------------------------------- Deformable (DAT)


def _zero_offsets(m):
    with torch.no_grad():
        m.offset[-1].weight.zero_()
    return m


def _linear_table(m, slopes):
    """Fill the bias table with b_h(t) = sy_h t_y + sx_h t_x, exact under bilinear interpolation."""
    R = m.pos_range
    t = torch.arange(-R, R + 1, dtype=D)
    with torch.no_grad():
        m.rpe_table.copy_(slopes[:, 0, None, None] * t[:, None] + slopes[:, 1, None, None] * t[None, :])
    return m


def _mhsa_with_bias(m, x, keys, key_pos, slopes):
    """Plain multi-head attention of every pixel over the given key map, with the linear bias."""
    B, C, H, W = x.shape
    h, d = m.num_heads, m.head_dim
    q = m.q(x).view(B, h, d, H * W).transpose(-1, -2)
    k = m.k(keys).flatten(2).view(B, h, d, -1).transpose(-1, -2)
    v = m.v(keys).flatten(2).view(B, h, d, -1).transpose(-1, -2)
    qpos = torch.stack(torch.meshgrid(torch.arange(H, dtype=D), torch.arange(W, dtype=D),
                                      indexing="ij"), -1).reshape(-1, 1, 2)
    disp = (qpos - key_pos.reshape(1, -1, 2)).clamp(-m.pos_range, m.pos_range)  # (N, M, 2)
    bias = torch.einsum("nmc,hc->hnm", disp, slopes)
    a = (q @ k.transpose(-1, -2) / math.sqrt(d) + bias).softmax(-1)
    return m.proj((a @ v).transpose(-1, -2).reshape(B, C, H, W))


def test_deformable_zero_offsets_stride1_is_full_attention():
    m = _zero_offsets(_rand_params(DeformableAttention(8, num_heads=2, num_groups=1, stride=1,
                                                       pos_range=3))).double().eval()
    slopes = torch.tensor([[0.3, -0.2], [-0.1, 0.25]], dtype=D)
    _linear_table(m, slopes)
    x = _img(8, 4, 6)  # displacements up to 5 > R = 3: the clamped edge applies
    pix = torch.stack(torch.meshgrid(torch.arange(4, dtype=D), torch.arange(6, dtype=D), indexing="ij"), -1)
    assert torch.allclose(m(x), _mhsa_with_bias(m, x, x, pix, slopes), atol=1e-10)


def test_deformable_zero_offsets_stride2_samples_cell_centres():
    m = _zero_offsets(_rand_params(DeformableAttention(8, num_heads=2, num_groups=1, stride=2,
                                                       pos_range=8))).double().eval()
    slopes = torch.tensor([[0.3, -0.2], [-0.1, 0.25]], dtype=D)
    _linear_table(m, slopes)
    x = _img(8, 4, 6)
    keys = F.avg_pool2d(x, 2)  # bilinear at the centre of each 2x2 cell
    centres = torch.stack(torch.meshgrid(torch.arange(2, dtype=D) * 2 + 0.5,
                                         torch.arange(3, dtype=D) * 2 + 0.5, indexing="ij"), -1)
    # half-pixel displacements: exact only if the table is read at the right fractional index
    assert torch.allclose(m(x), _mhsa_with_bias(m, x, keys, centres, slopes), atol=1e-10)


def test_deformable_offsets_move_the_keys():
    m = _rand_params(DeformableAttention(8, num_heads=2, num_groups=2, stride=2)).double().eval()
    x = _img(8, 6, 6)
    y = m(x)
    _zero_offsets(m)
    assert not torch.allclose(m(x), y)
    with record_attention(m) as maps:
        m(x)
    assert maps["attn_map"].shape == (2, 2, 36, 9)  # (B, h, N, M)


@pytest.mark.parametrize(("shape", "pos_bias"), [((2, 8, 6, 6), True), ((1, 8, 5, 7), True),
                                               ((3, 8, 1, 3), True), ((2, 8, 6, 5), False)])
def test_deformable_inference_path_equals_sdpa_path(shape, pos_bias):
    m = _rand_params(DeformableAttention(8, num_heads=2, num_groups=2, stride=2, pos_bias=pos_bias))
    m = m.double().eval()
    x = torch.randn(*shape, dtype=torch.float64)
    want = m(x)  # grad enabled: SDPA (attend)
    with torch.no_grad():
        got = m(x)  # two matmuls on the projections' layouts
    assert torch.allclose(got, want, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- CrossFormer


def _group_reference(m, x, group_of, unit):
    """Per-pixel loop: attend to the pixels of the same group, DPB on offsets / unit."""
    B, C, H, W = x.shape
    h, d = m.num_heads, m.head_dim
    q, k, v = m.qkv(x).view(B, 3, h, d, H, W).unbind(1)
    out = torch.empty(B, h, d, H, W, dtype=D)
    pix = [(i, j) for i in range(H) for j in range(W)]
    for (i, j) in pix:
        keys = [(u, t) for (u, t) in pix if group_of(u, t) == group_of(i, j)]
        logits = []
        for (u, t) in keys:
            off = torch.tensor([(i - u) / unit[0], (j - t) / unit[1]], dtype=D)
            logits.append((q[..., i, j] * k[..., u, t]).sum(-1) / math.sqrt(d) + m.dpb.mlp(off))
        a = torch.stack(logits, -1).softmax(-1)
        out[..., i, j] = sum(a[..., n, None] * v[..., u, t] for n, (u, t) in enumerate(keys))
    return m.proj(out.reshape(B, C, H, W))


@pytest.mark.parametrize("size", [(4, 6), (5, 7)])
def test_crossformer_sda_equals_reference_loop(size):
    m = _rand_params(ShortDistanceAttention(8, group_size=3, num_heads=2)).double().eval()
    x = _img(8, *size)
    ref = _group_reference(m, x, lambda u, t: (u // 3, t // 3), (1, 1))
    assert torch.allclose(m(x), ref, atol=1e-10)


@pytest.mark.parametrize("size", [(4, 6), (5, 7)])
def test_crossformer_lda_equals_reference_loop(size):
    m = _rand_params(LongDistanceAttention(8, interval=2, num_heads=2)).double().eval()
    x = _img(8, *size)
    ref = _group_reference(m, x, lambda u, t: (u % 2, t % 2), (2, 2))
    assert torch.allclose(m(x), ref, atol=1e-10)


@pytest.mark.parametrize("cls, arg", [(ShortDistanceAttention, "group_size"),
                                      (LongDistanceAttention, "interval")])
def test_crossformer_padding_path_equals_unpadded(monkeypatch, cls, arg):
    import blockzoo.attention.crossformer as cf

    m = _rand_params(cls(8, num_heads=2, **{arg: 3})).double().eval()
    x = _img(8, 6, 9)
    y = m(x)
    monkeypatch.setattr(cf, "pad_to_multiple", _pad_extra(1))
    assert torch.allclose(m(x), y, atol=1e-10)


@pytest.mark.parametrize("cls, arg", [(ShortDistanceAttention, "group_size"),
                                      (LongDistanceAttention, "interval")])
@pytest.mark.parametrize("size", [(6, 9), (5, 7)])
def test_crossformer_grouped_projection_equals_the_conv_path(cls, arg, size):
    # unhooked, the C input channels are grouped and then projected (F.linear); a hook on the
    # qkv conv keeps the conv-then-group path: outputs and gradients equal to 1e-12 (float64),
    # padded sizes included, and the hooks fire
    m = _rand_params(cls(8, num_heads=2, **{arg: 3})).double()
    x = _img(8, *size).requires_grad_()
    fast = m(x)
    seen = []
    handles = [c.register_forward_hook(lambda c, *_a: seen.append(c)) for c in (m.qkv, m.proj)]
    try:
        conv = m(x)
    finally:
        for handle in handles:
            handle.remove()
    assert seen == [m.qkv, m.proj]
    torch.testing.assert_close(fast, conv, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(fast)
    params = [x, *m.parameters()]
    for a, b in zip(torch.autograd.grad(fast, params, g), torch.autograd.grad(conv, params, g), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_crossformer_group_larger_than_image_shrinks():
    m = _rand_params(ShortDistanceAttention(8, group_size=7, num_heads=2)).double().eval()
    x = _img(8, 3, 5)  # one group: global attention over the image
    ref = _group_reference(m, x, lambda u, t: 0, (1, 1))
    assert torch.allclose(m(x), ref, atol=1e-10)


def test_cross_scale_embedding_channels_and_centres():
    cel = CrossScaleEmbedding(3, 64, kernel_sizes=(4, 8, 16, 32), stride=4, norm=False).double()
    assert [c.out_channels for c in cel.convs] == [32, 16, 8, 8]
    assert cel(_img(3, 30, 41)).shape == (2, 64, 7, 10)
    # every kernel is centred on the same point: a symmetric input gives a symmetric output
    sym = CrossScaleEmbedding(1, 8, kernel_sizes=(2, 4, 6), stride=2, norm=False).double()
    with torch.no_grad():
        for c in sym.convs:
            c.weight.copy_((c.weight + c.weight.flip(-1, -2)) / 2)
    x = _img(1, 8, 8, b=1)
    x = x + x.flip(-1, -2)
    y = sym(x)
    assert torch.allclose(y, y.flip(-1, -2), atol=1e-12)
    with pytest.raises(ValueError, match="even"):
        CrossScaleEmbedding(3, 8, kernel_sizes=(3,), stride=2)
    with pytest.raises(ShapeError, match="H, W >= 4"):
        cel(_img(3, 3, 8))


# --------------------------------------------------------------------------- MOA


def test_moa_equals_window_loop():
    m = _rand_params(MultiResolutionOverlappedAttention(8, window_size=2, overlap=1, reduction=2,
                                                        num_heads=2)).double().eval()
    for size in [(4, 6), (5, 3)]:
        x = _img(8, *size)
        H, W = size
        z = m.reduce(x)
        Hp, Wp = -(-H // 2) * 2, -(-W // 2) * 2
        zp = F.pad(z, (1, 1 + Wp - W, 1, 1 + Hp - H))  # overlap border + bottom/right padding
        wins = [(a, b) for a in range(0, Hp, 2) for b in range(0, Wp, 2)]
        qt = torch.stack([zp[:, :, a + 1:a + 3, b + 1:b + 3].flatten(1) for a, b in wins], 1)
        kt = torch.stack([zp[:, :, a:a + 4, b:b + 4].flatten(1) for a, b in wins], 1)
        B, n = x.shape[0], len(wins)
        q = m.q(qt).view(B, n, 2, 4).transpose(1, 2)
        k, v = m.kv(kt).view(B, n, 2, 2, 4).permute(2, 0, 3, 1, 4)
        u = ((q @ k.transpose(-1, -2) / 2.0).softmax(-1) @ v).transpose(1, 2).reshape(B, n, 8)
        u = m.unembed(u).view(B, n, 4, 2, 2)
        y = torch.zeros(B, 4, Hp, Wp, dtype=D)
        for idx, (a, b) in enumerate(wins):
            y[:, :, a:a + 2, b:b + 2] = u[:, idx]
        assert torch.allclose(m(x), m.expand(y[:, :, :H, :W]), atol=1e-10)


def test_moa_is_global():
    m = MultiResolutionOverlappedAttention(8, window_size=2, overlap=1, reduction=2, num_heads=2)
    m = m.double().eval()
    x = _img(8, 8, 8)
    x2 = x.clone()
    x2[:, :, 0, 0] += 1.0
    assert not torch.allclose(m(x2)[:, :, 7, 7], m(x)[:, :, 7, 7])


# --------------------------------------------------------------------------- all of this file's blocks

MAPPED = ["halo_attention", "outlook_attention", "coatnet_relative_attention", "acmix",
          "deformable_attention", "crossformer_sda", "crossformer_lda", "moa_attention",
          "criss_cross_attention", "axial_attention", "mobilevit_block"]


@pytest.mark.parametrize("name", MAPPED)
def test_recording_path_equals_fast_path(name):
    """While record_attention is on, blocks take the explicit softmax path: same output."""
    import blockzoo

    s = blockzoo.spec(name)
    m = s.build_example().double().eval()
    (x,) = s.make_input(batch=2, size=(7, 9), dtype=D)
    y = m(x)
    with record_attention(m) as maps:
        y2 = m(x)
    assert maps, f"{name} recorded no attention map"
    assert torch.allclose(y, y2, atol=1e-10)
    for a in maps.values():
        assert torch.isfinite(a).all() and (a >= 0).all()


@pytest.mark.parametrize("build, match", [
    (lambda: HaloAttention(8, num_heads=3), "num_heads=3 must divide channels=8"),
    (lambda: OutlookAttention(8, kernel_size=4), "kernel_size=4 must be odd"),
    (lambda: RelativeAttention2d(8, max_size=0), "max_size=0"),
    (lambda: ACmix(8, num_heads=3), "num_heads=3 must divide channels=8"),
    (lambda: DeformableAttention(8, num_heads=2, num_groups=4), "num_groups=4 must divide num_heads=2"),
    (lambda: ShortDistanceAttention(8, group_size=0), "group_size=0"),
    (lambda: MultiResolutionOverlappedAttention(8, reduction=16), "reduction=16"),
    (lambda: CrissCrossAttention(8, recurrence=0), "recurrence=0"),
    (lambda: AxialAttention(8, axis="c"), "axis='c'"),
    (lambda: MobileViTBlock(8, dim=6, num_heads=4), "num_heads=4 must divide dim=6"),
])
def test_bad_constructor_arguments_name_the_values(build, match):
    with pytest.raises(ValueError, match=match):
        build()


# Biases that the attention softmax (or a later BatchNorm) cancels exactly are not parameters.
NO_OP_BIASES = [
    (lambda: CrissCrossAttention(8, reduction=2), ["key.bias"], ["key.weight", "query.bias", "value.bias"]),
    (lambda: ShortDistanceAttention(8, group_size=2, num_heads=2), ["dpb.mlp.6.bias"],
     ["dpb.mlp.6.weight", "dpb.mlp.3.bias"]),
    (lambda: LongDistanceAttention(8, interval=2, num_heads=2), ["dpb.mlp.6.bias"],
     ["dpb.mlp.6.weight", "dpb.mlp.3.bias"]),
    (lambda: DeformableAttention(8, num_heads=2), ["k.bias"], ["k.weight", "q.bias", "v.bias"]),
    (lambda: MobileViTBlock(8, num_heads=2), ["norm.bias"], ["norm.weight", "layers.0.norm1.bias"]),
]


@pytest.mark.parametrize(("make", "gone", "kept"), NO_OP_BIASES)
def test_cancelled_biases_are_not_parameters(make, gone, kept) -> None:
    keys = set(make().state_dict())
    assert not keys & set(gone)
    assert set(kept) <= keys


@pytest.mark.parametrize(("kw", "size"), [({}, (8, 8)), ({}, (7, 10)),
                                          ({"window_size": 3, "overlap": 2, "reduction": 8, "num_heads": 2,
                                            "dim": 8}, (7, 9))])
def test_moa_eval_path_equals_the_autograd_path(kw: dict, size: tuple[int, int]) -> None:
    """MOA without autograd (channels-last linear maps for the 1 x 1 convolutions, query windows and
    their fold as views, the key-value projection of the grown windows as one strided convolution)
    equals the autograd path (unfold, linear, fold) in float64; a hook on the kv projection takes
    the module path and fires."""
    from blockzoo.attention.moa import MultiResolutionOverlappedAttention

    cfg = {"channels": 16, "window_size": 2, "overlap": 1, "reduction": 2, "num_heads": 2, **kw}
    channels = 32 if kw else 16
    cfg["channels"] = channels
    torch.manual_seed(0)
    moa = MultiResolutionOverlappedAttention(**cfg).double().eval()
    with torch.no_grad():
        for p in moa.parameters():
            p.uniform_(-0.5, 0.5)
    x = torch.randn(2, channels, *size, dtype=torch.float64)
    with torch.no_grad():
        fast = moa(x)
    torch.testing.assert_close(fast, moa(x), rtol=1e-12, atol=1e-12)
    seen: list[int] = []
    handle = moa.kv.register_forward_hook(lambda *_a: seen.append(1))
    with torch.no_grad():
        hooked = moa(x)
    handle.remove()
    assert seen
    torch.testing.assert_close(hooked, fast, rtol=1e-12, atol=1e-12)
