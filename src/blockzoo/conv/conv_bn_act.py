"""The convolution unit every CNN is built from: convolution, batch norm, activation.

Paper: Batch Normalization: Accelerating Deep Network Training by Reducing
Internal Covariate Shift (Ioffe, Szegedy, arXiv 1502.03167, 2015).

Letters: B batch, C input channels, O output channels, H W spatial, k kernel size.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo._fastcall import call, conv_bn
from blockzoo.act import LayerSpec, create_act, create_norm
from blockzoo.checks import check_shape, require
from blockzoo.conv._functional import conv_out_shape, raise_small, same_padding
from blockzoo.registry import Example, images, register

__all__ = ["ConvBnAct"]


@register(
    name="conv_bn_act",
    family="conv",
    paper="Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate Shift",
    arxiv="1502.03167",
    year=2015,
    input="image",
    example=Example(
        config=dict(channels=8, dim_out=16, kernel_size=3),
        inputs=images(),
        size=(8, 8),
        out_shape=conv_out_shape,
        tiny=dict(channels=3, dim_out=4),
    ),
)
class ConvBnAct(nn.Module):
    r"""Convolution, batch normalisation and activation: the unit CNNs are built from.

    Ioffe & Szegedy, "Batch Normalization", arXiv 1502.03167 (the norm after the conv).

    Equation::

        z = W * x                                   (conv: stride s, padding p, dilation d, g groups)
        y = act(gamma (z - mu) / sqrt(var + eps) + beta)

    mu, var are the batch statistics in training and the running averages in eval.
    The convolution has no bias when a norm follows (beta replaces it).

    Args:
        channels: C, the input channels.
        dim_out: O, the output channels (default: C).
        kernel_size: k.
        stride: s.
        padding: p (default ``d (k - 1) / 2``: "same" size at stride 1 for odd k).
        dilation: d.
        groups: g; C and O must be multiples of g (g = C is a depthwise conv).
        bias: whether the convolution has a bias (default: only without a norm).
        norm_layer: the norm by name (``"batchnorm"``) or ``None``.
        act_layer: the activation by name, or ``None`` for none.

    Shape:
        - Input: (B, C, H, W), C = channels, H, W >= d (k - 1) + 1 - 2p.
        - Output: (B, O, H', W'), O = dim_out,
          H' = floor((H + 2p - d (k - 1) - 1) / s) + 1, and likewise W'.

    Example:
        >>> unit = ConvBnAct(3, 16, 3, stride=2)
        >>> unit(torch.randn(2, 3, 9, 7)).shape
        torch.Size([2, 16, 5, 4])
    """

    def __init__(
        self,
        channels: int,
        dim_out: int | None = None,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        groups: int = 1,
        bias: bool | None = None,
        norm_layer: LayerSpec = "batchnorm",
        act_layer: LayerSpec = "relu",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        dim_out = dim_out or channels
        require(
            channels % groups == 0 and dim_out % groups == 0,
            f"ConvBnAct: groups={groups} must divide channels={channels} and dim_out={dim_out}",
        )
        require(kernel_size >= 1 and stride >= 1 and dilation >= 1,
                f"ConvBnAct: kernel_size={kernel_size}, stride={stride}, dilation={dilation} must be >= 1")
        self.channels, self.dim_out, self.kernel_size = channels, dim_out, kernel_size
        self.stride, self.dilation, self.groups = stride, dilation, groups
        self.padding = same_padding(kernel_size, dilation) if padding is None else padding
        fk = dict(device=device, dtype=dtype)
        self.conv = nn.Conv2d(
            channels, dim_out, kernel_size, stride, self.padding, dilation, groups,
            bias=(norm_layer is None) if bias is None else bias, **fk,
        )
        self.bn = create_norm(norm_layer, dim_out, **fk)
        self.act = create_act(act_layer, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.channels:
            check_shape(x, "B C H W", name="ConvBnAct", C=self.channels)  # raises, naming the misfit
        reach = self.dilation * (self.kernel_size - 1) + 1 - 2 * self.padding
        if x.shape[2] < reach or x.shape[3] < reach:
            raise_small("ConvBnAct", x, reach)
        # act(BN(conv(x))); stock submodules nobody hooks run as their functional op
        # (blockzoo._fastcall: the same op on the same tensors, ~1-2 us less per module), and
        # in eval without autograd the norm is folded into the conv (conv_bn)
        mods = self._modules
        return call(mods["act"], conv_bn(mods["conv"], mods["bn"], x))

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, dim_out={self.dim_out}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, groups={self.groups}"
        )

