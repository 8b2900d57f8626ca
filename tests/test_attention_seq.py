"""The maths of the sequence/token attention family (blockzoo/attention, issue #4).

Equality with PyTorch's own operators where they exist (F.scaled_dot_product_attention,
nn.MultiheadAttention, nn.TransformerEncoderLayer), and the papers' stated properties
elsewhere. Small sizes; float64 where an identity is exact.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import blockzoo
from blockzoo.attention import (
    EMSA,
    AFTConv,
    AFTFull,
    AFTLocal,
    AFTSimple,
    ExternalAttention,
    GraphAttention,
    GraphDotProductAttention,
    LearnedPositionalEmbedding,
    LinearAttention,
    LinformerAttention,
    LocalAttention,
    MultiHeadAttention,
    MUSEAttention,
    PatchEmbed,
    PerformerAttention,
    RotaryEmbedding,
    SeparableSelfAttention,
    SinusoidalPositionalEncoding,
    TransformerEncoderBlock,
    UFOAttention,
    band_mask,
    favor_attention,
    local_window_attention,
    random_features,
    scaled_dot_product_attention,
    sinusoidal_table,
)
from blockzoo.attention.maps import record_attention

D64 = torch.float64


def _rand(*shape: int, dtype: torch.dtype = D64) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype)


# --------------------------------------------------------------------------- SDPA paths


def _bool_mask(length: int, source: int) -> torch.Tensor:
    m = torch.rand(length, source) < 0.6
    m[:, 0] = True  # every query sees at least one key
    return m


@pytest.mark.parametrize("case", ["none", "bool", "float", "causal", "causal+bool", "rect", "batched"])
def test_sdpa_fast_and_reference_paths_agree(case: str) -> None:
    length, source = (5, 7) if case == "rect" else (6, 6)
    q, k, v = _rand(2, 3, length, 4), _rand(2, 3, source, 4), _rand(2, 3, source, 5)
    mask, causal = None, False
    if case in ("bool", "causal+bool", "rect"):
        mask = _bool_mask(length, source)
    elif case == "float":
        mask = _rand(length, source)
    elif case == "batched":
        mask = torch.rand(2, 3, length, source) < 0.6
        mask[..., 0] = True
    if case.startswith("causal"):
        causal = True
    fast = scaled_dot_product_attention(q, k, v, mask, is_causal=causal)
    ref, w = scaled_dot_product_attention(q, k, v, mask, is_causal=causal, return_weights=True)
    torch.testing.assert_close(fast, ref)
    torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)))
    if mask is not None and mask.dtype == torch.bool:
        assert (w[..., ~mask.expand_as(w)] == 0).all()
    if causal:
        assert (w.triu(1) == 0).all()
    # the reference itself, written out: softmax(Q K^T / sqrt(d) + M) V
    logits = q @ k.transpose(-1, -2) / 2.0
    if mask is not None:
        logits = logits.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else logits + mask
    if causal:
        logits = logits.masked_fill(torch.ones(length, source).triu(1).bool(), -math.inf)
    torch.testing.assert_close(ref, logits.softmax(-1) @ v)


def test_sdpa_custom_scale() -> None:
    q, k, v = _rand(1, 2, 4, 8), _rand(1, 2, 4, 8), _rand(1, 2, 4, 8)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, scale=0.3),
                               scaled_dot_product_attention(q, k, v, scale=0.3, reference=True))


# --------------------------------------------------------------------------- MHA vs PyTorch


def _copy_from_torch(ours: MultiHeadAttention, ref: nn.MultiheadAttention) -> None:
    with torch.no_grad():
        if ours.fused_qkv:
            ours.qkv.weight.copy_(ref.in_proj_weight)
            ours.qkv.bias.copy_(ref.in_proj_bias)
        else:
            e = ours.inner
            ours.q_proj.weight.copy_(ref.q_proj_weight)
            ours.k_proj.weight.copy_(ref.k_proj_weight)
            ours.v_proj.weight.copy_(ref.v_proj_weight)
            for i, lin in enumerate((ours.q_proj, ours.k_proj, ours.v_proj)):
                lin.bias.copy_(ref.in_proj_bias[i * e:(i + 1) * e])
        ours.out_proj.load_state_dict(ref.out_proj.state_dict())


MHA_CASES = ["plain", "key_padding", "bool_mask", "float_mask", "causal", "3d_mask", "all"]


@pytest.mark.parametrize("case", MHA_CASES)
@pytest.mark.parametrize("cross", [False, True])
def test_mha_matches_torch_multihead_attention(case: str, cross: bool) -> None:
    b, n, s, dim, h = 3, 6, 8 if cross else 6, 16, 4
    ref = nn.MultiheadAttention(dim, h, batch_first=True).eval()
    ours = MultiHeadAttention(dim, num_heads=h).eval()
    _copy_from_torch(ours, ref)
    x = torch.randn(b, n, dim)
    mem = torch.randn(b, s, dim) if cross else x
    kw_ref: dict = {}
    kw_ours: dict = {}
    if case in ("key_padding", "all"):
        kpm = torch.zeros(b, s, dtype=torch.bool)
        kpm[1, -2:] = True
        kpm[2, -1:] = True
        kw_ref["key_padding_mask"] = kw_ours["key_padding_mask"] = kpm
    if case in ("bool_mask", "all"):
        am = torch.rand(n, s) < 0.3
        am[:, 0] = False
        kw_ref["attn_mask"] = kw_ours["attn_mask"] = am
    if case == "float_mask":
        kw_ref["attn_mask"] = kw_ours["attn_mask"] = torch.randn(n, s)
    if case == "3d_mask":
        kw_ref["attn_mask"] = kw_ours["attn_mask"] = torch.randn(b * h, n, s)
    if case == "causal":
        kw_ref["attn_mask"] = torch.ones(n, s, dtype=torch.bool).triu(1)  # True = not allowed
        kw_ours["is_causal"] = True
    with torch.no_grad():
        want, want_w = ref(x, mem, mem, need_weights=True, **kw_ref)
        _, want_heads = ref(x, mem, mem, need_weights=True, average_attn_weights=False, **kw_ref)
        got = ours(x, None if not cross else mem, None if not cross else mem, **kw_ours)
        got2, got_w = ours(x, None if not cross else mem, None if not cross else mem, need_weights=True,
                           **kw_ours)
        _, got_heads = ours(x, None if not cross else mem, None if not cross else mem, need_weights=True,
                            average_attn_weights=False, **kw_ours)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got2, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_w, want_w, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_heads, want_heads, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_mha_one_key_value_source_equals_separate_projections(bias: bool) -> None:
    # key is value: one product with the (2E, C) rows of the fused weight; the same tensor's
    # copy as value takes the three separate products: outputs and gradients to 1e-12
    torch.manual_seed(0)
    m = MultiHeadAttention(8, 2, qkv_bias=bias).double()
    x, src = _rand(2, 5, 8).requires_grad_(), _rand(2, 7, 8).requires_grad_()
    one = m(x, src, src)
    sep = m(x, src, src.clone())
    torch.testing.assert_close(one, sep, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(one)
    params = [x, src, *m.parameters()]
    for a, b in zip(torch.autograd.grad(one, params, g), torch.autograd.grad(sep, params, g), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(blockzoo.ShapeError, match="key"):
        m(x, _rand(3, 7, 8), _rand(3, 7, 8))  # a batch that is not the query's still raises


def test_mha_separate_projections_kdim_vdim_match_torch() -> None:
    ref = nn.MultiheadAttention(12, 3, kdim=5, vdim=7, batch_first=True).eval()
    ours = MultiHeadAttention(12, num_heads=3, kdim=5, vdim=7, fused_qkv=False).eval()
    _copy_from_torch(ours, ref)
    q, k, v = torch.randn(2, 4, 12), torch.randn(2, 9, 5), torch.randn(2, 9, 7)
    kpm = torch.zeros(2, 9, dtype=torch.bool)
    kpm[0, 5:] = True
    with torch.no_grad():
        want, want_w = ref(q, k, v, key_padding_mask=kpm)
        got, got_w = ours(q, k, v, key_padding_mask=kpm, need_weights=True)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_w, want_w, atol=1e-5, rtol=1e-5)


def test_mha_gradients_match_torch() -> None:
    ref = nn.MultiheadAttention(8, 2, batch_first=True).double()
    ours = MultiHeadAttention(8, num_heads=2).double()
    _copy_from_torch(ours, ref)
    x = _rand(2, 5, 8, dtype=D64)
    ref(x, x, x, need_weights=False)[0].square().sum().backward()
    ours(x).square().sum().backward()
    torch.testing.assert_close(ours.qkv.weight.grad, ref.in_proj_weight.grad)
    torch.testing.assert_close(ours.out_proj.weight.grad, ref.out_proj.weight.grad)


def test_mha_head_dim_and_errors() -> None:
    m = MultiHeadAttention(10, num_heads=3, head_dim=4)
    assert m(torch.randn(2, 5, 10)).shape == (2, 5, 10)
    assert m.qkv.weight.shape == (36, 10)
    with pytest.raises(ValueError, match="num_heads=3 must divide dim=10"):
        MultiHeadAttention(10, num_heads=3)
    with pytest.raises(ValueError, match="fused_qkv"):
        MultiHeadAttention(8, num_heads=2, kdim=4)
    mha = MultiHeadAttention(8, num_heads=2)
    with pytest.raises(blockzoo.ShapeError, match=r"MultiHeadAttention.*key"):
        mha(torch.randn(2, 5, 8), torch.randn(2, 5, 9))
    with pytest.raises(blockzoo.ShapeError, match="key_padding_mask"):
        mha(torch.randn(2, 5, 8), key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(blockzoo.ShapeError, match="attn_mask"):
        mha(torch.randn(2, 5, 8), attn_mask=torch.zeros(5, 4, dtype=torch.bool))


def test_mha_self_attention_paths_agree_and_dropout_only_in_training() -> None:
    mha = MultiHeadAttention(8, num_heads=2, dropout=0.5).double()
    x = _rand(2, 5, 8)
    mha.eval()
    torch.testing.assert_close(mha(x, x, x), mha(x))  # fused and split projections
    torch.testing.assert_close(mha(x), mha(x))
    mha.train()
    y = mha(x)
    assert torch.isfinite(y).all() and not torch.allclose(y, mha.eval()(x))


def test_mha_records_attention_on_explicit_path() -> None:
    mha = MultiHeadAttention(8, num_heads=2).eval()
    x = torch.randn(2, 5, 8)
    fast = mha(x, is_causal=True)
    with record_attention(mha) as maps:
        slow = mha(x, is_causal=True)
    w = maps["attn_map"]
    assert w.shape == (2, 2, 5, 5)
    torch.testing.assert_close(slow, fast, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 5))
    assert (w.triu(1) == 0).all()


def test_mha_causal_output_ignores_the_future() -> None:
    mha = MultiHeadAttention(8, num_heads=2, causal=True).double().eval()
    x = _rand(1, 7, 8)
    y = x.clone()
    y[:, 4:] = _rand(1, 3, 8)
    torch.testing.assert_close(mha(x)[:, :4], mha(y)[:, :4])
    assert not torch.allclose(mha(x, is_causal=False)[:, :4], mha(y, is_causal=False)[:, :4])


# --------------------------------------------------------------------------- positions


def test_sinusoidal_matches_the_paper_formula() -> None:
    d, n = 10, 50
    table = sinusoidal_table(n, d, dtype=D64)
    for pos in (0, 1, 7, 49):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-12)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-12)
    pe = SinusoidalPositionalEncoding(d).eval()  # the default dropout 0.1 is off in eval
    x = _rand(2, n, d)
    torch.testing.assert_close(pe(x), x + table)
    # any length: a long input's first rows equal the short table
    long = pe(torch.zeros(1, 20000, d, dtype=D64))
    torch.testing.assert_close(long[0, :n], table)
    odd = sinusoidal_table(3, 5, dtype=D64)
    torch.testing.assert_close(odd[:, 4], torch.arange(3, dtype=D64).div(10000 ** (4 / 5)).sin())


def test_sinusoidal_default_dropout_is_the_papers() -> None:
    # Vaswani et al. Sec. 5.4: dropout P_drop = 0.1 on the sums of embeddings and encodings
    pe = blockzoo.create("sinusoidal_pe", dim=8)
    assert pe.drop.p == 0.1
    x = torch.ones(4, 50, 8)
    assert (pe.train()(x) == 0).any()  # training drops
    torch.testing.assert_close(pe.eval()(x), x + sinusoidal_table(50, 8))


def test_learned_pe_uses_first_rows_and_rejects_long_inputs() -> None:
    pe = LearnedPositionalEmbedding(4, max_len=6)
    x = torch.randn(2, 5, 4)
    torch.testing.assert_close(pe(x), x + pe.weight[:5])
    with pytest.raises(blockzoo.ShapeError, match="max_len=6"):
        pe(torch.randn(2, 7, 4))


@pytest.mark.parametrize(("n", "scale"), [(6, 1.0), (6, 2.5), (9, 1.0)])
def test_position_tables_are_shared_and_outputs_equal_the_formula(n: int, scale: float) -> None:
    """Sinusoidal: the table is built once per (length, device, dtype) and ``x * scale + PE``
    is unchanged (no multiply at scale 1); learned: ``x + P[:N]`` with or without the slice
    (N = max_len); the same outputs and gradients as the formula (float64, exact), and a hook
    on the dropout still fires."""
    from blockzoo.attention.positional import _shared_sinusoidal_table

    pe = SinusoidalPositionalEncoding(6, scale=scale).eval()
    x = _rand(2, n, 6).requires_grad_(True)
    y = pe(x)
    want = x * scale + sinusoidal_table(n, 6, dtype=D64)
    torch.testing.assert_close(y, want, rtol=0, atol=0)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(gx, g * scale, rtol=0, atol=0)
    table = _shared_sinusoidal_table(n, 6, pe.base, x.device, D64)
    assert _shared_sinusoidal_table(n, 6, pe.base, x.device, D64) is table
    assert _shared_sinusoidal_table(n, 6, pe.base, x.device, torch.float32) is not table
    learned = LearnedPositionalEmbedding(6, max_len=9).double().eval()  # n = 9: no slice
    z = learned(x)
    torch.testing.assert_close(z, x + learned.weight[:n], rtol=0, atol=0)
    z.backward(g)
    torch.testing.assert_close(learned.weight.grad[:n], g.sum(0), rtol=0, atol=0)
    from torch.nn.modules.module import register_module_forward_hook

    fired: list[nn.Module] = []
    for block in (pe, learned):
        handle = block.drop.register_forward_hook(lambda m, *_: fired.append(m))
        block(x)
        handle.remove()
        handle = register_module_forward_hook(lambda m, *_: fired.append(m))  # a global hook
        try:
            block(x)
        finally:
            handle.remove()
    assert fired == [pe.drop, pe.drop, pe, learned.drop, learned.drop, learned]


@pytest.mark.parametrize("dtype", [D64, torch.float32])
def test_rope_complex_product_equals_the_pairwise_rotation(dtype: torch.dtype) -> None:
    """RoPE rotates each pair as one complex product by a shared e^(i m theta) table; the same
    outputs and gradients as ``apply_rotary`` (float64 to 1e-12), for tokens, heads made by a
    transpose, an offset; an input with an odd storage offset (no complex view) and float16
    take the pairwise path."""
    from blockzoo.attention.positional import _rotary_phases, apply_rotary, rotary_angles

    tol = dict(rtol=1e-12, atol=1e-12) if dtype == D64 else dict(rtol=1e-6, atol=1e-6)
    rope = RotaryEmbedding(8)
    qkv = _rand(2, 5, 3 * 8, dtype=dtype)
    heads = qkv.view(2, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)[1]  # (B, h, N, d=4) strided, as MHA's k
    rope4 = RotaryEmbedding(4)
    odd = _rand(2 * 5 * 8 + 1, dtype=dtype)[1:].view(2, 5, 8)  # storage offset 1
    cases = [(rope, _rand(2, 5, 8, dtype=dtype), 0), (rope, _rand(3, 2, 7, 8, dtype=dtype), 11),
             (rope4, heads, 0), (rope4, heads, 3), (rope, odd, 2)]
    for block, x, offset in cases:
        xg = x.detach().clone().requires_grad_(True)
        y = block(xg, offset=offset)
        xw = x.detach().clone().requires_grad_(True)
        want = apply_rotary(xw, rotary_angles(x.shape[-2], block.dim, offset=offset))
        torch.testing.assert_close(y, want, **tol)
        assert y.shape == x.shape and y.dtype == dtype
        g = torch.randn_like(y)
        y.backward(g)
        want.backward(g)
        torch.testing.assert_close(xg.grad, xw.grad, **tol)
        with torch.no_grad():
            torch.testing.assert_close(block(x, offset=offset), want, **tol)
    phase = _rotary_phases(5, 8, 10000.0, 0, torch.device("cpu"), dtype)
    assert _rotary_phases(5, 8, 10000.0, 0, torch.device("cpu"), dtype) is phase
    half = _rand(2, 5, 8, dtype=torch.float16)
    want = apply_rotary(half, rotary_angles(5, 8))
    torch.testing.assert_close(rope(half), want, rtol=0, atol=0)


def _dot_at(rope: RotaryEmbedding, q: torch.Tensor, k: torch.Tensor, m: int, n: int) -> torch.Tensor:
    return (rope(q[None, None], offset=m) * rope(k[None, None], offset=n)).sum()


@settings(max_examples=40, deadline=None)
@given(m=st.integers(0, 300), n=st.integers(0, 300), shift=st.integers(-200, 500),
       seed=st.integers(0, 2**16))
def test_rope_dot_product_depends_only_on_relative_offset(m: int, n: int, shift: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(1, 8, generator=g, dtype=D64), torch.randn(1, 8, generator=g, dtype=D64)
    rope = RotaryEmbedding(8)
    m2, n2 = max(m + shift, 0), max(n + shift, 0)
    if (m2 - n2) != (m - n):
        return
    torch.testing.assert_close(_dot_at(rope, q, k, m, n), _dot_at(rope, q, k, m2, n2))


def test_rope_is_a_rotation_that_depends_on_the_offset() -> None:
    rope = RotaryEmbedding(8)
    x = _rand(2, 3, 10, 8)
    y = rope(x)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(y[..., 0, :], x[..., 0, :])  # position 0 is not rotated
    q, k = _rand(1, 8), _rand(1, 8)
    assert not torch.allclose(_dot_at(rope, q, k, 0, 1), _dot_at(rope, q, k, 0, 5))
    # pair 0 rotates by m * theta_0 = m radians
    e0 = torch.zeros(1, 1, 3, 8, dtype=D64)
    e0[..., 0] = 1
    turns = torch.tensor([[math.cos(m), math.sin(m)] for m in range(3)], dtype=D64)
    torch.testing.assert_close(rope(e0)[0, 0, :, :2], turns)
    with pytest.raises(ValueError, match="even"):
        RotaryEmbedding(7)


def test_mha_with_rope_is_translation_invariant() -> None:
    # With RoPE, self-attention scores depend on offsets only: numbering the positions
    # from 100 instead of 0 changes nothing.
    mha = MultiHeadAttention(8, num_heads=2, rope=True).double().eval()
    x = _rand(1, 6, 8)
    q, k, _ = mha.qkv(x).view(1, 6, 3, 2, 4).permute(2, 0, 3, 1, 4)
    a = mha.rope(q) @ mha.rope(k).transpose(-1, -2)
    b = mha.rope(q, offset=100) @ mha.rope(k, offset=100).transpose(-1, -2)
    torch.testing.assert_close(a, b)
    # and the module is exactly: rotate q, k per head, then attention
    v = mha.qkv(x).view(1, 6, 3, 2, 4)[:, :, 2].transpose(1, 2)
    att = scaled_dot_product_attention(mha.rope(q), mha.rope(k), v, reference=True)
    torch.testing.assert_close(mha(x), mha.out_proj(att.transpose(1, 2).reshape(1, 6, 8)))
    plain = MultiHeadAttention(8, num_heads=2).double().eval()
    plain.load_state_dict(mha.state_dict())
    assert not torch.allclose(mha(x), plain(x))  # the rotation is not a no-op


# --------------------------------------------------------------------------- local window


_LOCAL_METHODS = ("blocked", "per_query")


@pytest.mark.parametrize("method", _LOCAL_METHODS)
@pytest.mark.parametrize(("n", "window", "block"), [(1, 0, None), (9, 2, 3), (23, 3, None), (30, (4, 0), 5),
                                                    (17, (1, 6), 4), (40, 5, 1), (3, (5, 2), 2)])
def test_local_window_equals_band_masked_full_attention(
        monkeypatch: pytest.MonkeyPatch, method: str, n: int, window, block) -> None:
    import blockzoo.attention.local as local

    monkeypatch.setattr(local, "_FORCE", method)
    q, k, v = _rand(2, 3, n, 4), _rand(2, 3, n, 4), _rand(2, 3, n, 4)
    left, right = (window, window) if isinstance(window, int) else window
    want = scaled_dot_product_attention(q, k, v, band_mask(n, left, right), reference=True)
    for use_sdpa in (False, True):  # explicit (CPU default) and SDPA blocks (GPU default)
        got = local_window_attention(q, k, v, window, block_size=block, use_sdpa=use_sdpa)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # the in-place inference forms
        got = local_window_attention(q, k, v, window, block_size=block)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    g = torch.randn_like(want)
    got = torch.autograd.grad(local_window_attention(qg, kg, vg, window, block_size=block), (qg, kg, vg), g)
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    ref = scaled_dot_product_attention(qg, kg, vg, band_mask(n, left, right), reference=True)
    for a, b in zip(got, torch.autograd.grad(ref, (qg, kg, vg), g), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_local_window_cost_model_takes_per_query_only_for_short_blocks() -> None:
    """The per-query method is chosen where the blocked one is mostly tiny-matmul overhead
    (the benchmark's N = 256, w = 2, b = 3), the blocked one for long windows (N = 4096,
    w = 16, the memory goal's configuration) and on a tiny input (N = 8)."""
    from blockzoo.attention.local import _per_query_wins

    cpu = torch.device("cpu")
    assert _per_query_wins(8 * 4, 256, 2, 2, 16, 3, cpu)
    assert not _per_query_wins(4, 4096, 16, 16, 16, 16, cpu)
    assert not _per_query_wins(8 * 4, 8, 2, 2, 4, 3, cpu)
    assert not _per_query_wins(8 * 4, 256, 2, 2, 16, 3, torch.device("meta"))  # CPU only


@pytest.mark.parametrize(("n", "window", "block"), [(9, 2, 3), (30, (4, 0), 5), (17, (1, 6), 4), (40, 5, 1),
                                                    (64, 2, 4), (70, (3, 1), 8)])  # last two: tokens padded
def test_local_window_inference_chunks_equal_band_masked_full_attention(
        monkeypatch: pytest.MonkeyPatch, n: int, window, block) -> None:
    """Under no_grad the blocks run a chunk at a time; with a tiny chunk budget every few
    blocks are a chunk, and the result is still full band attention."""
    import blockzoo.attention.local as local

    monkeypatch.setattr(local, "_CHUNK_ELEMENTS", 1)
    q, k, v = _rand(2, 3, n, 4), _rand(2, 3, n, 4), _rand(2, 3, n, 4)
    left, right = (window, window) if isinstance(window, int) else window
    want = scaled_dot_product_attention(q, k, v, band_mask(n, left, right), reference=True)
    with torch.no_grad():
        torch.testing.assert_close(local_window_attention(q, k, v, window, block_size=block), want)
    m = LocalAttention(12, window=window, num_heads=3, block_size=block).double().eval()
    x = _rand(2, n, 12)
    with torch.no_grad():
        fast = m(x)
    torch.testing.assert_close(fast, m(x.requires_grad_()))  # the autograd path, one shot


def test_local_attention_module_equals_its_dense_band_path() -> None:
    m = LocalAttention(8, window=3, num_heads=2).double().eval()
    x = _rand(2, 37, 8)
    fast = m(x)
    with record_attention(m) as maps:
        dense = m(x)
    torch.testing.assert_close(fast, dense)
    w = maps["attn_map"]
    assert (w[..., ~band_mask(37, 3, 3)] == 0).all()


@pytest.mark.parametrize("method", _LOCAL_METHODS)
@pytest.mark.parametrize(("n", "window", "block"), [(8, 2, 3), (7, (1, 3), None), (64, 2, 4), (3, (4, 1), 2)])
def test_local_attention_blocked_paths_equal_the_dense_band_to_1e_12(
        monkeypatch: pytest.MonkeyPatch, method: str, n: int, window, block) -> None:
    # blocked: short inputs pad the projection once, long ones the tokens; per query: views of
    # the projection; with and without autograd (one chunk under no_grad: the autograd
    # path's maths), outputs and gradients equal the dense band-masked attention, and hooks
    # on the projections still fire
    import blockzoo.attention.local as local

    monkeypatch.setattr(local, "_FORCE", method)
    torch.manual_seed(0)
    m = LocalAttention(12, window=window, num_heads=3, block_size=block).double().eval()
    x = _rand(2, n, 12).requires_grad_()
    with record_attention(m):
        dense = m(x)
    with torch.no_grad():
        torch.testing.assert_close(m(x), dense, rtol=1e-12, atol=1e-12)
    got = m(x)
    torch.testing.assert_close(got, dense, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(got)
    params = [x, *m.parameters()]
    for a, b in zip(torch.autograd.grad(got, params, g), torch.autograd.grad(dense, params, g), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    seen = []
    handles = [c.register_forward_hook(lambda c, *_a: seen.append(c)) for c in (m.qkv, m.proj)]
    try:
        with torch.no_grad():
            torch.testing.assert_close(m(x), dense, rtol=1e-12, atol=1e-12)
    finally:
        for handle in handles:
            handle.remove()
    assert seen == [m.qkv, m.proj]


def _peak_bytes(fn, tmp_path) -> int:
    """Peak live bytes of the CPU allocator during fn(): the profiler trace's running total."""
    import json

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    path = tmp_path / "trace.json"
    prof.export_chrome_trace(str(path))
    mem = [e for e in json.loads(path.read_text())["traceEvents"] if e.get("name") == "[memory]"]
    mem.sort(key=lambda e: e["ts"])
    start = mem[0]["args"]["Total Allocated"] - mem[0]["args"]["Bytes"]
    return max(e["args"]["Total Allocated"] for e in mem) - start


def test_local_attention_never_builds_the_full_matrix(tmp_path) -> None:
    w, h = 8, 2
    m = LocalAttention(8, window=w, num_heads=h).eval()
    peaks = {}
    for n in (1024, 2048):
        x = torch.randn(1, n, 8)
        with torch.no_grad():
            peaks[n] = _peak_bytes(lambda x=x: m(x), tmp_path)
    full_logits = h * 2048 * 2048 * 4  # one float32 N x N matrix per head
    assert 0 < peaks[2048] < full_logits / 10, (peaks, full_logits)
    assert peaks[2048] < 2.5 * peaks[1024], peaks  # grows linearly in N, not quadratically


# --------------------------------------------------------------------------- graph attention


def _graph(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    adj = torch.rand(n, n) < 0.4
    adj[-1] = False  # an isolated node
    adj[2, 2] = True  # one existing self-loop
    tgt, src = adj.nonzero(as_tuple=True)
    return adj, torch.stack((src, tgt))


@pytest.mark.parametrize("loops", [True, False])
def test_gat_equals_the_paper_formula_dense_and_edges(loops: bool) -> None:
    n, dim, h = 7, 6, 2
    gat = GraphAttention(dim, num_heads=h, add_self_loops=loops).double().eval()
    with torch.no_grad():
        gat.bias.normal_()
    adj, edges = _graph(n)
    x = _rand(2, n, dim)
    mask = adj | torch.eye(n, dtype=torch.bool) if loops else adj
    z = gat.lin(x).view(2, n, h, 3)
    want = torch.zeros(2, n, h, 3, dtype=D64)
    for i in range(n):  # the paper's formula, one node at a time
        nbrs = mask[i].nonzero().flatten()
        if len(nbrs) == 0:
            continue
        cat = torch.cat((z[:, i:i + 1].expand(-1, len(nbrs), -1, -1), z[:, nbrs]), dim=-1)  # [Wh_i || Wh_j]
        a = torch.cat((gat.att_dst, gat.att_src), dim=-1)  # (h, 2d)
        e = F.leaky_relu((cat * a).sum(-1), 0.2)  # (B, |N(i)|, h)
        alpha = e.softmax(dim=1)
        want[:, i] = (alpha[..., None] * z[:, nbrs]).sum(1)
    want = want.reshape(2, n, h * 3) + gat.bias
    torch.testing.assert_close(gat(x, adj), want)
    torch.testing.assert_close(gat(x, edges), want)
    if not loops:
        torch.testing.assert_close(gat(x, adj)[:, -1], gat.bias.expand(2, -1))


@pytest.mark.parametrize("loops", [True, False])
def test_graph_dot_product_equals_dense_masked_attention(loops: bool) -> None:
    n, dim, h = 9, 8, 2
    m = GraphDotProductAttention(dim, num_heads=h, add_self_loops=loops).double().eval()
    adj, edges = _graph(n)
    x = _rand(3, n, dim)
    mask = adj | torch.eye(n, dtype=torch.bool) if loops else adj
    q, k, v = m.qkv(x).view(3, n, 3, h, 4).permute(2, 0, 3, 1, 4)
    has = mask.any(-1)
    safe = mask | ~has[:, None]
    att = scaled_dot_product_attention(q, k, v, safe, reference=True) * has[:, None]
    want = m.proj(att.transpose(1, 2).reshape(3, n, dim))
    torch.testing.assert_close(m(x, adj), want)
    torch.testing.assert_close(m(x, edges), want)
    with record_attention(m) as maps:
        torch.testing.assert_close(m(x, adj), want)
    assert torch.isfinite(maps["attn_map"]).all()
    if not loops:
        torch.testing.assert_close(m(x, adj)[:, -1], m.proj.bias.expand(3, -1))


def test_graph_inputs_are_checked() -> None:
    m = GraphDotProductAttention(8, num_heads=2)
    with pytest.raises(blockzoo.ShapeError, match="outside"):
        m(torch.randn(1, 4, 8), torch.tensor([[0, 4], [1, 2]]))
    with pytest.raises(blockzoo.ShapeError, match="edge_index"):
        m(torch.randn(1, 4, 8), torch.zeros(3, 2, dtype=torch.long))


# --------------------------------------------------------------------------- encoder, patches


def test_encoder_block_defaults_are_the_papers() -> None:
    # Vaswani et al.: post-norm LayerNorm(x + Sublayer(x)) (Sec. 3.1), ReLU FFN of width
    # 4 d_model (Sec. 3.3), residual dropout 0.1 (Sec. 5.4); also nn.TransformerEncoderLayer's.
    ours = blockzoo.create("transformer_encoder_block", dim=16, num_heads=4)
    assert ours.norm_first is False
    assert isinstance(ours.act, nn.ReLU)
    assert ours.hidden == 64
    assert ours.drop1.p == ours.drop2.p == ours.drop_ffn.p == 0.1
    ref = nn.TransformerEncoderLayer(16, 4, dim_feedforward=64, batch_first=True).eval()
    ours.eval()
    with torch.no_grad():
        ours.attn.qkv.weight.copy_(ref.self_attn.in_proj_weight)
        ours.attn.qkv.bias.copy_(ref.self_attn.in_proj_bias)
        ours.attn.out_proj.load_state_dict(ref.self_attn.out_proj.state_dict())
        for a, b in ((ours.fc1, ref.linear1), (ours.fc2, ref.linear2), (ours.norm1, ref.norm1),
                     (ours.norm2, ref.norm2)):
            a.load_state_dict(b.state_dict())
        x = torch.randn(2, 7, 16)
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_encoder_block_matches_torch_layer(norm_first: bool, act: str) -> None:
    ref = nn.TransformerEncoderLayer(16, 4, dim_feedforward=24, dropout=0.0, activation=act,
                                     batch_first=True, norm_first=norm_first).eval()
    ours = TransformerEncoderBlock(16, num_heads=4, mlp_ratio=1.5, act_layer=act,
                                   norm_first=norm_first).eval()
    with torch.no_grad():
        ours.attn.qkv.weight.copy_(ref.self_attn.in_proj_weight)
        ours.attn.qkv.bias.copy_(ref.self_attn.in_proj_bias)
        ours.attn.out_proj.load_state_dict(ref.self_attn.out_proj.state_dict())
        for a, b in ((ours.fc1, ref.linear1), (ours.fc2, ref.linear2), (ours.norm1, ref.norm1),
                     (ours.norm2, ref.norm2)):
            a.load_state_dict(b.state_dict())
    x = torch.randn(2, 7, 16)
    kpm = torch.zeros(2, 7, dtype=torch.bool)
    kpm[1, 5:] = True
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
        want = ref(x, src_key_padding_mask=kpm)
        got = ours(x, key_padding_mask=kpm)
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1, :5], want[1, :5], atol=1e-5, rtol=1e-5)


def test_patch_embed_is_a_linear_map_of_flattened_patches() -> None:
    pe = PatchEmbed(3, 8, 4).double()
    x = _rand(2, 3, 8, 12)
    patches = x.unfold(2, 4, 4).unfold(3, 4, 4)  # (B, C, 2, 3, p, p)
    flat = patches.permute(0, 2, 3, 1, 4, 5).reshape(2, 6, 3 * 16)  # (B, N, C*p*p), row-major patches
    want = flat @ pe.proj.weight.reshape(8, -1).T + pe.proj.bias
    torch.testing.assert_close(pe(x), want)
    assert pe.grid(8, 12) == (2, 3)
    with pytest.raises(blockzoo.ShapeError, match=r"PatchEmbed.*multiple of 4"):
        pe(_rand(2, 3, 9, 12))
    padded = PatchEmbed(3, 8, 4, pad=True).double()
    padded.load_state_dict(pe.state_dict())
    y = padded(_rand(1, 3, 9, 10))
    assert y.shape == (1, 3 * 3, 8)
    torch.testing.assert_close(padded(x), pe(x))


@pytest.mark.parametrize(("pad", "size", "norm"), [(False, (8, 12), None), (True, (9, 10), "layernorm")])
def test_patch_embed_small_input_im2col_equals_the_onednn_conv(
        monkeypatch: pytest.MonkeyPatch, pad: bool, size: tuple[int, int], norm: str | None) -> None:
    """Small CPU inputs without autograd run the patch convolution as im2col + GEMM
    (``thnn_conv2d``), larger, hooked and autograd ones as ``nn.Conv2d``: the same output and
    gradients (float64, 1e-12)."""
    from blockzoo.attention import patch_embed

    torch.manual_seed(0)
    pe = PatchEmbed(3, 8, 4, pad=pad, norm_layer=norm).double()
    x = _rand(2, 3, *size)

    def run() -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            y_eval = pe(x)
        xg = x.clone().requires_grad_(True)
        pe.zero_grad()
        y = pe(xg)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        return y_eval, y.detach(), xg.grad, pe.proj.weight.grad.clone(), pe.proj.bias.grad.clone()

    calls: list[int] = []
    thnn = torch._C._nn.thnn_conv2d
    monkeypatch.setattr(torch._C._nn, "thnn_conv2d", lambda *a: calls.append(1) or thnn(*a))
    im2col = run()
    assert len(calls) == 1  # the eval call took the im2col path, the autograd call did not
    monkeypatch.setattr(patch_embed, "_IM2COL_MAX", 0)
    onednn = run()
    handle = pe.proj.register_forward_hook(lambda *_: None)  # a listener: the module path
    monkeypatch.setattr(patch_embed, "_IM2COL_MAX", 1 << 40)
    hooked = run()
    handle.remove()
    assert len(calls) == 1
    for a, b, c in zip(im2col, onednn, hooked, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(c, b, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- linear-complexity family


def test_performer_error_shrinks_as_features_grow() -> None:
    torch.manual_seed(0)
    d = 16
    q, k, v = _rand(2, 2, 64, d) * 0.5, _rand(2, 2, 64, d) * 0.5, _rand(2, 2, 64, d)
    exact = scaled_dot_product_attention(q, k, v, reference=True)
    errors = []
    for m in (8, 64, 512, 4096):
        errs = []
        for seed in range(4):
            omega = random_features(m, d, generator=torch.Generator().manual_seed(seed), dtype=D64)
            errs.append((favor_attention(q, k, v, omega) - exact).abs().mean().item())
        errors.append(sum(errs) / len(errs))
    assert all(a > b for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] < errors[0] / 8, errors
    assert errors[-1] < 0.02, errors


def test_orthogonal_features_are_orthogonal_within_blocks() -> None:
    w = random_features(12, 4, dtype=D64)
    block = w[:4] / w[:4].norm(dim=1, keepdim=True)
    torch.testing.assert_close(block @ block.T, torch.eye(4, dtype=D64))


def test_causal_performer_ignores_the_future() -> None:
    m = PerformerAttention(8, num_heads=2, num_features=16, causal=True).double().eval()
    x = _rand(1, 9, 8)
    y = x.clone()
    y[:, 5:] = _rand(1, 4, 8)
    torch.testing.assert_close(m(x)[:, :5], m(y)[:, :5])
    assert not torch.allclose(m(x)[:, 5:], m(y)[:, 5:])


def test_performer_module_uses_favor_and_redraws() -> None:
    m = PerformerAttention(8, num_heads=2, num_features=32).double().eval()
    x = _rand(1, 10, 8)
    before = m(x)
    m.redraw_features(torch.Generator().manual_seed(3))
    assert not torch.allclose(before, m(x))


@pytest.mark.parametrize("causal", [False, True])
def test_linear_attention_equals_its_quadratic_form(causal: bool) -> None:
    m = LinearAttention(8, num_heads=2, causal=causal, eps=0.0).double().eval()
    x = _rand(2, 9, 8)
    q, k, v = m.qkv(x).view(2, 9, 3, 2, 4).permute(2, 0, 3, 1, 4)
    sim = (F.elu(q) + 1) @ (F.elu(k) + 1).transpose(-1, -2)  # (B, h, N, N)
    if causal:
        sim = sim.tril()
    att = (sim / sim.sum(-1, keepdim=True)) @ v
    torch.testing.assert_close(m(x), m.proj(att.transpose(1, 2).reshape(2, 9, 8)))


@pytest.mark.parametrize(("dim", "heads", "head_dim", "bias"),
                         [(8, 2, None, True), (12, 3, 5, False), (6, 1, None, True)])
def test_linear_attention_joint_heads_equal_the_per_head_products(
        monkeypatch: pytest.MonkeyPatch, dim: int, heads: int, head_dim: int | None, bias: bool) -> None:
    """Small inputs run all heads as one block-diagonal product: the same outputs and gradients as
    the per-head products (float64, 1e-12), with and without autograd."""

    la_module = __import__("sys").modules["blockzoo.attention.linear_attention"]
    torch.manual_seed(0)
    m = LinearAttention(dim, num_heads=heads, head_dim=head_dim, qkv_bias=bias).double()
    x = _rand(3, 7, dim)
    runs = {}
    for label, limit in (("joint", 1 << 40), ("per_head", -1)):
        monkeypatch.setattr(la_module, "_JOINT_HEADS_MAX_MACS", limit)
        with torch.no_grad():
            y_eval = m(x)
        xg = x.clone().requires_grad_(True)
        m.zero_grad()
        y = m(xg)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        runs[label] = (y_eval, y.detach(), xg.grad, m.qkv.weight.grad.clone())
    for a, b in zip(runs["joint"], runs["per_head"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(runs["joint"][0], runs["joint"][1], rtol=1e-12, atol=1e-12)


def _aft_reference(q, k, v, w):
    # Y_t = sigmoid(Q_t) * sum_t' exp(K_t' + w_tt') V_t' / sum_t' exp(K_t' + w_tt')
    e = (k[:, None, :, :] + w[None, :, :, None]).exp()  # (B, T, T', D)
    return q.sigmoid() * (e * v[:, None]).sum(2) / e.sum(2)


def test_aft_variants_equal_the_paper_formula() -> None:
    t, dim = 7, 6
    x = _rand(2, t, dim)
    full = AFTFull(dim, max_len=10).double()
    q, k, v = full.qkv(x).chunk(3, -1)
    torch.testing.assert_close(full(x), full.proj(_aft_reference(q, k, v, full.pos_bias[:t, :t])))
    with pytest.raises(blockzoo.ShapeError, match="max_len=10"):
        full(_rand(1, 11, dim))

    local = AFTLocal(dim, max_len=10, window=2).double()
    local.load_state_dict(full.state_dict())
    i = torch.arange(t)
    wl = torch.where((i[:, None] - i[None]).abs() < 2, full.pos_bias[:t, :t], 0.0)
    torch.testing.assert_close(local(x), full.proj(_aft_reference(q, k, v, wl)))

    simple = AFTSimple(dim).double()
    simple.qkv.load_state_dict(full.qkv.state_dict())
    simple.proj.load_state_dict(full.proj.state_dict())
    torch.testing.assert_close(simple(x), full.proj(_aft_reference(q, k, v, torch.zeros(t, t, dtype=D64))))

    conv = AFTConv(dim, kernel_size=3, num_heads=2).double()
    with torch.no_grad():
        conv.pos_bias.normal_()
    conv.qkv.load_state_dict(full.qkv.state_dict())
    conv.proj.load_state_dict(full.proj.state_dict())
    out = torch.empty(2, t, dim, dtype=D64)
    for head in range(2):  # AFT with the Toeplitz bias w_tt' = w[t' - t + 1] inside the kernel, else 0
        off = i[None] - i[:, None] + 1
        w = torch.where((off >= 0) & (off < 3), conv.pos_bias[head][off.clamp(0, 2)], 0.0)
        sl = slice(3 * head, 3 * head + 3)
        out[..., sl] = _aft_reference(q[..., sl], k[..., sl], v[..., sl], w)
    torch.testing.assert_close(conv(x), conv.proj(out))


@pytest.mark.parametrize(("t", "kernel_size", "heads"),
                         [(7, 3, 2), (2, 5, 3), (1, 3, 1), (9, 1, 2), (12, 7, 3)])
def test_aft_conv_shifted_sums_equal_the_depthwise_conv(monkeypatch: pytest.MonkeyPatch, t: int,
                                                        kernel_size: int, heads: int) -> None:
    """Eager AFT-conv sums s shifted taps channels-last instead of calling conv1d twice (which it
    still does while compiling): the same outputs and gradients (float64, 1e-12), for sequences
    shorter than the kernel too."""
    torch.manual_seed(0)
    conv = AFTConv(6, kernel_size=kernel_size, num_heads=heads).double()
    with torch.no_grad():
        conv.pos_bias.normal_()
    x = _rand(2, t, 6)

    def run() -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            y_eval = conv(x)
        xg = x.clone().requires_grad_(True)
        conv.zero_grad()
        y = conv(xg)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        return y_eval, y.detach(), xg.grad, conv.pos_bias.grad.clone(), conv.qkv.weight.grad.clone()

    taps = run()
    # a dispatch mode (FLOP counter) sees the conv form: its multiply-adds are counted
    from blockzoo.bench.flops import count_flops

    b, d = x.shape[0], conv.hidden_dim
    linears = 2 * b * t * 6 * 3 * d + 2 * b * t * d * 6
    assert count_flops(conv, (x,)) == linears + 2 * (2 * b * d * t * kernel_size)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # the conv1d path
    convs = run()
    for a, b in zip(taps, convs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_linformer_projects_along_the_sequence_and_slices_for_short_inputs() -> None:
    m = LinformerAttention(8, seq_len=12, num_heads=2, proj_len=3).double().eval()
    x = _rand(2, 12, 8)
    q, k, v = m.qkv(x).chunk(3, -1)
    kk = (m.e @ k).view(2, 3, 2, 4).transpose(1, 2)
    vv = (m.f @ v).view(2, 3, 2, 4).transpose(1, 2)
    att = scaled_dot_product_attention(q.view(2, 12, 2, 4).transpose(1, 2), kk, vv, reference=True)
    torch.testing.assert_close(m(x), m.proj(att.transpose(1, 2).reshape(2, 12, 8)))
    # shorter N = the first N columns of E, F = zero-padding the projected keys/values
    short = x[:, :7]
    q, k, v = m.qkv(short).chunk(3, -1)
    kpad, vpad = F.pad(k, (0, 0, 0, 5)), F.pad(v, (0, 0, 0, 5))
    kk = (m.e @ kpad).view(2, 3, 2, 4).transpose(1, 2)
    vv = (m.f @ vpad).view(2, 3, 2, 4).transpose(1, 2)
    att = scaled_dot_product_attention(q.view(2, 7, 2, 4).transpose(1, 2), kk, vv, reference=True)
    torch.testing.assert_close(m(short), m.proj(att.transpose(1, 2).reshape(2, 7, 8)))
    with pytest.raises(blockzoo.ShapeError, match="seq_len=12"):
        m(_rand(1, 13, 8))


def test_external_attention_double_normalisation() -> None:
    m = ExternalAttention(8, memory_size=5).double()
    x = _rand(2, 6, 8)
    with record_attention(m) as maps:
        y = m(x)
    a = maps["attn_map"]
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 6, dtype=D64))  # l1 over the memory
    soft = m.mk(x).softmax(dim=1)  # softmax over tokens
    torch.testing.assert_close(a, soft / (m.eps + soft.sum(-1, keepdim=True)), atol=1e-15, rtol=1e-12)
    torch.testing.assert_close(y, m.mv(a))


def test_ufo_is_invariant_to_input_scale() -> None:
    # XNorm(Q) XNorm(K^T V): with no q/k/v biases, x -> c x scales Q by c and K^T V by c^2,
    # and both normalisations remove it. Softmax attention would change.
    m = UFOAttention(8, num_heads=2, qkv_bias=False, eps=0.0).double()
    x = _rand(2, 10, 8)
    torch.testing.assert_close(m(x), m(3.7 * x))
    mha = MultiHeadAttention(8, num_heads=2, qkv_bias=False).double()
    assert not torch.allclose(mha(x), mha(3.7 * x))


def test_separable_attention_context_scores_and_formula() -> None:
    m = SeparableSelfAttention(8).double()
    x = _rand(2, 10, 8)
    with record_attention(m) as maps:
        y = m(x)
    cs = maps["attn_map"]
    torch.testing.assert_close(cs.sum(1), torch.ones(2, 1, dtype=D64))
    cv = (cs * m.to_k(x)).sum(1, keepdim=True)
    torch.testing.assert_close(y, m.proj(F.relu(m.to_v(x)) * cv))


def test_separable_attention_eval_path_equals_the_autograd_path() -> None:
    # without autograd: c_v as one bmm and the gate in place; equal to the autograd path (1e-12)
    torch.manual_seed(0)
    m = SeparableSelfAttention(8).double().eval()
    x = _rand(2, 10, 8)
    with torch.no_grad():
        got = m(x)
    torch.testing.assert_close(got, m(x).detach(), rtol=1e-12, atol=1e-12)
    cv = (m.to_i(x).softmax(1) * m.to_k(x)).sum(1, keepdim=True)
    torch.testing.assert_close(got, m.proj(F.relu(m.to_v(x)) * cv).detach(), rtol=1e-12, atol=1e-12)


def test_emsa_without_reduction_and_one_head_is_plain_attention() -> None:
    m = EMSA(8, num_heads=1, sr_ratio=1).double()
    x = _rand(2, 9, 8)
    k, v = m.kv(x).chunk(2, -1)
    want = m.proj(scaled_dot_product_attention(m.q(x), k, v, reference=True))
    torch.testing.assert_close(m(x), want)
    r = EMSA(8, num_heads=2, sr_ratio=2).double()
    assert r(_rand(2, 6 * 5, 8), hw=(6, 5)).shape == (2, 30, 8)
    with record_attention(r) as maps:
        r(_rand(2, 6 * 5, 8), hw=(6, 5))
    assert maps["attn_map"].shape == (2, 2, 30, 9)  # keys reduced to 3 x 3
    # the multi-head interaction: 1x1 conv over heads, softmax, instance norm
    x = _rand(2, 30, 8)
    q = r.q(x).view(2, 30, 2, 4).transpose(1, 2)
    kv = r.sr_norm(r.sr(x.transpose(1, 2).reshape(2, 8, 6, 5)).flatten(2).transpose(1, 2))
    k, v = r.kv(kv).view(2, 9, 2, 2, 4).permute(2, 0, 3, 1, 4)
    a = nn.functional.instance_norm(r.transform(q @ k.transpose(-1, -2) / 2).softmax(-1))
    torch.testing.assert_close(r(x, hw=(6, 5)), r.proj((a @ v).transpose(1, 2).reshape(2, 30, 8)))
    r.train()
    assert torch.isfinite(r(_rand(1, 1, 8), hw=(1, 1))).all()
    with pytest.raises(blockzoo.ShapeError, match="hw"):
        r(_rand(2, 30, 8), hw=(4, 5))
    with pytest.raises(ValueError, match="even"):
        EMSA(8, sr_ratio=3)


def _emsa_written_out(m: EMSA, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """EMSA as first written: Q K^T / sqrt(d), the 1x1 conv, softmax, IN by mean and var."""
    b, n, c = x.shape
    h, d = m.num_heads, m.head_dim
    q = m.q(x).view(b, n, h, d).transpose(1, 2)
    z = m.sr(x.transpose(1, 2).reshape(b, c, *hw))
    k, v = m.kv(m.sr_norm(z.flatten(2).transpose(1, 2))).view(b, -1, 2, h, d).permute(2, 0, 3, 1, 4)
    a = m.transform((q @ k.transpose(-1, -2)) / math.sqrt(d)).softmax(-1)
    mean = a.mean(dim=(-2, -1), keepdim=True)
    var = a.var(dim=(-2, -1), unbiased=False, keepdim=True)
    a = (a - mean) / (var + 1e-5).sqrt()
    return m.proj((a @ v).transpose(1, 2).reshape(b, n, c))


@pytest.mark.parametrize("hw", [(6, 5), (1, 1)])
def test_emsa_folded_scale_and_layer_norm_equal_the_written_out_maths(hw: tuple[int, int]) -> None:
    # the 1/sqrt(d) folded into the 1x1 conv's weight and IN as a layer norm over (N, M):
    # outputs and gradients equal the explicit mean / var computation to 1e-12 (float64)
    torch.manual_seed(0)
    m = EMSA(8, num_heads=4, sr_ratio=2).double()
    x = _rand(2, hw[0] * hw[1], 8, dtype=D64).requires_grad_()
    for training in (False, True):
        m.train(training)
        got = m(x, hw=hw)
        want = _emsa_written_out(m, x, hw)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        g = torch.randn_like(got)
        grads = torch.autograd.grad(got, [x, *m.parameters()], g)
        wants = torch.autograd.grad(want, [x, *m.parameters()], g)
        for a, b in zip(grads, wants, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # hooks on the submodules (run as functional ops when unhooked) still fire, the output unchanged
    seen = []
    mods = (m.q, m.sr, m.sr_norm, m.kv, m.transform, m.proj)
    handles = [mod.register_forward_hook(lambda mod, *_a: seen.append(mod)) for mod in mods]
    try:
        hooked = m(x, hw=hw)
    finally:
        for handle in handles:
            handle.remove()
    assert set(seen) == set(mods)
    torch.testing.assert_close(hooked, _emsa_written_out(m, x, hw), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("heads", "sr", "n"),
                         [(4, 2, 8), (4, 2, 9), (2, 4, 10), (1, 4, 7), (2, 2, 2), (2, 8, 3)])
def test_emsa_eval_path_equals_the_autograd_path(heads: int, sr: int, n: int) -> None:
    # without autograd: the reduction as per-tap multiply-adds on the token layout and the
    # head mix as a matmul with a cached scaled weight; equal to the autograd path (1e-12),
    # also after the weights change in place
    from blockzoo import _kept

    torch.manual_seed(0)
    m = EMSA(8, num_heads=heads, sr_ratio=sr).double().eval()
    with torch.no_grad():
        for prm in m.parameters():
            prm.normal_()
    x = _rand(2, n, 8)
    calls = []
    real = m._reduce_taps
    m._reduce_taps = lambda z: calls.append(1) or real(z)
    for _ in range(2):
        with torch.no_grad():
            got = m(x)
        assert calls and calls.pop() == 1
        if heads > 1:
            assert "transform" in _kept._DERIVED[m]
        torch.testing.assert_close(got, m(x).detach(), rtol=1e-12, atol=1e-12)
        assert not calls  # autograd on: the conv path
        with torch.no_grad():
            m.sr.weight.mul_(-1.5)
            if heads > 1:
                m.transform.weight.add_(0.5)


def test_emsa_has_no_bias_that_cannot_change_its_output() -> None:
    # h > 1: IN makes every row of A sum to 0, so a shift of V (W^V's bias, the norm's
    # shift) adds sum_m A[n, m] b = 0; a shift of K and the 1x1 conv's bias are
    # constant over the keys, which the softmax cancels.
    m = EMSA(8, num_heads=2, sr_ratio=2).double()
    keys = set(m.state_dict())
    assert not keys & {"kv.bias", "sr_norm.bias", "transform.bias"}
    assert {"q.bias", "kv.weight", "sr_norm.weight", "sr.bias", "transform.weight", "proj.bias"} <= keys
    with record_attention(m) as maps:
        m(_rand(2, 6 * 5, 8), hw=(6, 5))
    torch.testing.assert_close(maps["attn_map"].sum(-1), torch.zeros(2, 2, 30, dtype=D64))
    # h = 1: no IN, rows sum to 1, and the value bias is a real one
    one = EMSA(8, num_heads=1, sr_ratio=2)
    assert {"kv.bias", "sr_norm.bias"} <= set(one.state_dict())
    assert "kv.bias" not in EMSA(8, num_heads=1, qkv_bias=False).state_dict()


def test_separable_attention_scores_have_no_bias() -> None:
    # W_I maps each token to one score; a bias adds the same number to all N of them
    keys = set(SeparableSelfAttention(8).state_dict())
    assert "to_i.bias" not in keys
    assert {"to_i.weight", "to_k.bias", "to_v.bias", "proj.bias"} <= keys
    assert not any(k.endswith("bias") for k in SeparableSelfAttention(8, bias=False).state_dict())


def test_muse_is_attention_plus_weighted_convs() -> None:
    m = MUSEAttention(8, num_heads=2, kernel_sizes=(1, 3)).double().eval()
    with torch.no_grad():
        m.alpha.copy_(torch.tensor([0.3, -0.2]))
    x = _rand(2, 6, 8)
    mha = MultiHeadAttention(8, num_heads=2).double().eval()
    mha.qkv.load_state_dict(m.qkv.state_dict())
    mha.out_proj.load_state_dict(m.proj.state_dict())
    vc = m.qkv(x).chunk(3, -1)[2].transpose(1, 2)
    a = m.alpha.softmax(0)
    conv = a[0] * m.pointwise[0](m.depthwise[0](vc)) + a[1] * m.pointwise[1](m.depthwise[1](vc))
    torch.testing.assert_close(m(x), mha(x) + conv.transpose(1, 2))


PERMUTATION_EQUIVARIANT = [
    lambda: MultiHeadAttention(8, num_heads=2),
    lambda: ExternalAttention(8, memory_size=4),
    lambda: SeparableSelfAttention(8),
    lambda: LinearAttention(8, num_heads=2),
    lambda: PerformerAttention(8, num_heads=2, num_features=16),
    lambda: UFOAttention(8, num_heads=2),
    lambda: AFTSimple(8),
    lambda: blockzoo.create("simplified_self_attention", dim=8, num_heads=2),
]


@pytest.mark.parametrize("make", PERMUTATION_EQUIVARIANT)
def test_position_free_blocks_are_permutation_equivariant(make) -> None:
    m = make().double().eval()
    x = _rand(2, 11, 8)
    perm = torch.randperm(11)
    torch.testing.assert_close(m(x)[:, perm], m(x[:, perm]))


LONG = [
    lambda: LinearAttention(16, num_heads=2),
    lambda: PerformerAttention(16, num_heads=2, num_features=16),
    lambda: UFOAttention(16, num_heads=2),
    lambda: SeparableSelfAttention(16),
    lambda: AFTSimple(16),
    lambda: AFTConv(16, kernel_size=5, num_heads=2),
    lambda: ExternalAttention(16, memory_size=8),
    lambda: LinformerAttention(16, seq_len=4096, num_heads=2, proj_len=8),
    lambda: LocalAttention(16, window=4, num_heads=2),
]


@pytest.mark.parametrize("make", LONG)
def test_linear_complexity_blocks_on_long_inputs(make) -> None:
    m = make().eval()
    with torch.no_grad():
        y = m(torch.randn(1, 4096, 16))
    assert y.shape == (1, 4096, 16) and torch.isfinite(y).all()


def test_aft_full_eval_path_equals_the_autograd_path_and_follows_the_bias() -> None:
    """AFT-full without autograd (exp(w) kept until pos_bias changes, one product for both sums)
    equals the autograd path in float64, at full and shorter lengths, and after pos_bias is
    changed in place or loaded."""
    from blockzoo.attention.aft import AFTFull

    torch.manual_seed(0)
    aft = AFTFull(6, max_len=10, hidden_dim=5).double()
    with torch.no_grad():
        aft.pos_bias.normal_()
    for step in range(3):
        for n in (10, 4, 10):
            x = torch.randn(3, n, 6, dtype=torch.float64)
            with torch.no_grad():
                fast = aft(x)
            torch.testing.assert_close(fast, aft(x), rtol=1e-12, atol=1e-12)
        with torch.no_grad():
            if step == 0:
                aft.pos_bias.mul_(-3.0)  # in place: the kept exponential must follow
            else:
                state = {k: v.clone() for k, v in aft.state_dict().items()}
                state["pos_bias"].normal_()
                aft.load_state_dict(state)
