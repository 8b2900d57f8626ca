"""Triplet Attention: three Z-pool + conv gates over the (C, W), (C, H) and (H, W) planes.

Paper: Rotate to Attend: Convolutional Triplet Attention Module (Misra, arXiv
2010.03045, 2021).

Letters: B batch, C channels, H W spatial.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo._fastcall import conv_bn, invoke, listened
from blockzoo.act import LayerSpec, create_norm
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require
from blockzoo.registry import Example, images, register

__all__ = ["TripletAttention"]


class _ZPoolGate(nn.Module):
    """sigmoid(BN(conv_{k x k}([max; mean]))) with the pool over ``dim`` of (B, C, H, W).

    ``transpose``: the conv slides over the two remaining axes in swapped order, (Q, P)
    instead of (P, Q), the orientation the official code's rotation gives that branch.
    """

    def __init__(self, dim: int, kernel_size: int, norm_layer: LayerSpec, fk: dict[str, Any],
                 *, transpose: bool = False) -> None:
        super().__init__()
        self.dim, self.transpose = dim, transpose
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False, **fk)
        self.norm = create_norm(norm_layer, 1, **fk)
        if isinstance(self.norm, nn.modules.batchnorm._BatchNorm):
            self.norm.momentum = 0.01  # the official BasicConv's BN: eps 1e-5, momentum 0.01

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Z-pool over one axis; the other two form the plane the conv slides over.
        z = torch.stack([x.amax(self.dim), x.mean(self.dim)], 1)  # (B, 2, P, Q)
        if self.transpose:
            z = z.transpose(2, 3)  # (B, 2, Q, P)
        m = self._modules  # the conv and norm as their ops unless hooked (blockzoo._fastcall)
        conv, norm = m["conv"], m["norm"]
        # (conv_bn: in inference the norm folded into the conv; both as modules otherwise)
        g = conv_bn(conv, norm, z)  # (B, 1, P, Q) or (B, 1, Q, P)
        if (torch.is_grad_enabled() and g.requires_grad) or listened(conv, norm):  # a hook may hold g
            g = torch.sigmoid(g)
        else:
            g = g.sigmoid_()
        if self.transpose:
            g = g.transpose(2, 3)  # (B, 1, P, Q)
        return g.squeeze(1).unsqueeze(self.dim)  # broadcast back to x


@register(
    name="triplet_attention",
    family="attention",
    paper="Rotate to Attend: Convolutional Triplet Attention Module",
    arxiv="2010.03045",
    year=2021,
    input="image",
    example=Example(config=dict(channels=16), inputs=images(), size=(8, 8),
                    out_shape="same", tiny=dict(channels=4, kernel_size=3)),
)
class TripletAttention(nn.Module):
    r"""Triplet Attention: average of three gates, each over a different pair of axes.

    Misra et al., "Rotate to Attend: Convolutional Triplet Attention Module",
    arXiv 2010.03045.

    Equation, with Z-pool(x) over an axis = [max over it; mean over it] (2 maps)::

        g_CW = sigmoid(BN(conv_k(Z-pool_H(x))))     (B, C, 1, W)  interaction C-W, conv over (C, W)
        g_CH = sigmoid(BN(conv_k(Z-pool_W(x))))     (B, C, H, 1)  interaction C-H, conv over (H, C)
        g_HW = sigmoid(BN(conv_k(Z-pool_C(x))))     (B, 1, H, W)  spatial, conv over (H, W)
        y    = 1/3 (x * g_CW + x * g_CH + x * g_HW)

    Args:
        channels: C, the input channels.
        kernel_size: k of the three 2 -> 1 convs (paper: 7), odd.
        norm_layer: the norm after each conv (paper: BN).

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, C, H, W).

    Deviations:
        The paper rotates x so that each branch's conv slides over a rotated plane, then
        rotates back; we pool along the axis instead and rotate only the small pooled map,
        which gives the same maps without moving x in memory. Where the paper is silent
        the official code (landskape-ai/triplet-attention, ``MODELS/triplet_attention.py``)
        decides, so its weights carry over one to one:

        - the C-W branch's conv slides over (C, W) and the C-H branch's over (H, C), the
          orientations its ``permute(0, 2, 1, 3)`` and ``permute(0, 3, 2, 1)`` give;
        - Z-pool stacks [max; mean] in that order (as the paper's Z-pool);
        - each conv has no bias and is followed by BatchNorm with eps 1e-5 and momentum
          0.01 (its ``BasicConv(..., relu=False)``);
        - the three branches are always used (its ``no_spatial`` option is left out).

    Example:
        >>> ta = TripletAttention(64)
        >>> ta(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(self, channels: int, *, kernel_size: int = 7, norm_layer: LayerSpec = "batchnorm2d",
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        require(kernel_size % 2 == 1, f"TripletAttention: kernel_size={kernel_size} must be odd")
        fk = dict(device=device, dtype=dtype)
        self.channels, self.kernel_size = channels, kernel_size
        self.gate_cw = _ZPoolGate(2, kernel_size, norm_layer, fk)
        self.gate_ch = _ZPoolGate(3, kernel_size, norm_layer, fk, transpose=True)  # slides over (H, C)
        self.gate_hw = _ZPoolGate(1, kernel_size, norm_layer, fk)
        self.cw_map = AttentionMap("spatial")
        self.ch_map = AttentionMap("spatial")
        self.hw_map = AttentionMap("spatial")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.channels:
            check_shape(x, "B C H W", name="TripletAttention", C=self.channels)  # raises, naming the misfit
        m = self._modules
        g_cw = m["cw_map"](invoke(m["gate_cw"], x))  # (B, C, 1, W)
        g_ch = m["ch_map"](invoke(m["gate_ch"], x))  # (B, C, H, 1)
        g_hw = m["hw_map"](invoke(m["gate_hw"], x))  # (B, 1, H, W)
        # y = 1/3 (x g_CW + x g_CH + x g_HW)
        if torch.is_grad_enabled() and (x.requires_grad or g_cw.requires_grad or g_ch.requires_grad
                                        or g_hw.requires_grad):
            return x * (g_cw + g_ch + g_hw) / 3
        # the same products without autograd, in place on the one (B, C, H, W) sum
        return torch.add(g_cw, g_ch).add_(g_hw).mul_(x).div_(3)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}"
