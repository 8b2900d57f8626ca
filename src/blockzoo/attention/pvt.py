r"""Spatial-reduction attention (SRA) of the Pyramid Vision Transformer.

Papers: Pyramid Vision Transformer: A Versatile Backbone for Dense Prediction without
Convolutions (Wang et al., arXiv 2102.12122, 2021), Eq. (3)-(4); PVT v2: Improved
Baselines with Pyramid Vision Transformer (Wang et al., arXiv 2106.13797, 2021) keeps it.

Letters: B batch, C channels (= dim), H W spatial, R reduction ratio, N = H W queries,
M = floor(H / R) floor(W / R) keys, h heads.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo._fastcall import call, invoke
from blockzoo.act import LayerSpec, create_norm
from blockzoo.attention.dot_product import MultiHeadAttention
from blockzoo.attention.patch_embed import _patch_conv
from blockzoo.checks import ShapeError, check_shape, require
from blockzoo.registry import Example, images, register

__all__ = ["SpatialReductionAttention"]


@register(
    name="spatial_reduction_attention",
    family="attention",
    paper="Pyramid Vision Transformer: A Versatile Backbone for Dense Prediction without Convolutions",
    arxiv="2102.12122",
    year=2021,
    input="image",
    example=Example(config=dict(dim=16, num_heads=2, sr_ratio=2), inputs=images("dim"), size=(8, 8),
                    out_shape="same", tiny=dict(dim=4, num_heads=1)),
)
class SpatialReductionAttention(nn.Module):
    r"""Multi-head attention whose keys and values come from a map R times smaller per side.

    Wang et al., "Pyramid Vision Transformer", arXiv 2102.12122, Eq. (3)-(4).

    Equation, x the N = H W tokens::

        SR(x)  = LN(Conv_{R x R, stride R}(x))                      (M = (H / R)(W / R) tokens)
        SRA(Q, K, V) = Concat(head_1, ..., head_h) W^O
        head_j = Attention(Q W_j^Q, SR(K) W_j^K, SR(V) W_j^V)     Q = K = V = x

    The attention is the catalogue's ``MultiHeadAttention`` (fused SDPA) in its
    cross-attention form: queries from x, keys and values from SR(x). With R = 1 there is
    no reduction (and no conv or norm): plain multi-head self-attention.

    Args:
        dim: C. num_heads: h.
        sr_ratio: R (PVT v2-B0: 8, 4, 2, 1 in stages 1-4).
        qkv_bias: biases on the q, k, v projections (PVT v2: True).
        norm_layer: the norm of SR(x) (LayerNorm).

    Shape:
        - Input: (B, C, H, W), C = dim, H, W >= R (the stride-R conv floors: a side that
          is not a multiple of R loses its last H mod R rows for the keys, as in the
          paper's code; a side shorter than R raises ``ShapeError``).
        - Output: (B, C, H, W).
        - ``attend_tokens(x, H, W)`` (what PVT's blocks call): (B, N, C) -> (B, N, C).

    Example:
        >>> sra = SpatialReductionAttention(64, num_heads=2, sr_ratio=4)
        >>> sra(torch.randn(2, 64, 56, 40)).shape
        torch.Size([2, 64, 56, 40])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 1,
        *,
        sr_ratio: int = 8,
        qkv_bias: bool = True,
        norm_layer: LayerSpec = "layernorm",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(sr_ratio >= 1, f"SpatialReductionAttention: sr_ratio={sr_ratio} must be >= 1")
        fk = dict(device=device, dtype=dtype)
        self.dim, self.sr_ratio = dim, sr_ratio
        self.attn = MultiHeadAttention(dim, num_heads, qkv_bias=qkv_bias, **fk)
        if sr_ratio > 1:
            self.sr: nn.Module | None = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio, **fk)
            self.norm: nn.Module | None = create_norm(norm_layer, dim, **fk)
        else:
            self.sr = self.norm = None

    def attend_tokens(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """SRA on tokens (B, N, C) of an H x W map (row-major) -> (B, N, C)."""
        if self.sr is None:
            return self.attn(x)
        r = self.sr_ratio
        if height < r or width < r:
            raise ShapeError(f"SpatialReductionAttention: the map is {height}x{width}, smaller than "
                             f"sr_ratio={r} on a side; expected H, W >= {r}")
        b, _, c = x.shape
        # SR(x) = LN(Conv_{R x R, stride R}(x))
        img = x.transpose(1, 2).reshape(b, c, height, width)  # (B, C, H, W)
        kv = call(self.norm, _patch_conv(self.sr, img).flatten(2).transpose(1, 2))  # (B, M, C)
        return invoke(self.attn, x, kv, kv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = check_shape(x, "B C H W", name="SpatialReductionAttention", C=self.dim)
        h, w = dims["H"], dims["W"]
        out = self.attend_tokens(x.flatten(2).transpose(1, 2), h, w)  # (B, N, C)
        return out.transpose(1, 2).reshape(x.shape)  # (B, C, H, W)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, sr_ratio={self.sr_ratio}"
