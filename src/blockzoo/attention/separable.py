"""Separable self-attention of MobileViTv2: linear in the number of tokens.

Paper: Separable Self-attention for Mobile Vision Transformers (Mehta, arXiv
2206.02680, 2022).

Letters: B batch, N tokens, C model dim (= dim).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo._fastcall import call
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape
from blockzoo.registry import Example, register, tokens

__all__ = ["SeparableSelfAttention"]


@register(
    name="separable_self_attention",
    family="attention",
    paper="Separable Self-attention for Mobile Vision Transformers",
    arxiv="2206.02680",
    year=2022,
    input="tokens",
    example=Example(config=dict(dim=16), inputs=tokens("dim"), size=(8,), out_shape="same",
                    tiny=dict(dim=4)),
)
class SeparableSelfAttention(nn.Module):
    r"""MobileViTv2 separable self-attention: one context vector from context scores.

    Mehta & Rastegari, "Separable Self-attention for Mobile Vision Transformers",
    arXiv 2206.02680, eq. (3)-(4) and Fig. 4c.

    Equation::

        c_s = softmax over N of (x W_I)             (B, N, 1) context scores
        c_v = sum_n c_s[n] (x W_K)[n]                (B, 1, C) context vector
        y   = (ReLU(x W_V) * c_v) W_O                (B, N, C)

    Cost O(N C^2): linear in N. The context scores pass through ``attn_map`` (B, N, 1).

    Args:
        dim: C, the token width.
        bias: biases of W_K, W_V and W_O (W_I never has one, see Deviations).
        dropout: dropout on the context scores.

    Shape:
        - Input: (B, N, C), C = dim, any N.
        - Output: (B, N, C).

    Deviations:
        MobileViTv2 applies it to unfolded image patches (B, P, N, C); here the block takes
        a token sequence (B, N, C); the patch axis is a batch axis in the paper anyway.
        W_I has no bias (the official fused projection has one for it): a single number
        added to all N scores, which the softmax over N cancels.

    Example:
        >>> attn = SeparableSelfAttention(64)
        >>> attn(torch.randn(2, 100, 64)).shape
        torch.Size([2, 100, 64])
    """

    def __init__(
        self, dim: int, *, bias: bool = True, dropout: float = 0.0, device: Any = None, dtype: Any = None
    ) -> None:
        super().__init__()
        self.dim, self.dropout = dim, dropout
        fk = dict(device=device, dtype=dtype)
        self.to_i = nn.Linear(dim, 1, bias=False, **fk)  # the softmax over N cancels a bias
        self.to_k = nn.Linear(dim, dim, bias=bias, **fk)
        self.to_v = nn.Linear(dim, dim, bias=bias, **fk)
        self.proj = nn.Linear(dim, dim, bias=bias, **fk)
        self.attn_map = AttentionMap("weights")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if len(shape) != 3 or shape[2] != self.dim:  # integer tests first; the message on failure only
            check_shape(x, "B N C", name="SeparableSelfAttention", C=self.dim)
        mods = self._modules
        if not (self.dropout > 0 and self.training):
            y = self._stacked(x, mods)
            if y is not None:
                return y
        scores = mods["attn_map"](call(mods["to_i"], x).softmax(dim=1))  # (B, N, 1)
        scores = F.dropout(scores, self.dropout, self.training) if self.dropout > 0 else scores
        # c_v = sum_n c_s[n] K[n]
        context = (scores * call(mods["to_k"], x)).sum(dim=1, keepdim=True)  # (B, 1, C)
        return call(mods["proj"], F.relu(call(mods["to_v"], x)) * context)  # (B, N, C)

    def _stacked(self, x: torch.Tensor, mods: dict[str, nn.Module]) -> torch.Tensor | None:
        """``forward`` without autograd and dropout: c_v as one (B, 1, N) @ (B, N, C) product
        (not a product and a strided sum over N), the gate applied in place on the fresh ReLU(V)."""
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return None
        scores = mods["attn_map"](call(mods["to_i"], x).softmax(dim=1))  # (B, N, 1)
        # c_v = sum_n c_s[n] K[n]
        context = torch.bmm(scores.transpose(1, 2), call(mods["to_k"], x))  # (B, 1, C)
        return call(mods["proj"], torch.relu(call(mods["to_v"], x)).mul_(context))  # (B, N, C)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
