"""CBAM: a channel gate then a spatial gate.

Paper: CBAM: Convolutional Block Attention Module (Woo, arXiv 1807.06521, 2018).

Letters: B batch, C channels, H W spatial.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo._fastcall import call, conv_bn, invoke, listened
from blockzoo.act import LayerSpec, create_act
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require
from blockzoo.registry import Example, images, register

__all__ = ["CBAM", "CBAMChannelGate", "CBAMSpatialGate"]


class CBAMChannelGate(nn.Module):
    r"""CBAM's channel attention map M_c (B, C, 1, 1), in (0, 1).

    Equation: M_c = sigmoid(MLP(AvgPool(x)) + MLP(MaxPool(x))), one MLP C -> C/r -> C
    shared by both pooled descriptors.

    Args:
        channels: C.
        reduction: r (paper: 16); hidden width max(1, C // r).
        act_layer: hidden activation (paper: ReLU).
        bias: biases in the MLP's two layers (official code: yes, ``nn.Linear``).

    Shape:
        - Input: (B, C, H, W); Output: the gate (B, C, 1, 1).
    """

    def __init__(self, channels: int, *, reduction: int = 16, act_layer: LayerSpec = "relu",
                 bias: bool = True, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        require(reduction >= 1, f"CBAM: reduction={reduction} must be >= 1")
        fk = dict(device=device, dtype=dtype)
        self.hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, self.hidden, 1, bias=bias, **fk),
            create_act(act_layer, **fk),
            nn.Conv2d(self.hidden, channels, 1, bias=bias, **fk),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # M_c = sigmoid(MLP(avg) + MLP(max))
        mlp = self._modules["mlp"]
        fc1, act, fc2 = mlp._modules.values()
        if type(fc1) is not nn.Conv2d or type(fc2) is not nn.Conv2d or listened(mlp, fc1, act, fc2):
            avg = x.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
            mx = x.amax((2, 3), keepdim=True)  # (B, C, 1, 1)
            return torch.sigmoid(mlp(avg) + mlp(mx))  # as modules, so their hooks fire
        # Both pooled vectors through the shared MLP in one pass, as matrix products on
        # (2B, C) with the 1x1 convs' own parameters (on a (B, C, 1, 1) tensor the two
        # Sequential calls and 1x1 convs cost more than the maths; blockzoo._fastcall).
        b, c = x.shape[0], x.shape[1]
        z = torch.cat([x.mean((2, 3)), x.amax((2, 3))])  # (2B, C)
        p1, p2 = fc1._parameters, fc2._parameters
        h = F.linear(z, p1["weight"].flatten(1), p1["bias"])  # (2B, C/r)
        inplace = not (torch.is_grad_enabled() and h.requires_grad)  # fresh tensors, no graph
        h = h.relu_() if inplace and type(act) is nn.ReLU else call(act, h)
        o = F.linear(h, p2["weight"].flatten(1), p2["bias"])  # (2B, C)
        s = torch.add(o[:b], o[b:])
        return (s.sigmoid_() if inplace else torch.sigmoid(s)).view(b, c, 1, 1)


class CBAMSpatialGate(nn.Module):
    r"""CBAM's spatial attention map M_s (B, 1, H, W), in (0, 1).

    Equation: M_s = sigmoid(BN(conv_{k x k}([mean_c(x); max_c(x)]))), a 2 -> 1 conv without
    bias followed by a one-channel BatchNorm (the official code's ``BasicConv``).

    Args:
        kernel_size: k (paper: 7), odd.

    Shape:
        - Input: (B, C, H, W); Output: the gate (B, 1, H, W).
    """

    def __init__(self, *, kernel_size: int = 7, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        require(kernel_size % 2 == 1, f"CBAM: kernel_size={kernel_size} must be odd")
        fk = dict(device=device, dtype=dtype)
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False, **fk)
        # the official BasicConv's BN: eps 1e-5, momentum 0.01
        self.bn = nn.BatchNorm2d(1, momentum=0.01, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)  # (B, 2, H, W)
        # M_s = sigmoid(BN(conv([avg; max]))); stock modules as their ops unless hooked
        mods = self._modules
        # (conv_bn: the norm folded into the conv in inference, both as modules otherwise)
        conv, bn = mods["conv"], mods["bn"]
        z = conv_bn(conv, bn, pooled)  # (B, 1, H, W)
        if (torch.is_grad_enabled() and z.requires_grad) or listened(conv, bn):  # a hook may hold z
            return torch.sigmoid(z)
        return z.sigmoid_()


@register(
    name="cbam",
    family="attention",
    paper="CBAM: Convolutional Block Attention Module",
    arxiv="1807.06521",
    year=2018,
    input="image",
    example=Example(config=dict(channels=16, reduction=4), inputs=images(), size=(8, 8),
                    out_shape="same", tiny=dict(channels=4, reduction=2, kernel_size=3)),
)
class CBAM(nn.Module):
    r"""CBAM: refine a feature map by a channel gate, then a spatial gate.

    Woo et al., "CBAM: Convolutional Block Attention Module", arXiv 1807.06521.

    Equation::

        M_c = sigmoid(MLP(AvgPool_hw(x)) + MLP(MaxPool_hw(x)))          (B, C, 1, 1)
        x'  = M_c * x
        M_s = sigmoid(BN(conv_7x7([AvgPool_c(x'); MaxPool_c(x')])))     (B, 1, H, W)
        y   = M_s * x'

    Args:
        channels: C, the input channels.
        reduction: r of the shared channel MLP C -> C/r -> C (paper: 16).
        kernel_size: the spatial conv's kernel (paper: 7).
        act_layer: the MLP's hidden activation (paper: ReLU).
        bias: biases in the channel MLP (official code: yes; ``bias=False`` gives
            timm's ``CbamModule`` layout and parameter count).

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, C, H, W) = x * M_c * M_s, both gates in (0, 1).

    Deviations:
        Where the paper's text is silent, the official code (Jongchan/attention-module,
        ``MODELS/cbam.py``, which produced the paper's numbers) decides:

        - the 7x7 spatial conv is followed by BatchNorm (eps 1e-5, momentum 0.01) before
          the sigmoid, the conv has no bias (its ``BasicConv(..., relu=False)``);
        - the channel MLP's two layers have biases (``nn.Linear``); timm drops them;
        - hidden width C // r, not rounded.

        Where the paper's equation is explicit it wins: the spatial conv sees
        ``[AvgPool_c; MaxPool_c]`` in that order (Eq. 3); the official ``ChannelPool``
        stacks max first, which only permutes the conv's two input channels.

    Example:
        >>> cbam = CBAM(64)
        >>> cbam(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        reduction: int = 16,
        kernel_size: int = 7,
        act_layer: LayerSpec = "relu",
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.channels = channels
        self.kernel_size = kernel_size
        self.channel_gate = CBAMChannelGate(channels, reduction=reduction, act_layer=act_layer, bias=bias,
                                            **fk)
        self.spatial_gate = CBAMSpatialGate(kernel_size=kernel_size, **fk)
        self.channel_map = AttentionMap("channel")
        self.spatial_map = AttentionMap("spatial")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.channels:
            check_shape(x, "B C H W", name="CBAM", C=self.channels)  # raises, naming the misfit
        mods = self._modules
        x = x * mods["channel_map"](invoke(mods["channel_gate"], x))  # (B, C, H, W)
        m_s = mods["spatial_map"](invoke(mods["spatial_gate"], x))  # (B, 1, H, W)
        if (torch.is_grad_enabled() and (x.requires_grad or m_s.requires_grad)) \
                or listened(mods["spatial_gate"]):  # (a hook may hold x', the gate's input)
            return x * m_s
        return x.mul_(m_s)  # x' is this call's own tensor

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.channel_gate.hidden}, kernel_size={self.kernel_size}"
