"""Performer attention: FAVOR+ positive orthogonal random features for softmax attention.

Paper: Rethinking Attention with Performers (Choromanski, arXiv 2009.14794, 2020).

Letters: B batch, N tokens, C model dim (= dim), h heads, d head dim, m random
features.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from blockzoo._fastcall import call
from blockzoo.attention.linear_attention import linear_attention
from blockzoo.checks import check_shape, require, require_divides
from blockzoo.registry import Example, register, tokens

__all__ = ["PerformerAttention", "favor_attention", "positive_random_features", "random_features"]


def random_features(
    num_features: int, dim: int, *, orthogonal: bool = True, generator: torch.Generator | None = None,
    device: Any = None, dtype: Any = None,
) -> torch.Tensor:
    """(m, d) projection omega with rows ~ N(0, I_d); orthogonal within each block of d rows.

    Orthogonal blocks come from the QR factorisation of a Gaussian matrix; each row is then
    rescaled to the norm of an independent Gaussian vector, so rows keep the N(0, I_d)
    marginal (FAVOR+, section 2.4).
    """
    g = torch.randn(num_features, dim, generator=generator, dtype=torch.float64)
    if orthogonal:
        blocks = []
        for start in range(0, num_features, dim):  # loop over ceil(m / d) blocks, not positions
            rows = min(dim, num_features - start)
            q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
            blocks.append(q.T[:rows])
        norms = g.norm(dim=1, keepdim=True)  # chi(d)-distributed lengths
        g = torch.cat(blocks) * norms
    return g.to(device=device, dtype=dtype or torch.get_default_dtype())


def positive_random_features(x: torch.Tensor, omega: torch.Tensor, *, is_query: bool) -> torch.Tensor:
    r"""phi(x) = exp(omega x - |x|^2 / 2) / sqrt(m), shifted for stability.

    The shift (per query row, or per (batch, head) for keys) multiplies the numerator
    and denominator of the attention ratio alike, so it cancels exactly.
    """
    logits = x @ omega.T - (x * x).sum(-1, keepdim=True) / 2  # (B, h, N, m)
    dims = (-1,) if is_query else (-2, -1)
    shift = logits.amax(dim=dims, keepdim=True).detach()
    return (logits - shift).exp() / math.sqrt(omega.shape[0])


def favor_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, omega: torch.Tensor, *, causal: bool = False
) -> torch.Tensor:
    r"""FAVOR+ estimate of softmax(q k^T / sqrt(d)) v with the random features ``omega`` (m, d).

    Equation (Choromanski et al., Lemma 1 and eq. (4))::

        exp(q . k / sqrt(d)) = E_w[phi(q') phi(k')],  q' = q / d^(1/4), k' = k / d^(1/4)
        out = D^-1 (phi(Q') (phi(K')^T V)),  D = diag(phi(Q') (phi(K')^T 1_N))

    Shape:
        - q, k: (B, h, N, d), v: (B, h, N, d_v); output (B, h, N, d_v).
    """
    s = q.shape[-1] ** -0.25
    fq = positive_random_features(q * s, omega, is_query=True)  # (B, h, N, m)
    fk = positive_random_features(k * s, omega, is_query=False)  # (B, h, N, m)
    return linear_attention(fq, fk, v, causal=causal, eps=0.0)


@register(
    name="performer_attention",
    family="attention",
    paper="Rethinking Attention with Performers",
    arxiv="2009.14794",
    year=2020,
    input="tokens",
    example=Example(config=dict(dim=16, num_heads=4, num_features=8), inputs=tokens("dim"), size=(8,),
                    out_shape="same", tiny=dict(dim=4, num_heads=2, num_features=4)),
)
class PerformerAttention(nn.Module):
    r"""Multi-head Performer attention: softmax attention estimated by FAVOR+ in linear time.

    Choromanski et al., "Rethinking Attention with Performers", arXiv 2009.14794.

    Equation, per head, with omega (m, d) rows ~ N(0, I_d), orthogonal in blocks::

        phi(x) = exp(omega x - |x|^2 / 2) / sqrt(m)          (positive random features)
        head   = D^-1 phi(Q') (phi(K')^T V),  Q' = Q / d^(1/4), K' = K / d^(1/4)
        D      = diag(phi(Q') phi(K')^T 1_N)
        y      = Concat(heads) W^O

    E[phi(q') . phi(k')] = exp(q . k / sqrt(d)), so the output approaches softmax
    attention as m grows (tested). Cost O(N m d): linear in N.

    Args:
        dim: C, the token width.
        num_heads: h.
        head_dim: d (default C // h).
        num_features: m (default ceil(d ln d), at least d: the paper's Theta(d log d)).
        orthogonal: orthogonal random features (FAVOR+) or i.i.d. Gaussian ones.
        qkv_bias: biases on the q, k, v projections.
        causal: prefix-sum (unidirectional) attention.

    Shape:
        - Input: (B, N, C), C = dim, any N.
        - Output: (B, N, C).

    Deviations:
        The features are drawn once at construction and stored as a buffer (saved in the
        state_dict); call ``redraw_features()`` to resample them (the paper redraws
        periodically during training).

    Example:
        >>> attn = PerformerAttention(64, num_heads=4, num_features=64)
        >>> attn(torch.randn(2, 1024, 64)).shape
        torch.Size([2, 1024, 64])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        head_dim: int | None = None,
        num_features: int | None = None,
        orthogonal: bool = True,
        qkv_bias: bool = True,
        causal: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        if head_dim is None:
            head_dim = require_divides("PerformerAttention", "num_heads", num_heads, "dim", dim)
        m = num_features or max(head_dim, math.ceil(head_dim * math.log(max(head_dim, 2))))
        require(m > 0, f"PerformerAttention: num_features={num_features} must be positive")
        self.dim, self.num_heads, self.head_dim, self.num_features = dim, num_heads, head_dim, m
        self.orthogonal, self.causal = orthogonal, causal
        fk = dict(device=device, dtype=dtype)
        self.qkv = nn.Linear(dim, 3 * num_heads * head_dim, bias=qkv_bias, **fk)
        self.proj = nn.Linear(num_heads * head_dim, dim, **fk)
        self.register_buffer("features", random_features(m, head_dim, orthogonal=orthogonal, **fk))

    @torch.no_grad()
    def redraw_features(self, generator: torch.Generator | None = None) -> None:
        """Draw a fresh omega (m, d) in place."""
        self.features.copy_(random_features(self.num_features, self.head_dim, orthogonal=self.orthogonal,
                                            generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (isinstance(x, torch.Tensor) and x.dim() == 3 and x.shape[2] == self.dim):
            check_shape(x, "B N C", name="PerformerAttention", C=self.dim)  # raises, naming the misfit
        b, n = x.shape[0], x.shape[1]
        h, d = self.num_heads, self.head_dim
        if not (self.causal or torch.is_grad_enabled()):
            return self._inference(x, b, n, h, d)
        q, k, v = self.qkv(x).view(b, n, 3, h, d).permute(2, 0, 3, 1, 4)  # 3 x (B, h, N, d)
        out = favor_attention(q, k, v, self.features, causal=self.causal)  # (B, h, N, d)
        return self.proj(out.transpose(1, 2).reshape(b, n, h * d))  # (B, N, C)

    def _inference(self, x: torch.Tensor, b: int, n: int, h: int, d: int) -> torch.Tensor:
        """Non-causal ``forward`` without autograd, with what cancels in D^-1 phi(Q') (phi(K')^T V)
        left out: 1 / sqrt(m) (a factor of numerator and denominator alike) and, for the
        queries, |q'|^2 / 2 (constant along the row, so the row-max shift removes it exactly:
        phi(q') is exp(q' omega^T - max_row(q' omega^T)) up to such factors); d^(-1/4) goes
        into omega, q, k, v are laid out per head in one copy for ``bmm``, and the maps are
        shifted and exponentiated in place."""
        mods = self._modules
        qkv = call(mods["qkv"], x).view(b, n, 3, h, d).permute(2, 0, 3, 1, 4)  # 3 x (B, h, N, d)
        q, k, v = qkv.reshape(3, b * h, n, d).unbind(0)  # 3 x (B h, N, d), contiguous
        s = d ** -0.25
        omega = self._buffers["features"] * s  # (m, d), omega / d^(1/4)
        fq = torch.matmul(q, omega.t())  # (B h, N, m): q' omega^T
        fq = fq.sub_(fq.amax(-1, keepdim=True)).exp_()
        fk = torch.matmul(k, omega.t())  # (B h, N, m): k' omega^T - |k'|^2 / 2, shifted by its max
        fk.sub_(k.square().sum(-1, keepdim=True), alpha=s * s / 2)
        fk = fk.sub_(fk.amax((-2, -1), keepdim=True)).exp_()
        kv = torch.bmm(fk.transpose(1, 2), v)  # (B h, m, d): phi(K')^T V
        den = torch.bmm(fq, fk.sum(1).unsqueeze(-1))  # (B h, N, 1): phi(Q') phi(K')^T 1_N
        out = torch.bmm(fq, kv).div_(den).view(b, h, n, d)  # (B, h, N, d)
        return call(mods["proj"], out.transpose(1, 2).reshape(b, n, h * d))  # (B, N, C)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"num_features={self.num_features}, orthogonal={self.orthogonal}, causal={self.causal}")
