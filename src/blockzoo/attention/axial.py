"""Axial attention: softmax self-attention along one spatial axis at a time.

Paper: Axial Attention in Multidimensional Transformers (Ho, Kalchbrenner,
Weissenborn, Salimans; arXiv 1912.12180, 2019).

Letters: B batch, C channels, H W spatial, h heads, d head dim.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo.attention._attend import attend
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require, require_divides
from blockzoo.registry import Example, images, register

__all__ = ["AxialAttention"]

_AXES = ("h", "w", "both")


class _AxisAttention(nn.Module):
    """Multi-head self-attention along one axis of channels-last tokens (B, S, L, C): each of
    the S rows of L tokens is one sequence (``"h"``: L = H, S = W; ``"w"``: L = W, S = H).

    The projections keep their 1x1-conv parameters (and state_dict) but run as ``F.linear``
    on the tokens: with the channels last, q, k, v, the SDPA output and the projection input
    are all views of one buffer (no permute copies), and the product is a plain matmul
    (the NCHW 1x1 conv takes PyTorch's slower ``slow_conv2d`` path on CPU).
    """

    def __init__(self, channels: int, axis: str, num_heads: int, head_dim: int, qkv_bias: bool,
                 **fk: Any) -> None:
        super().__init__()
        self.axis, self.num_heads, self.head_dim = axis, num_heads, head_dim
        inner = num_heads * head_dim
        self.qkv = nn.Conv2d(channels, 3 * inner, 1, bias=qkv_bias, **fk)
        self.proj = nn.Conv2d(inner, channels, 1, **fk)
        self.attn_map = AttentionMap("weights")

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        B, S, L, _ = t.shape
        h, d = self.num_heads, self.head_dim
        qkv = F.linear(t, self.qkv.weight.flatten(1), self.qkv.bias).view(B, S, L, 3, h, d)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5)  # (B, S, h, L, d) each, views
        # y = softmax(q k^T / sqrt(d)) v, along L only
        if self.attn_map.active:  # the recorded map keeps its layout (B, h, S, L, L)
            y = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), self.attn_map).transpose(1, 2)
        else:
            y = attend(q, k, v, self.attn_map)  # (B, S, h, L, d)
        y = y.transpose(2, 3).reshape(B, S, L, h * d)  # (B, S, L, h*d): a view of SDPA's output
        return F.linear(y, self.proj.weight.flatten(1), self.proj.bias)  # (B, S, L, C)


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
        # Channels-last tokens, laid out once per pass so that the pass's axis is dim 2:
        # (B, W, H, C) along H, (B, H, W, C) along W; the first linear makes the copy.
        along = "w"
        t = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        for p in self.passes:
            if p.axis != along:
                t, along = t.transpose(1, 2), p.axis
            t = p(t)
        t = t.permute(0, 3, 1, 2) if along == "w" else t.permute(0, 3, 2, 1)  # (B, C, H, W)
        return t.contiguous()

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, axis={self.axis!r}, num_heads={self.num_heads}, "
                f"head_dim={self.head_dim}")
