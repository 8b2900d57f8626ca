"""Simplified self-attention: multi-head dot-product attention without q/k/v projections.

Paper: Attention Is All You Need (Vaswani, arXiv 1706.03762, 2017) — the attention
operation; the "simplified" variant (q = k = v = the input's head slices, only an
output projection) is the one listed by the External-Attention-pytorch catalogue.

Letters: B batch, N tokens, C model dim (= dim), h heads, d = C / h.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo._fastcall import call
from blockzoo.attention.dot_product import scaled_dot_product_attention
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require_divides
from blockzoo.registry import Example, register, tokens

__all__ = ["SimplifiedSelfAttention"]


@register(
    name="simplified_self_attention",
    family="attention",
    paper="Attention Is All You Need",
    arxiv="1706.03762",
    year=2017,
    input="tokens",
    example=Example(config=dict(dim=16, num_heads=4), inputs=tokens("dim"), size=(8,),
                    out_shape="same", tiny=dict(dim=4, num_heads=2)),
)
class SimplifiedSelfAttention(nn.Module):
    r"""Self-attention whose queries, keys and values are the input itself, split in heads.

    Vaswani et al., "Attention Is All You Need", arXiv 1706.03762, eq. (1), with the
    q/k/v projections removed (identity).

    Equation, with x split into heads x^1..x^h of width d::

        head_i = softmax(x^i (x^i)^T / sqrt(d)) x^i
        y = Concat(head_1, ..., head_h) W^O + b

    Args:
        dim: C, the token width.
        num_heads: h; must divide C.
        dropout: dropout on the attention weights.

    Shape:
        - Input: (B, N, C), C = dim, any N.
        - Output: (B, N, C).

    Example:
        >>> attn = SimplifiedSelfAttention(64, num_heads=8)
        >>> attn(torch.randn(2, 10, 64)).shape
        torch.Size([2, 10, 64])
    """

    def __init__(
        self, dim: int, num_heads: int = 8, *, dropout: float = 0.0, device: Any = None, dtype: Any = None
    ) -> None:
        super().__init__()
        require_divides("SimplifiedSelfAttention", "num_heads", num_heads, "dim", dim)
        self.dim, self.num_heads, self.dropout = dim, num_heads, dropout
        self.proj = nn.Linear(dim, dim, device=device, dtype=dtype)
        self.attn_map = AttentionMap("weights")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[2] != self.dim:
            check_shape(x, "B N C", name="SimplifiedSelfAttention", C=self.dim)  # raises, naming the misfit
        b, n, c = x.shape
        h = self.num_heads
        heads = x.view(b, n, h, c // h).transpose(1, 2)  # (B, h, N, d)
        p = self.dropout if self.training else 0.0
        m = self._modules  # submodules without nn.Module.__getattr__
        attn_map = m["attn_map"]
        if attn_map.active:
            out, w = scaled_dot_product_attention(heads, heads, heads, None, p, return_weights=True)
            attn_map(w)  # (B, h, N, N)
        else:
            out = F.scaled_dot_product_attention(heads, heads, heads, dropout_p=p)
        # the projection as its functional op unless hooked (blockzoo._fastcall)
        return call(m["proj"], out.transpose(1, 2).reshape(b, n, c))  # (B, N, C)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}"
