"""Shuffle Attention: per group, a channel half and a spatial half, then a channel shuffle.

Paper: SA-Net: Shuffle Attention for Deep Convolutional Neural Networks (Zhang, arXiv
2102.00240, 2021).

Letters: B batch, C channels, H W spatial, G groups, c = C / (2 G) channels per half.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require
from blockzoo.registry import Example, images, register

__all__ = ["ShuffleAttention"]


@register(
    name="shuffle_attention",
    family="attention",
    paper="SA-Net: Shuffle Attention for Deep Convolutional Neural Networks",
    arxiv="2102.00240",
    year=2021,
    input="image",
    example=Example(config=dict(channels=16, groups=4, init_weight=0.5), inputs=images(), size=(8, 8),
                    out_shape="same", tiny=dict(channels=8, groups=2)),
)
class ShuffleAttention(nn.Module):
    r"""Shuffle Attention (SA): group-wise channel and spatial gates, then a channel shuffle.

    Zhang & Yang, "SA-Net: Shuffle Attention for Deep Convolutional Neural Networks",
    arXiv 2102.00240.

    Equation: x is cut into G groups along channels, each group into two halves
    x_k1, x_k2 of c = C / (2G) channels. With per-channel parameters W_1, b_1, W_2, b_2
    of shape (c, 1, 1) shared by all groups::

        x'_k1 = sigmoid(W_1 GAP(x_k1) + b_1) * x_k1                  (channel half)
        x'_k2 = sigmoid(W_2 GN(x_k2) + b_2) * x_k2                   (spatial half)
        y     = channel_shuffle(cat_k [x'_k1, x'_k2], 2)

    GN normalises each channel over H W (GroupNorm with c groups of one channel) and
    applies its own per-channel affine gamma, beta (shared by all groups, like W_2, b_2).

    Args:
        channels: C, the input channels; a multiple of 2 * groups.
        groups: G (paper: 64).
        eps: the GroupNorm epsilon.
        init_weight: the initial W_1, W_2 (official: 0, so the gates start at
            sigmoid(b) = sigmoid(1) and GN's affine receives no gradient at the first step).

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, C, H, W).

    Deviations:
        None in the maths: where the paper is silent the official code (wofmanaf/SA-Net,
        ``sa_layer``) is followed. Its GN is ``nn.GroupNorm(c, c)`` with the default
        affine gamma = 1, beta = 0, applied before W_2, b_2; the product W_2 gamma is an
        over-parameterisation (the same maps as W_2 alone) but it is what was trained,
        so the 2c GN parameters are kept (6c parameters in all). W_1, W_2 start at 0 and
        b_1, b_2 at 1 (gates sigmoid(1) everywhere at initialisation; ``init_weight``
        sets another start); the shuffle is the official ``channel_shuffle(out, 2)``.

    Example:
        >>> sa = ShuffleAttention(64, groups=8)
        >>> sa(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(self, channels: int, *, groups: int = 64, eps: float = 1e-5, init_weight: float = 0.0,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        require(groups >= 1 and channels % (2 * groups) == 0,
                f"ShuffleAttention: channels={channels} must be a multiple of 2 * groups={2 * groups}")
        fk = dict(device=device, dtype=dtype)
        self.channels, self.groups, self.eps = channels, groups, eps
        c = channels // (2 * groups)
        self.cweight = nn.Parameter(torch.full((1, c, 1, 1), float(init_weight), **fk))
        self.cbias = nn.Parameter(torch.ones(1, c, 1, 1, **fk))
        self.sweight = nn.Parameter(torch.full((1, c, 1, 1), float(init_weight), **fk))
        self.sbias = nn.Parameter(torch.ones(1, c, 1, 1, **fk))
        self.gn = nn.GroupNorm(c, c, eps=eps, **fk)  # official: its own affine, then W_2, b_2
        self.channel_map = AttentionMap("channel")
        self.spatial_map = AttentionMap("spatial")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = check_shape(x, "B C H W", name="ShuffleAttention", C=self.channels)
        b, h, w = dims["B"], dims["H"], dims["W"]
        xg = x.reshape(b * self.groups, -1, h, w)  # (B G, 2c, H, W)
        x1, x2 = xg.chunk(2, dim=1)  # (B G, c, H, W) each
        # x'_k1 = sigmoid(W_1 GAP(x_k1) + b_1) * x_k1
        g1 = self.channel_map(torch.sigmoid(self.cweight * x1.mean((2, 3), keepdim=True) + self.cbias))
        # x'_k2 = sigmoid(W_2 GN(x_k2) + b_2) * x_k2
        n2 = self.gn(x2)  # (B G, c, H, W)
        g2 = self.spatial_map(torch.sigmoid(self.sweight * n2 + self.sbias))
        out = torch.cat([x1 * g1, x2 * g2], 1).reshape(b, 2, self.channels // 2, h, w)  # (B, 2, C/2, H, W)
        return out.transpose(1, 2).reshape(b, self.channels, h, w)  # channel shuffle, 2 groups

    def extra_repr(self) -> str:
        return f"channels={self.channels}, groups={self.groups}"
