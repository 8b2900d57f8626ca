r"""Gated positional self-attention (GPSA), ConViT's soft convolutional inductive bias.

Paper: ConViT: Improving Vision Transformers with Soft Convolutional Inductive Biases
(d'Ascoli et al., arXiv 2103.10697, 2021), Sec. 3, Eq. (5)-(6).

Letters: B batch, C channels (= dim), H W spatial, N = H W tokens, h heads, d = C / h
head dim, (dx, dy) the offset of key j from query i on the token grid.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from blockzoo._memo import memo_table
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require, require_divides
from blockzoo.registry import Example, images, register

__all__ = ["GatedPositionalSelfAttention", "relative_offsets"]


@memo_table()
def relative_offsets(height: int, width: int, *, device: Any = None, dtype: Any = None) -> torch.Tensor:
    """r_ij = (dx, dy, dx^2 + dy^2) for every query i and key j of an H x W grid (row-major): (N, N, 3).

    Built once per arguments and shared (``blockzoo._memo``): do not modify it in place.

    dx = x_j - x_i (columns), dy = y_j - y_i (rows).
    """
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device),
                            indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()  # (N,)
    dx = (xs[None, :] - xs[:, None]).to(dtype or torch.get_default_dtype())  # (N, N)
    dy = (ys[None, :] - ys[:, None]).to(dx.dtype)  # (N, N)
    return torch.stack([dx, dy, dx * dx + dy * dy], -1)  # (N, N, 3)


@register(
    name="gated_positional_self_attention",
    family="attention",
    paper="ConViT: Improving Vision Transformers with Soft Convolutional Inductive Biases",
    arxiv="2103.10697",
    year=2021,
    input="image",
    example=Example(config=dict(dim=16, num_heads=4), inputs=images("dim"), size=(6, 5),
                    out_shape="same", tiny=dict(dim=8, num_heads=2)),
    exempt={"grad": "pos_proj.bias (in the released code and its checkpoints) adds one constant per head "
                    "to the positional logits before a softmax over keys: it never changes the output, so "
                    "its gradient is exactly 0; it is kept so the reference checkpoints load"},
)
class GatedPositionalSelfAttention(nn.Module):
    r"""Self-attention mixing content attention with a learned positional attention, gated per head.

    d'Ascoli et al., "ConViT", arXiv 2103.10697, Eq. (5)-(6).

    Equation, for head h, query i and key j with relative offset r_ij = (dx, dy, dx^2 + dy^2)::

        A^h_ij = (1 - sigma(lambda_h)) softmax_j(Q^h_i K^h_j^T / sqrt(d))
                 + sigma(lambda_h)     softmax_j(v_pos^h . r_ij + b_h)
        GPSA(X) = Concat_h(A^h X W_val^h) W_out + b_out

    Each head's positional attention depends on offsets only (a soft convolution
    kernel); the gate lambda_h (initialised to 1, sigma(1) = 0.73) lets training move
    each head between positional and content attention. ``reset_parameters`` applies the
    paper's locality initialisation (Sec. 3): W_val = I and, for the k x k heads of a
    k x k grid of centres Delta^h (k = floor(sqrt(h))), v_pos^h = alpha (2 Delta_x^h,
    2 Delta_y^h, -1) with alpha = ``locality_strength``, so head h attends around
    offset Delta^h like one tap of a k x k convolution.

    Args:
        dim: C.
        num_heads: h (must divide C).
        qkv_bias: biases on the query, key and value projections (ConViT: False).
        locality_strength: alpha of the locality initialisation (ConViT: 1).

    Shape:
        - Input: (B, C, H, W), C = dim, any H, W; output (B, C, H, W).
        - ``attend_tokens(x, H, W)`` (what ConViT's blocks call): tokens (B, N, C) of an
          H x W grid in row-major order, N = H W -> (B, N, C).

    Deviations:
        The reference renormalises A by its row sums after the gate; both softmaxes sum
        to 1, so their convex combination already does and the division is left out.
        q, k and v come from one fused (3C, C) projection (the reference keeps q, k in
        ``qk`` and v in ``v``; the weights layout concatenates them). The relative
        offsets are built for any H x W grid (the reference assumes a square one).
        ``pos_proj``'s bias is kept (see the grad exemption) for checkpoint compatibility.

    Example:
        >>> gpsa = GatedPositionalSelfAttention(64, num_heads=4)
        >>> gpsa(torch.randn(2, 64, 14, 10)).shape
        torch.Size([2, 64, 14, 10])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 4,
        *,
        qkv_bias: bool = False,
        locality_strength: float = 1.0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(num_heads > 0, f"GatedPositionalSelfAttention: num_heads={num_heads} must be positive")
        self.head_dim = require_divides("GatedPositionalSelfAttention", "num_heads", num_heads, "dim", dim)
        self.dim, self.num_heads, self.locality_strength = dim, num_heads, locality_strength
        fk = dict(device=device, dtype=dtype)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **fk)
        self.out_proj = nn.Linear(dim, dim, **fk)
        self.pos_proj = nn.Linear(3, num_heads, **fk)
        self.gating_param = nn.Parameter(torch.ones(num_heads, **fk))
        self.attn_map = AttentionMap("weights")  # the gated A (B, h, N, N): rows sum to 1
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Default linear init, then the paper's locality init: W_val = I, v_pos^h = alpha (2 Delta^h, -1)."""
        self.qkv.reset_parameters()
        self.out_proj.reset_parameters()
        self.pos_proj.reset_parameters()
        c, k = self.dim, math.isqrt(self.num_heads)
        center = (k - 1) / 2
        with torch.no_grad():
            self.qkv.weight[2 * c:].copy_(torch.eye(c))
            self.gating_param.fill_(1.0)
            for row in range(k):  # head p = row + k * col attends around (dy, dx) = (row - c, col - c)
                for col in range(k):
                    p = row + k * col
                    self.pos_proj.weight[p] = self.locality_strength * torch.tensor(
                        [2 * (col - center), 2 * (row - center), -1.0])

    def attention(self, x: torch.Tensor, height: int, width: int,
                  offsets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The gated attention weights A (B, h, N, N) and the values (B, h, N, d) for tokens x (B, N, C).

        ``offsets``: ``relative_offsets(height, width)`` when the caller already has it (a
        network computes it once per forward for all its GPSA layers)."""
        b, n, _ = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim)  # (B, N, 3, h, d)
        # one copy into the head layout: q, k and v are then contiguous, and q k^T and a v run
        # as batched products on them without the three copies of permuted views
        q, k, v = qkv.permute(2, 0, 3, 1, 4).contiguous()  # 3 x (B, h, N, d)
        # softmax_j(Q_i K_j^T / sqrt(d))
        content = (q @ k.transpose(-2, -1) * self.head_dim ** -0.5).softmax(-1)  # (B, h, N, N)
        if offsets is None:
            offsets = relative_offsets(height, width, device=x.device, dtype=x.dtype)  # r: (N, N, 3)
        r = offsets
        # softmax_j(v_pos^h . r_ij + b_h)
        positional = self.pos_proj(r).permute(2, 0, 1).softmax(-1)  # (h, N, N)
        gate = torch.sigmoid(self.gating_param).view(-1, 1, 1)  # (h, 1, 1)
        # A = (1 - sigma(lambda)) content + sigma(lambda) positional
        return self.attn_map((1.0 - gate) * content + gate * positional), v

    def attend_tokens(self, x: torch.Tensor, height: int, width: int,
                      offsets: torch.Tensor | None = None) -> torch.Tensor:
        """GPSA on tokens (B, N, C) of an H x W grid (row-major) -> (B, N, C)."""
        check_shape(x, "B N C", name="GatedPositionalSelfAttention", N=height * width, C=self.dim)
        a, v = self.attention(x, height, width, offsets)
        out = (a @ v).transpose(1, 2).reshape(x.shape)  # (B, N, C)
        return self.out_proj(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = check_shape(x, "B C H W", name="GatedPositionalSelfAttention", C=self.dim)
        out = self.attend_tokens(x.flatten(2).transpose(1, 2), dims["H"], dims["W"])  # (B, N, C)
        return out.transpose(1, 2).reshape(x.shape)  # (B, C, H, W)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, locality_strength={self.locality_strength}"
