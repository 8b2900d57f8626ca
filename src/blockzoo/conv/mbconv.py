"""Inverted residual blocks: expand 1x1, depthwise k x k, project 1x1, optional SE.

Papers: MobileNetV2: Inverted Residuals and Linear Bottlenecks (Sandler et al.,
arXiv 1801.04381, 2018); EfficientNet: Rethinking Model Scaling for Convolutional
Neural Networks (Tan, Le, arXiv 1905.11946, 2019) — MBConv with squeeze-excitation.

Letters: B batch, C input channels, O output channels, E = C * expand_ratio, H W spatial.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo._fastcall import invoke
from blockzoo.act import LayerSpec
from blockzoo.attention.channel import SqueezeExcite
from blockzoo.checks import check_shape, require
from blockzoo.conv.conv_bn_act import ConvBnAct
from blockzoo.registry import Example, images, register

__all__ = ["InvertedResidual", "MBConv"]


def _out(shape: Any, cfg: Any) -> tuple[int, ...]:
    s = cfg.get("stride", 1)
    return (shape[0], cfg.get("dim_out") or shape[1], -(-shape[2] // s), -(-shape[3] // s))


@register(
    name="mbconv",
    family="conv",
    paper="EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
    arxiv="1905.11946",
    year=2019,
    input="image",
    example=Example(
        config=dict(channels=8, expand_ratio=4, kernel_size=3),
        inputs=images(),
        size=(8, 8),
        out_shape=_out,
        tiny=dict(channels=3, expand_ratio=2),
    ),
)
class MBConv(nn.Module):
    r"""MBConv: the inverted residual block with squeeze-excitation (EfficientNet's unit).

    Tan & Le, "EfficientNet", arXiv 1905.11946; the inverted residual of Sandler
    et al., "MobileNetV2", arXiv 1801.04381; SE of Hu et al., arXiv 1709.01507.

    Equation::

        h = act(BN(conv1x1_{C->E}(x)))              expand (skipped when expand_ratio = 1)
        h = act(BN(dwconv_{k x k, s}(h)))            depthwise
        h = SE(h)                                    channel gate, bottleneck C * se_ratio
        F = BN(conv1x1_{E->O}(h))                    project: linear, no activation
        y = x + F   if s = 1 and C = O,   else y = F

    Args:
        channels: C, the input channels.
        dim_out: O, the output channels (default: C).
        expand_ratio: E / C (paper: 6, the MBConv6 of all but the first stage of
            EfficientNet-B0, Table 1; MBConv1 is ``expand_ratio=1``). Was 4 (CoAtNet's
            MBConv) until issue 15.
        kernel_size: k of the depthwise conv (3 or 5 in EfficientNet).
        stride: s of the depthwise conv.
        se_ratio: SE bottleneck width as a fraction of C (EfficientNet: 0.25);
            0 removes the SE (the MobileNetV2 block).
        se_hidden: the SE bottleneck width itself, instead of C * se_ratio (MobileNetV3:
            E / 4 rounded to a multiple of 8); needs ``se_ratio > 0``.
        se_act_layer: the SE bottleneck activation (default: ``act_layer``; MobileNetV3: ReLU).
        se_gate_layer: the SE gate (EfficientNet: sigmoid; MobileNetV3: hard sigmoid).
        act_layer: the activation (EfficientNet: SiLU/swish; MobileNetV2: ReLU6).
        norm_layer: the norm after each conv.

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, O, ceil(H / s), ceil(W / s)), O = dim_out.

    Deviations:
        No stochastic depth on the residual branch (EfficientNet trains with it);
        wrap the block in a drop-path module when training large models.

    Example:
        >>> block = MBConv(16, 24, expand_ratio=6, kernel_size=5, stride=2)
        >>> block(torch.randn(2, 16, 9, 9)).shape
        torch.Size([2, 24, 5, 5])
    """

    def __init__(
        self,
        channels: int,
        dim_out: int | None = None,
        *,
        expand_ratio: float = 6,
        kernel_size: int = 3,
        stride: int = 1,
        se_ratio: float = 0.25,
        se_hidden: int | None = None,
        se_act_layer: LayerSpec = None,
        se_gate_layer: LayerSpec = "sigmoid",
        act_layer: LayerSpec = "silu",
        norm_layer: LayerSpec = "batchnorm",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(se_hidden is None or (se_hidden >= 1 and se_ratio > 0),
                f"{type(self).__name__}: se_hidden={se_hidden} needs se_ratio > 0 (an SE) and >= 1")
        require(expand_ratio >= 1, f"{type(self).__name__}: expand_ratio={expand_ratio} must be >= 1")
        require(0 <= se_ratio <= 1, f"{type(self).__name__}: se_ratio={se_ratio} must be in [0, 1]")
        require(kernel_size % 2 == 1, f"{type(self).__name__}: kernel_size={kernel_size} must be odd")
        self.channels, self.dim_out = channels, dim_out or channels
        self.stride, self.expand_ratio, self.se_ratio = stride, expand_ratio, se_ratio
        hidden = round(channels * expand_ratio)
        fk = dict(device=device, dtype=dtype)
        kw = dict(norm_layer=norm_layer, **fk)
        self.expand = (
            ConvBnAct(channels, hidden, 1, act_layer=act_layer, **kw) if hidden != channels else nn.Identity()
        )
        self.dw = ConvBnAct(hidden, hidden, kernel_size, stride=stride, groups=hidden,
                            act_layer=act_layer, **kw)
        self.se = (
            SqueezeExcite(hidden, hidden=se_hidden or max(1, int(channels * se_ratio)),
                          act_layer=act_layer if se_act_layer is None else se_act_layer,
                          gate_layer=se_gate_layer, **fk)
            if se_ratio > 0 else nn.Identity()
        )
        self.project = ConvBnAct(hidden, self.dim_out, 1, act_layer=None, **kw)
        self.residual = stride == 1 and channels == self.dim_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.channels:
            check_shape(x, "B C H W", name=type(self).__name__, C=self.channels)  # raises, naming the misfit
        # the ConvBnAct units' forwards without nn.Module.__call__ unless hooked (blockzoo._fastcall)
        m = self._modules
        f = invoke(m["project"], invoke(m["se"], invoke(m["dw"], invoke(m["expand"], x))))
        # y = x + F when the shape is kept
        return x + f if self.residual else f

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, dim_out={self.dim_out}, expand_ratio={self.expand_ratio}, "
            f"stride={self.stride}, se_ratio={self.se_ratio}, residual={self.residual}"
        )


@register(
    name="inverted_residual",
    family="conv",
    paper="MobileNetV2: Inverted Residuals and Linear Bottlenecks",
    arxiv="1801.04381",
    year=2018,
    input="image",
    example=Example(
        config=dict(channels=8, dim_out=16, stride=2),
        inputs=images(),
        size=(8, 8),
        out_shape=_out,
        tiny=dict(channels=3, dim_out=4, expand_ratio=2),
    ),
)
class InvertedResidual(MBConv):
    r"""MobileNetV2's inverted residual with linear bottleneck: ``MBConv`` without SE, ReLU6.

    Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", arXiv 1801.04381.

    Equation::

        F = BN(conv1x1_{E->O}(relu6(BN(dwconv_s(relu6(BN(conv1x1_{C->E}(x))))))))
        y = x + F   if s = 1 and C = O,   else y = F

    Args:
        channels: C. dim_out: O (default C). expand_ratio: E / C (paper: 6).
        kernel_size: k (paper: 3). stride: s. act_layer: (paper: ReLU6).
        norm_layer: the norm after each conv. se_ratio: 0 (none) as in the paper.

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, O, ceil(H / s), ceil(W / s)), O = dim_out.

    Example:
        >>> block = InvertedResidual(24, 24)
        >>> block(torch.randn(2, 24, 7, 9)).shape
        torch.Size([2, 24, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        dim_out: int | None = None,
        *,
        expand_ratio: float = 6,
        kernel_size: int = 3,
        stride: int = 1,
        se_ratio: float = 0.0,
        act_layer: LayerSpec = "relu6",
        norm_layer: LayerSpec = "batchnorm",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(
            channels, dim_out, expand_ratio=expand_ratio, kernel_size=kernel_size, stride=stride,
            se_ratio=se_ratio, act_layer=act_layer, norm_layer=norm_layer, device=device, dtype=dtype,
        )
