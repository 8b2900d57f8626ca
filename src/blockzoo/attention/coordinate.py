"""Coordinate Attention: channel gates factorised into a height gate and a width gate.

Paper: Coordinate Attention for Efficient Mobile Network Design (Hou, arXiv 2103.02907, 2021).

Letters: B batch, C channels, H W spatial, c the shared bottleneck width.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo._fastcall import call, conv_bn
from blockzoo.act import LayerSpec, create_act, create_norm
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require
from blockzoo.registry import Example, images, register

__all__ = ["CoordinateAttention"]


@register(
    name="coord_attention",
    family="attention",
    paper="Coordinate Attention for Efficient Mobile Network Design",
    arxiv="2103.02907",
    year=2021,
    input="image",
    example=Example(config=dict(channels=16, reduction=4, min_hidden=4), inputs=images(), size=(8, 8),
                    out_shape="same", tiny=dict(channels=4, min_hidden=2)),
)
class CoordinateAttention(nn.Module):
    r"""Coordinate Attention: pool along each axis, a shared 1x1 transform, two directional gates.

    Hou, Zhou & Feng, "Coordinate Attention for Efficient Mobile Network Design",
    arXiv 2103.02907.

    Equation::

        z^h_c(h) = 1/W sum_w x_c(h, w)              (B, C, H, 1)
        z^w_c(w) = 1/H sum_h x_c(h, w)              (B, C, 1, W)
        f        = act(BN(F_1([z^h; z^w])))         shared 1x1 conv C -> c over the H + W positions
        f^h, f^w = split(f)
        g^h      = sigmoid(F_h(f^h))                (B, C, H, 1)    1x1 conv c -> C
        g^w      = sigmoid(F_w(f^w))                (B, C, 1, W)    1x1 conv c -> C
        y_c(h, w) = x_c(h, w) * g^h_c(h) * g^w_c(w)

    Args:
        channels: C, the input channels.
        reduction: r; c = max(min_hidden, C // r) (paper: r = 32, min_hidden = 8).
        min_hidden: the smallest bottleneck width.
        act_layer: the bottleneck activation (paper's code: hard-swish).
        norm_layer: the bottleneck normalisation (paper: BN); ``None`` for none.

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, C, H, W) = x * g^h * g^w, gates in (0, 1).

    Deviations:
        Where the paper's text is silent the official code (houqb/CoordAttention,
        ``coordatt.py``, which produced the paper's numbers) decides, and is followed:
        c = max(8, C // r) with r = 32; F_1 is followed by BN (eps 1e-5) and h_swish
        (= ``nn.Hardswish``); the gates use the plain sigmoid; F_h, F_w have biases;
        y = x * g^h * g^w. One difference is kept: F_1 has no bias when a norm follows
        (the official code's has one). In training BN subtracts each channel's batch mean,
        which removes a per-channel bias exactly; in eval the bias is absorbed by the
        running mean (official bias b with running mean mu = ours with mu - b), so it
        could never change what the block computes. The official ``oup`` (output gates
        wider than the input) is left out: the gates multiply x, so oup = C.

    Example:
        >>> ca = CoordinateAttention(64)
        >>> ca(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(self, channels: int, *, reduction: int = 32, min_hidden: int = 8,
                 act_layer: LayerSpec = "hardswish", norm_layer: LayerSpec = "batchnorm2d",
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        require(reduction >= 1, f"CoordinateAttention: reduction={reduction} must be >= 1")
        fk = dict(device=device, dtype=dtype)
        self.channels = channels
        self.hidden = max(min_hidden, channels // reduction)
        self.conv1 = nn.Conv2d(channels, self.hidden, 1, bias=norm_layer is None, **fk)  # BN cancels a bias
        self.norm = create_norm(norm_layer, self.hidden, **fk)
        self.act = create_act(act_layer, **fk)
        self.conv_h = nn.Conv2d(self.hidden, channels, 1, **fk)
        self.conv_w = nn.Conv2d(self.hidden, channels, 1, **fk)
        self.h_map = AttentionMap("spatial")
        self.w_map = AttentionMap("spatial")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = check_shape(x, "B C H W", name="CoordinateAttention", C=self.channels)
        h, w = dims["H"], dims["W"]
        zh = x.mean(3, keepdim=True)  # (B, C, H, 1)
        zw = x.mean(2, keepdim=True).transpose(2, 3)  # (B, C, W, 1)
        # f = act(BN(F_1([z^h; z^w])))
        m = self._modules  # (eval without autograd: the norm folded into F_1, conv_bn)
        f = call(m["act"], conv_bn(m["conv1"], m["norm"], torch.cat([zh, zw], 2)))  # (B, c, H + W, 1)
        fh, fw = f.split([h, w], 2)
        gh = self.h_map(torch.sigmoid(call(m["conv_h"], fh)))  # (B, C, H, 1)
        gw = self.w_map(torch.sigmoid(call(m["conv_w"], fw)).transpose(2, 3))  # (B, C, 1, W)
        return x * gh * gw

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.hidden}"
