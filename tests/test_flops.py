"""FLOP counts equal the formulas written out here: attention (SDPA on every path, masked,
causal, backward), a ViT encoder block and a ViT, local-window and linear attention; and the
ops the counter has no formula for are named, not silently counted 0.

Letters: B batch, h heads, N query tokens, M key tokens, d q/k head dim, d_v value head dim,
C width. A multiply-accumulate is 2 FLOPs; the attention product is counted in full whether
masked or causal (as torch's own flash-attention formulas do).
"""

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import blockzoo
from blockzoo.bench.flops import FlopReport, count_flops, flop_report
from blockzoo.cli import main
from blockzoo.viz.shapes import layer_table


def sdpa_fwd(b: int, h: int, n: int, m: int, d: int, dv: int) -> int:
    return 2 * b * h * n * m * d + 2 * b * h * n * m * dv  # Q K^T, then A V


def sdpa_bwd(b: int, h: int, n: int, m: int, d: int, dv: int, *, recompute: bool = True) -> int:
    # Q K^T again (a fused kernel keeps no weights; the math path's autograd stored them);
    # dA = dO V^T; dV = A^T dO; dQ = dS K; dK = dS^T Q
    return 2 * b * h * n * m * ((d if recompute else 0) + dv + dv + d + d)


class SDPA(nn.Module):
    def __init__(self, **kw: object) -> None:
        super().__init__()
        self.kw = kw

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, **self.kw)


MASKS = {
    "none": lambda n, m: {},
    "causal": lambda n, m: {"is_causal": True},
    "bool": lambda n, m: {"attn_mask": torch.rand(n, m) > 0.3},
    "float": lambda n, m: {"attn_mask": torch.randn(1, 1, n, m)},
}


# (N, M, d, d_v): equal shapes take CPU's fused flash kernel, unequal ones the math path.
@pytest.mark.parametrize("shape", [(6, 6, 8, 8), (6, 9, 8, 4)], ids=["fused", "math"])
@pytest.mark.parametrize("mask", list(MASKS))
def test_sdpa_forward_and_backward_flops(shape: tuple[int, int, int, int], mask: str) -> None:
    n, m, d, dv = shape
    b, h = 2, 3
    mod = SDPA(**MASKS[mask](n, m))
    q, k, v = (torch.randn(b, h, s, w, requires_grad=True) for s, w in ((n, d), (m, d), (m, dv)))
    assert count_flops(mod, (q, k, v)) == sdpa_fwd(b, h, n, m, d, dv)
    total = sdpa_fwd(b, h, n, m, d, dv) + sdpa_bwd(b, h, n, m, d, dv, recompute=(n, d) == (m, dv))
    assert count_flops(mod, (q, k, v), backward=True) == total


def mha_flops(b: int, n: int, c: int, h: int) -> int:
    # fused q, k, v projection; attention with d = C / h per head; output projection
    return 2 * b * n * c * 3 * c + sdpa_fwd(b, h, n, n, c // h, c // h) + 2 * b * n * c * c


@pytest.mark.parametrize("masks", ["none", "causal", "attn_mask", "key_padding"])
def test_multi_head_attention_flops(masks: str) -> None:
    b, n, c, h = 2, 7, 16, 4
    mha = blockzoo.create("multi_head_attention", dim=c, num_heads=h).eval()
    x = torch.randn(b, n, c)
    kw = {"none": {}, "causal": {"is_causal": True},
          "attn_mask": {"attn_mask": torch.rand(n, n) > 0.5},
          "key_padding": {"key_padding_mask": torch.tensor([[False] * n, [False] * 4 + [True] * 3])}}[masks]
    assert flop_report(lambda t: mha(t, **kw), (x,)) == FlopReport(mha_flops(b, n, c, h), ())


def test_vit_encoder_block_flops() -> None:
    b, n, c, h, hidden = 2, 5, 24, 3, 96  # ViT's block: pre-norm, GELU, mlp_ratio 4
    block = blockzoo.create("transformer_encoder_block", dim=c, num_heads=h, mlp_ratio=4.0).eval()
    ffn = 2 * b * n * c * hidden + 2 * b * n * hidden * c
    assert flop_report(block, (torch.randn(b, n, c),)) == FlopReport(mha_flops(b, n, c, h) + ffn, ())
    # the per-layer table (``blockzoo shapes``) adds up to the same number, SDPA included
    assert sum(r.flops for r in layer_table(block, (torch.randn(b, n, c),))) == mha_flops(b, n, c, h) + ffn


def test_vit_flops() -> None:
    b, p, d, depth, classes = 1, 16, 192, 2, 10  # ViT-Ti width and heads, 2 blocks, 48x32 image
    model = blockzoo.create_model("vit_tiny", num_classes=classes, depth=depth).eval()
    n = 1 + (48 // p) * (32 // p)  # class token + patches
    patches = 2 * b * (n - 1) * (3 * p * p) * d
    block = mha_flops(b, n, d, 3) + 2 * (2 * b * n * d * 4 * d)
    flops = count_flops(model, (torch.randn(b, 3, 48, 32),))
    assert flops == patches + depth * block + 2 * b * d * classes


def test_local_window_attention_flops() -> None:
    b, n, c, h, w, blk = 2, 10, 16, 4, 2, 3
    d, nb, keys = c // h, -(-n // blk), blk + 2 * w  # blocks of blk queries, each sees blk + 2w keys
    attn = blockzoo.create("local_attention", dim=c, window=w, num_heads=h, block_size=blk).eval()
    core = sdpa_fwd(b, h * nb, blk, keys, d, d)
    proj = 2 * b * n * c * 3 * c + 2 * b * n * c * c
    assert flop_report(attn, (torch.randn(b, n, c),)) == FlopReport(proj + core, ())
    # a longer sequence projects the tokens padded to the blocked layout (w + nb*blk + w rows)
    n2 = 64
    rows = -(-n2 // blk) * blk + 2 * w
    core2 = sdpa_fwd(b, h * -(-n2 // blk), blk, keys, d, d)
    proj2 = 2 * b * rows * c * 3 * c + 2 * b * n2 * c * c
    assert flop_report(attn, (torch.randn(b, n2, c),)) == FlopReport(proj2 + core2, ())
    # the SDPA path of the blocked computation counts the same
    from blockzoo.attention.local import local_window_attention
    qkv = [torch.randn(b, h, n, d) for _ in range(3)]
    for use_sdpa in (False, True):
        blocked = functools.partial(local_window_attention, window=w, block_size=blk, use_sdpa=use_sdpa)
        assert count_flops(blocked, qkv) == core, use_sdpa


def test_linear_attention_flops() -> None:
    b, n, c, h = 2, 9, 16, 4
    d = c // h
    attn = blockzoo.create("linear_attention", dim=c, num_heads=h).eval()
    # sum_j phi(k_j) v_j^T: 2 N d d; phi(q_i) . sum_j phi(k_j): 2 N d; phi(q_i)^T (kv): 2 N d d
    core = b * h * (2 * n * d * d + 2 * n * d + 2 * n * d * d)
    proj = 2 * b * n * c * 3 * c + 2 * b * n * c * c
    assert flop_report(attn, (torch.randn(b, n, c),)) == FlopReport(proj + core, ())


class Spectral(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.irfft(torch.fft.rfft(x) * 2, n=x.shape[-1])


def test_ops_without_formula_are_named() -> None:
    rep = flop_report(Spectral(), (torch.randn(2, 8),))
    assert rep == FlopReport(0, ("_fft_c2r", "_fft_r2c"))
    # counted or elementwise ops are not reported
    assert flop_report(nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.LayerNorm(4)),
                       (torch.randn(2, 4),)).uncounted == ()


def test_info_names_uncounted_ops(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "global_filter"]) == 0
    assert "uncounted ops: _fft_c2r, _fft_r2c" in capsys.readouterr().out
    assert main(["info", "multi_head_attention"]) == 0
    assert "uncounted" not in capsys.readouterr().out
