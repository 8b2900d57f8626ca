"""Depthwise-separable convolution: a per-channel k x k conv, then a 1x1 conv mixing channels.

Paper: MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
Applications (Howard et al., arXiv 1704.04861, 2017).

Letters: B batch, C input channels, O output channels, H W spatial, k kernel size.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo._fastcall import invoke
from blockzoo.act import LayerSpec
from blockzoo.checks import check_shape
from blockzoo.conv._functional import conv_out_shape
from blockzoo.conv.conv_bn_act import ConvBnAct
from blockzoo.registry import Example, images, register

__all__ = ["DepthwiseSeparableConv"]


@register(
    name="depthwise_separable",
    family="conv",
    paper="MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications",
    arxiv="1704.04861",
    year=2017,
    input="image",
    example=Example(
        config=dict(channels=8, dim_out=16, kernel_size=3),
        inputs=images(),
        size=(8, 8),
        out_shape=conv_out_shape,
        tiny=dict(channels=3, dim_out=4),
    ),
)
class DepthwiseSeparableConv(nn.Module):
    r"""Depthwise-separable convolution: depthwise k x k, then pointwise 1x1, each with BN and act.

    Howard et al., "MobileNets", arXiv 1704.04861 (Fig. 3: dw-BN-ReLU, pw-BN-ReLU).

    Equation::

        h_c = act(BN(D_c * x_c))                  one k x k filter per channel c
        y   = act(BN(P h))                        P: a 1x1 conv, C -> O

    Without norms and activations this is a full k x k conv whose kernel is
    factorised as ``W[o, c] = P[o, c] D_c``: k^2 C + C O weights instead of k^2 C O.

    Args:
        channels: C, the input channels.
        dim_out: O, the output channels (default: C).
        kernel_size: k of the depthwise conv.
        stride: s of the depthwise conv.
        dilation: d of the depthwise conv.
        norm_layer: the norm after each conv (``None``: none, and the convs get biases).
        act_layer: the activation after each norm.

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, O, H', W'), O = dim_out, H' = ceil(H / s), W' = ceil(W / s) for odd k.

    Example:
        >>> conv = DepthwiseSeparableConv(32, 64, stride=2)
        >>> conv(torch.randn(2, 32, 9, 8)).shape
        torch.Size([2, 64, 5, 4])
    """

    def __init__(
        self,
        channels: int,
        dim_out: int | None = None,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        dilation: int = 1,
        norm_layer: LayerSpec = "batchnorm",
        act_layer: LayerSpec = "relu",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        self.channels, self.dim_out = channels, dim_out or channels
        kw = dict(norm_layer=norm_layer, act_layer=act_layer, device=device, dtype=dtype)
        self.dw = ConvBnAct(channels, channels, kernel_size, stride=stride, dilation=dilation,
                            groups=channels, **kw)
        self.pw = ConvBnAct(channels, self.dim_out, 1, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.channels:
            check_shape(x, "B C H W", name="DepthwiseSeparableConv", C=self.channels)  # raises
        mods = self._modules
        return invoke(mods["pw"], invoke(mods["dw"], x))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, dim_out={self.dim_out}"
