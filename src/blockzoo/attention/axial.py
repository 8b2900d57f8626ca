"""Axial attention: softmax self-attention along one spatial axis at a time.

Paper: Axial Attention in Multidimensional Transformers (Ho, Kalchbrenner,
Weissenborn, Salimans; arXiv 1912.12180, 2019).

Letters: B batch, C channels, H W spatial, h heads, d head dim.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo.attention._attend import attend
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require, require_divides
from blockzoo.registry import Example, images, register

__all__ = ["AxialAttention"]

_AXES = ("h", "w", "both")


class _AxisAttention(nn.Module):
    """Multi-head self-attention along one axis (``"h"``: each column, ``"w"``: each row)."""

    def __init__(self, channels: int, axis: str, num_heads: int, head_dim: int, qkv_bias: bool,
                 **fk: Any) -> None:
        super().__init__()
        self.axis, self.num_heads, self.head_dim = axis, num_heads, head_dim
        inner = num_heads * head_dim
        self.qkv = nn.Conv2d(channels, 3 * inner, 1, bias=qkv_bias, **fk)
        self.proj = nn.Conv2d(inner, channels, 1, **fk)
        self.attn_map = AttentionMap("weights")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        h, d = self.num_heads, self.head_dim
        qkv = self.qkv(x).view(B, 3, h, d, H, W)
        # Sequence axis last-but-one: along H each column (W of them) is one sequence.
        perm = (1, 0, 2, 5, 4, 3) if self.axis == "h" else (1, 0, 2, 4, 5, 3)
        q, k, v = qkv.permute(*perm)  # (B, h, W, H, d) along H; (B, h, H, W, d) along W
        # y = softmax(q k^T / sqrt(d)) v, along the axis only
        y = attend(q, k, v, self.attn_map)
        back = (0, 1, 4, 3, 2) if self.axis == "h" else (0, 1, 4, 2, 3)
        y = y.permute(*back).reshape(B, h * d, H, W)  # (B, h*d, H, W)
        return self.proj(y)


@register(
    name="axial_attention",
    family="attention",
    paper="Axial Attention in Multidimensional Transformers",
    arxiv="1912.12180",
    year=2019,
    input="image",
    example=Example(config=dict(channels=16, num_heads=2), inputs=images(), size=(8, 8),
                    out_shape="same", tiny=dict(channels=4, num_heads=1)),
)
class AxialAttention(nn.Module):
    r"""Axial attention: multi-head self-attention along H (columns), then along W (rows).

    Ho et al., "Axial Attention in Multidimensional Transformers", arXiv 1912.12180.

    Equation, along H (each column j is its own sequence of H pixels)::

        q, k, v = W_qkv x                                 (1x1 conv, h heads of size d)
        y[:, i, j] = sum_{i'} softmax_{i'}(q[:, i, j] . k[:, i', j] / sqrt(d)) v[:, i', j]
        out = W_o y

    Along W the roles of rows and columns swap. ``axis="both"`` applies the H pass and
    then the W pass to its output (each pass with its own projections), so every pixel
    reaches the whole image in O(HW (H + W)) instead of O((HW)^2).

    Args:
        channels: C, input and output channels.
        axis: ``"h"`` (attend along H only), ``"w"`` (along W only) or ``"both"`` (H, then W).
        num_heads: h, attention heads per pass.
        head_dim: d, the size of each head (default ``channels // num_heads``).
        qkv_bias: whether the q/k/v projection has a bias.

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, C, H, W).

    Deviations:
        - No positional embedding inside the block: the paper adds positional
          embeddings at the model's input; a drop-in block leaves position to the
          surrounding network (an axial pass is permutation-equivariant along its axis).
        - The block is the attention sublayer only (no norm, residual or MLP around it).

    Example:
        >>> attn = AxialAttention(32, num_heads=4)
        >>> attn(torch.randn(2, 32, 7, 9)).shape
        torch.Size([2, 32, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        axis: str = "both",
        num_heads: int = 1,
        head_dim: int | None = None,
        qkv_bias: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(axis in _AXES, f"AxialAttention: axis={axis!r} must be one of {_AXES}")
        require(num_heads >= 1, f"AxialAttention: num_heads={num_heads} must be >= 1")
        if head_dim is None:
            head_dim = require_divides("AxialAttention", "num_heads", num_heads, "channels", channels,
                                       hint="(or give head_dim)")
        self.channels, self.axis, self.num_heads, self.head_dim = channels, axis, num_heads, head_dim
        fk = dict(device=device, dtype=dtype)
        axes = ("h", "w") if axis == "both" else (axis,)
        self.passes = nn.ModuleList(
            _AxisAttention(channels, a, num_heads, head_dim, qkv_bias, **fk) for a in axes
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, "B C H W", name="AxialAttention", C=self.channels)
        for p in self.passes:
            x = p(x)
        return x

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, axis={self.axis!r}, num_heads={self.num_heads}, "
                f"head_dim={self.head_dim}")
