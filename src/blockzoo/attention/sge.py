"""Spatial Group-wise Enhance: a spatial gate per channel group from its similarity to the group mean.

Paper: Spatial Group-wise Enhance: Improving Semantic Feature Learning in Convolutional
Networks (Li, arXiv 1905.09646, 2019).

Letters: B batch, C channels, H W spatial, G groups, m = H W.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require_divides
from blockzoo.registry import Example, images, register

__all__ = ["SpatialGroupEnhance"]


@register(
    name="sge",
    family="attention",
    paper="Spatial Group-wise Enhance: Improving Semantic Feature Learning in Convolutional Networks",
    arxiv="1905.09646",
    year=2019,
    input="image",
    example=Example(config=dict(channels=16, groups=4), inputs=images(), size=(8, 8),
                    out_shape="same", tiny=dict(channels=4, groups=2)),
)
class SpatialGroupEnhance(nn.Module):
    r"""SGE: per group, gate each position by its normalised similarity to the group's mean.

    Li, Hu & Yang, "Spatial Group-wise Enhance", arXiv 1905.09646.

    Equation, per group of C/G channels, x_i the (C/G)-vector at position i, m = H W::

        g     = 1/m sum_i x_i                        (global group descriptor)
        c_i   = g . x_i
        c^_i  = (c_i - mu_c) / (sigma_c + eps)       mu_c, sigma_c over the m positions
                                                      (sigma^2 with divisor m - 1)
        a_i   = gamma c^_i + beta                    gamma, beta: one pair per group
        y_i   = x_i * sigmoid(a_i)

    Args:
        channels: C, the input channels; a multiple of groups.
        groups: G (paper: 64).
        eps: added to sigma (paper: 1e-5).

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, C, H, W); the gate sigmoid(a) (B, G, 1, H, W) is in (0, 1).

    Deviations:
        Follows the official code (implus/PytorchInsight, ``SpatialGroupEnhance``):
        sigma is the unbiased standard deviation over the m positions (``Tensor.std``)
        with eps = 1e-5 added to sigma, not to the variance; gamma starts at 0 and beta
        at 1, one pair per group. For a 1x1 input, where the official ``std`` of a
        single value is NaN, the divisor m - 1 is taken as 1 (c^ = 0, gate sigmoid(beta)).

    Example:
        >>> sge = SpatialGroupEnhance(64, groups=8)
        >>> sge(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(self, channels: int, *, groups: int = 64, eps: float = 1e-5,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        require_divides("SpatialGroupEnhance", "groups", groups, "channels", channels)
        fk = dict(device=device, dtype=dtype)
        self.channels, self.groups, self.eps = channels, groups, eps
        self.weight = nn.Parameter(torch.zeros(1, groups, 1, 1, 1, **fk))
        self.bias = nn.Parameter(torch.ones(1, groups, 1, 1, 1, **fk))
        self.attn_map = AttentionMap("spatial")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.channels:
            check_shape(x, "B C H W", name="SpatialGroupEnhance", C=self.channels)  # raises
        b, _, h, w = x.shape
        xg = x.view(b, self.groups, -1, h, w)  # (B, G, C/G, H, W)
        g = xg.mean((3, 4), keepdim=True)  # (B, G, C/G, 1, 1)
        # c_i = g . x_i
        c = (g * xg).sum(2, keepdim=True)  # (B, G, 1, H, W)
        dev = c - c.mean((3, 4), keepdim=True)  # c - mu
        var = (dev * dev).sum((3, 4), keepdim=True) / max(h * w - 1, 1)
        # c^ = (c - mu) / (sigma + eps); a = gamma c^ + beta: the per-group factor
        # gamma / (sigma + eps) on the (B, G, 1, 1, 1) statistics, one pass over the map
        a = torch.addcmul(self.bias, dev, self.weight / (var.sqrt() + self.eps))
        a = torch.sigmoid(a) if torch.is_grad_enabled() else torch.sigmoid_(a)
        gate = self.attn_map(a)  # (B, G, 1, H, W)
        return (xg * gate).view_as(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, groups={self.groups}"
