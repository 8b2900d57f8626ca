"""Linformer: keys and values projected along the sequence to k rows.

Paper: Linformer: Self-Attention with Linear Complexity (Wang, arXiv 2006.04768, 2020).

Letters: B batch, N tokens, C model dim (= dim), h heads, d head dim, k projected
length (= proj_len), n = seq_len the longest sequence.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from blockzoo._fastcall import call, own
from blockzoo.attention.dot_product import scaled_dot_product_attention
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import ShapeError, check_shape, require, require_divides
from blockzoo.registry import Example, register, tokens

__all__ = ["LinformerAttention"]


@register(
    name="linformer_attention",
    family="attention",
    paper="Linformer: Self-Attention with Linear Complexity",
    arxiv="2006.04768",
    year=2020,
    input="tokens",
    example=Example(config=dict(dim=16, seq_len=16, num_heads=4, proj_len=4), inputs=tokens("dim"),
                    size=(8,), out_shape="same", tiny=dict(dim=4, num_heads=2, seq_len=12, proj_len=3)),
    size_arg="seq_len",
)
class LinformerAttention(nn.Module):
    r"""Multi-head attention over keys and values compressed along the sequence to k rows.

    Wang et al., "Linformer: Self-Attention with Linear Complexity", arXiv 2006.04768,
    eq. (7).

    Equation, per head::

        head_i = softmax(Q_i (E K_i)^T / sqrt(d)) (F V_i),   E, F: (k, n) learned
        y = Concat(heads) W^O

    Cost O(N k): linear in N for a fixed k.

    Args:
        dim: C, the token width.
        seq_len: n, the longest sequence (the projections E, F have n columns).
        num_heads: h.
        proj_len: k, the projected length (256 in the paper).
        head_dim: d (default C // h).
        share_kv: one projection for keys and values (E = F, the paper's key-value
            sharing); E and F are always shared across heads (headwise sharing).
        qkv_bias: biases on the q, k, v projections.
        dropout: dropout on the attention weights.

    Shape:
        - Input: (B, N, C), C = dim, N <= seq_len; longer inputs raise ``ShapeError``.
        - Output: (B, N, C).

    Deviations:
        A sequence shorter than ``seq_len`` uses the first N columns of E and F, which is
        exactly padding its projected keys and values with zeros up to ``seq_len`` (the
        paper trains at a fixed length and does not say).

    Example:
        >>> attn = LinformerAttention(64, seq_len=4096, num_heads=4, proj_len=128)
        >>> attn(torch.randn(2, 4096, 64)).shape
        torch.Size([2, 4096, 64])
    """

    def __init__(
        self,
        dim: int,
        seq_len: int,
        num_heads: int = 8,
        *,
        proj_len: int = 256,
        head_dim: int | None = None,
        share_kv: bool = False,
        qkv_bias: bool = True,
        dropout: float = 0.0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(seq_len > 0 and proj_len > 0,
                f"LinformerAttention: seq_len={seq_len}, proj_len={proj_len} must be positive")
        if head_dim is None:
            head_dim = require_divides("LinformerAttention", "num_heads", num_heads, "dim", dim)
        self.dim, self.seq_len, self.num_heads, self.head_dim = dim, seq_len, num_heads, head_dim
        self.proj_len, self.share_kv, self.dropout = proj_len, share_kv, dropout
        fk = dict(device=device, dtype=dtype)
        self.qkv = nn.Linear(dim, 3 * num_heads * head_dim, bias=qkv_bias, **fk)
        self.proj = nn.Linear(num_heads * head_dim, dim, **fk)
        self.e = nn.Parameter(torch.empty(proj_len, seq_len, **fk))
        self.f = None if share_kv else nn.Parameter(torch.empty(proj_len, seq_len, **fk))
        self.attn_map = AttentionMap("weights")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """E, F ~ N(0, 1 / n): each projected row, a sum over up to n tokens, keeps the scale of K, V."""
        for p in (self.e, self.f):
            if p is not None:
                nn.init.normal_(p, std=1.0 / math.sqrt(self.seq_len))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (isinstance(x, torch.Tensor) and x.dim() == 3 and x.shape[2] == self.dim):
            check_shape(x, "B N C", name="LinformerAttention", C=self.dim)  # raises, naming the misfit
        b, n = x.shape[0], x.shape[1]
        if n > self.seq_len:
            raise ShapeError(f"LinformerAttention: input has N={n} tokens, more than seq_len={self.seq_len}")
        h, d = self.num_heads, self.head_dim
        mods = self._modules
        # the projections as functional ops unless hooked (blockzoo._fastcall)
        q, k, v = call(mods["qkv"], x).chunk(3, dim=-1)  # 3 x (B, N, h*d)
        e, f = own(self, "e"), own(self, "f")  # f: None when shared
        if torch.compiler.is_compiling() or n != self.seq_len:  # the first N columns
            e, f = e[:, :n], (None if f is None else f[:, :n])
        f = e if f is None else f
        # E K, F V along the sequence, as one batched product with E broadcast (stride 0): ``e @ k``
        # folds the batch into rows and so copies k and the product (tests/test_copies.py)
        k = torch.bmm(e.expand(b, -1, -1), k).view(b, self.proj_len, h, d).transpose(1, 2)  # (B, h, k, d)
        v = torch.bmm(f.expand(b, -1, -1), v).view(b, self.proj_len, h, d).transpose(1, 2)  # (B, h, k, d)
        q = q.view(b, n, h, d).transpose(1, 2)  # (B, h, N, d)
        p = self.dropout if self.training else 0.0
        if mods["attn_map"].active:
            out, w = scaled_dot_product_attention(q, k, v, None, p, return_weights=True)
            mods["attn_map"](w)  # (B, h, N, k)
        else:
            out = scaled_dot_product_attention(q, k, v, None, p)
        return call(mods["proj"], out.transpose(1, 2).reshape(b, n, h * d))  # (B, N, C)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, seq_len={self.seq_len}, num_heads={self.num_heads}, "
                f"proj_len={self.proj_len}, share_kv={self.share_kv}")
