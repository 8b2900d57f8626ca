"""UFO-ViT attention: softmax-free, cross-normalised (XNorm), linear in the tokens.

Paper: UFO-ViT: High Performance Linear Vision Transformer without Softmax (Song,
arXiv 2109.14382, 2021).

Letters: B batch, N tokens, C model dim (= dim), h heads, d head dim.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo._fastcall import call, own
from blockzoo.checks import check_shape, require_divides
from blockzoo.registry import Example, register, tokens

__all__ = ["UFOAttention", "xnorm"]


def xnorm(x: torch.Tensor, gamma: torch.Tensor, dim: int, eps: float = 1e-6) -> torch.Tensor:
    """XNorm: gamma * x / ||x||_2 along ``dim`` (UFO-ViT eq. (7))."""
    return gamma * x / (x.norm(dim=dim, keepdim=True) + eps)


@register(
    name="ufo_attention",
    family="attention",
    paper="UFO-ViT: High Performance Linear Vision Transformer without Softmax",
    arxiv="2109.14382",
    year=2021,
    input="tokens",
    example=Example(config=dict(dim=16, num_heads=4), inputs=tokens("dim"), size=(8,),
                    out_shape="same", tiny=dict(dim=4, num_heads=2)),
)
class UFOAttention(nn.Module):
    r"""UFO-ViT self-attention: K^T V first, then cross-normalisation; no softmax.

    Song, "UFO-ViT: High Performance Linear Vision Transformer without Softmax",
    arXiv 2109.14382, eqs. (5)-(7).

    Equation, per head::

        XNorm(a) = gamma * a / ||a||_2                 (L2 along the channel axis)
        A(x)     = XNorm(Q) XNorm(K^T V)               K^T V: (d, d), first
        y        = Concat(heads) W^O

    Q is normalised over its d channels per token; K^T V over its key-channel axis, so
    each of its d columns is a unit "centroid" and y is a sum of cosine-like similarities.
    Cost O(N d^2): linear in N.

    Args:
        dim: C, the token width.
        num_heads: h.
        head_dim: d (default C // h).
        qkv_bias: biases on the q, k, v projections.
        eps: guard of the L2 norms.

    Shape:
        - Input: (B, N, C), C = dim, any N.
        - Output: (B, N, C).

    Deviations:
        gamma is one learnable scalar per head, shared by both XNorms, initialised to 1.

    Example:
        >>> attn = UFOAttention(64, num_heads=4)
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
        eps: float = 1e-6,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        if head_dim is None:
            head_dim = require_divides("UFOAttention", "num_heads", num_heads, "dim", dim)
        self.dim, self.num_heads, self.head_dim, self.eps = dim, num_heads, head_dim, eps
        fk = dict(device=device, dtype=dtype)
        self.qkv = nn.Linear(dim, 3 * num_heads * head_dim, bias=qkv_bias, **fk)
        self.proj = nn.Linear(num_heads * head_dim, dim, **fk)
        self.gamma = nn.Parameter(torch.ones(num_heads, 1, 1, **fk))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (isinstance(x, torch.Tensor) and x.dim() == 3 and x.shape[2] == self.dim):
            check_shape(x, "B N C", name="UFOAttention", C=self.dim)  # raises, naming the misfit
        b, n = x.shape[0], x.shape[1]
        h, d = self.num_heads, self.head_dim
        if not torch.is_grad_enabled():
            return self._inference(x, b, n, h, d)
        q, k, v = self.qkv(x).view(b, n, 3, h, d).permute(2, 0, 3, 1, 4)  # 3 x (B, h, N, d)
        kv = k.transpose(-1, -2) @ v  # (B, h, d, d)
        # XNorm(Q) XNorm(K^T V)
        out = xnorm(q, self.gamma, -1, self.eps) @ xnorm(kv, self.gamma, -2, self.eps)  # (B, h, N, d)
        return self.proj(out.transpose(1, 2).reshape(b, n, h * d))  # (B, N, C)

    def _inference(self, x: torch.Tensor, b: int, n: int, h: int, d: int) -> torch.Tensor:
        """``forward`` without autograd: q, k, v laid out per head in one copy (instead of the
        three that ``matmul`` makes of the permuted views) for plain ``bmm``; the norms in place,
        and both gammas (per head, scalars) applied once on the output:
        XNorm(Q) XNorm(K^T V) = gamma^2 (Q (K^T V / ||K^T V||)) / ||Q||, each norm + eps."""
        mods = self._modules
        qkv = call(mods["qkv"], x).view(b, n, 3, h, d).permute(2, 0, 3, 1, 4)  # 3 x (B, h, N, d)
        q, k, v = qkv.reshape(3, b * h, n, d).unbind(0)  # 3 x (B h, N, d), contiguous
        kv = torch.bmm(k.transpose(1, 2), v)  # (B h, d, d)
        kv.div_(torch.linalg.vector_norm(kv, dim=-2, keepdim=True).add_(self.eps))
        out = torch.bmm(q, kv).view(b, h, n, d)  # (B, h, N, d)
        gamma = own(self, "gamma")
        norm_q = torch.linalg.vector_norm(q, dim=-1, keepdim=True).add_(self.eps)  # (B h, N, 1)
        out.mul_(gamma * gamma).div_(norm_q.view(b, h, n, 1))
        return call(mods["proj"], out.transpose(1, 2).reshape(b, n, h * d))  # (B, N, C)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, head_dim={self.head_dim}"
