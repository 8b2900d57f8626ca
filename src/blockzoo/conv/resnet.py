"""Residual blocks: the basic (two 3x3) and bottleneck (1x1-3x3-1x1) units of ResNet.

Paper: Deep Residual Learning for Image Recognition (He, Zhang, Ren, Sun,
arXiv 1512.03385, 2015). Attention inside the residual branch follows
Squeeze-and-Excitation Networks (Hu, arXiv 1709.01507) and CBAM (Woo, arXiv 1807.06521).

Letters: B batch, C input channels, O output channels, H W spatial, s stride.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo._fastcall import call, conv_bn, direct
from blockzoo.act import LayerSpec, create_act, create_norm
from blockzoo.checks import check_shape, require
from blockzoo.conv._functional import make_attention
from blockzoo.registry import Example, images, register

__all__ = ["BasicBlock", "Bottleneck", "Shortcut"]


def _strided_out(shape: Any, cfg: Any) -> tuple[int, ...]:
    s = cfg.get("stride", 1)
    return (shape[0], cfg["dim_out"], -(-shape[2] // s), -(-shape[3] // s))


class Shortcut(nn.Module):
    """The projection shortcut: a strided 1x1 conv and a norm (option B of the paper).

    Args:
        channels: C. dim_out: O. stride: s. norm_layer: the norm after the conv.

    Shape:
        - Input: (B, C, H, W); output (B, O, ceil(H / s), ceil(W / s)).
    """

    def __init__(
        self, channels: int, dim_out: int, *, stride: int = 1, norm_layer: LayerSpec = "batchnorm",
        device: Any = None, dtype: Any = None,
    ) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.conv = nn.Conv2d(channels, dim_out, 1, stride, bias=norm_layer is None, **fk)
        self.bn = create_norm(norm_layer, dim_out, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


@direct(Shortcut)
def _shortcut_direct(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``Shortcut.forward`` through :func:`conv_bn` (their own hooks still fire; in eval without
    autograd, the norm folded into the conv)."""
    mods = m._modules
    return conv_bn(mods["conv"], mods["bn"], x)


def _shortcut(channels: int, dim_out: int, stride: int, norm_layer: LayerSpec, fk: dict) -> nn.Module:
    if stride == 1 and channels == dim_out:
        return nn.Identity()
    return Shortcut(channels, dim_out, stride=stride, norm_layer=norm_layer, **fk)


@register(
    name="resnet_basic",
    family="conv",
    paper="Deep Residual Learning for Image Recognition",
    arxiv="1512.03385",
    year=2015,
    input="image",
    example=Example(
        config=dict(channels=8, dim_out=16, stride=2),
        inputs=images(),
        size=(8, 8),
        out_shape=_strided_out,
        tiny=dict(channels=3, dim_out=4),
    ),
)
class BasicBlock(nn.Module):
    r"""ResNet basic block: two 3x3 convolutions and a shortcut, added.

    He et al., "Deep Residual Learning for Image Recognition", arXiv 1512.03385.

    Equation::

        F(x) = BN_2(conv3x3(act(BN_1(conv3x3_s(x)))))
        y    = act(A(F(x)) + S(x))

    S is the identity when the shape is kept, else the projection shortcut (1x1
    conv with stride s, then BN: the paper's option B). A is an optional
    attention block on the residual branch before the addition (SE, CBAM, ...:
    where those papers put it); identity by default.

    Args:
        channels: C, the input channels.
        dim_out: O, the output channels (default: C).
        stride: s, the stride of the first 3x3 conv and of the shortcut.
        norm_layer: the norm after each conv.
        act_layer: the activation.
        attention: an image attention block applied to F(x): a registered name
            (``"se"``, ``"cbam"``, ...), a class or factory taking the channel count,
            or ``None``.
        attention_kwargs: keyword arguments for the attention block.
        zero_init_last: start with BN_2's scale at zero, so the block starts as its
            shortcut (Goyal et al., arXiv 1706.02677).

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, O, ceil(H / s), ceil(W / s)), O = dim_out, s = stride.

    Example:
        >>> block = BasicBlock(64, 128, stride=2, attention="se")
        >>> block(torch.randn(2, 64, 9, 8)).shape
        torch.Size([2, 128, 5, 4])
    """

    expansion = 1

    def __init__(
        self,
        channels: int,
        dim_out: int | None = None,
        *,
        stride: int = 1,
        norm_layer: LayerSpec = "batchnorm",
        act_layer: LayerSpec = "relu",
        attention: LayerSpec = None,
        attention_kwargs: dict[str, Any] | None = None,
        zero_init_last: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        dim_out = dim_out or channels
        require(stride >= 1, f"BasicBlock: stride={stride} must be >= 1")
        self.channels, self.dim_out, self.stride = channels, dim_out, stride
        fk = dict(device=device, dtype=dtype)
        bias = norm_layer is None
        self.conv1 = nn.Conv2d(channels, dim_out, 3, stride, 1, bias=bias, **fk)
        self.bn1 = create_norm(norm_layer, dim_out, **fk)
        self.act1 = create_act(act_layer, **fk)
        self.conv2 = nn.Conv2d(dim_out, dim_out, 3, 1, 1, bias=bias, **fk)
        self.bn2 = create_norm(norm_layer, dim_out, **fk)
        self.attn = make_attention(attention, dim_out, attention_kwargs, **fk)
        self.shortcut = _shortcut(channels, dim_out, stride, norm_layer, fk)
        self.act2 = create_act(act_layer, **fk)
        if zero_init_last:
            nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.channels:
            check_shape(x, "B C H W", name="BasicBlock", C=self.channels)  # raises, naming the misfit
        # stock submodules nobody hooks run as their functional op (blockzoo._fastcall: the same
        # op on the same tensors, without nn.Module.__call__, ~1-2 us per module)
        m = self._modules
        # F(x) = BN_2(conv(act(BN_1(conv(x)))))
        f = call(m["act1"], conv_bn(m["conv1"], m["bn1"], x))
        f = conv_bn(m["conv2"], m["bn2"], f)
        # y = act(A(F(x)) + S(x))
        return call(m["act2"], call(m["attn"], f) + call(m["shortcut"], x))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, dim_out={self.dim_out}, stride={self.stride}"


@register(
    name="resnet_bottleneck",
    family="conv",
    paper="Deep Residual Learning for Image Recognition",
    arxiv="1512.03385",
    year=2015,
    input="image",
    example=Example(
        config=dict(channels=8, width=4, dim_out=16, stride=2),
        inputs=images(),
        size=(8, 8),
        out_shape=_strided_out,
        tiny=dict(channels=3, width=2, dim_out=4),
    ),
)
class Bottleneck(nn.Module):
    r"""ResNet bottleneck block: 1x1 reduce, 3x3, 1x1 expand, and a shortcut.

    He et al., "Deep Residual Learning for Image Recognition", arXiv 1512.03385.

    Equation (Wd = width)::

        F(x) = BN_3(conv1x1_{Wd->O}(act(BN_2(conv3x3_{s, g}(act(BN_1(conv1x1_{C->Wd}(x))))))))
        y    = act(A(F(x)) + S(x))

    S and A as in ``BasicBlock``. With ``groups`` g > 1 the 3x3 conv is grouped
    (the ResNeXt block; see ``ResNeXtBlock``).

    Args:
        channels: C, the input channels.
        width: Wd, the bottleneck width (the 3x3 conv's channels).
        dim_out: O, the output channels (default: 4 Wd, the paper's expansion).
        stride: s, on the 3x3 conv and the shortcut.
        groups: g, groups of the 3x3 conv; must divide Wd.
        norm_layer, act_layer, attention, attention_kwargs, zero_init_last: as in
            ``BasicBlock`` (zero init applies to BN_3).

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, O, ceil(H / s), ceil(W / s)), O = dim_out, s = stride.

    Deviations:
        The stride sits on the 3x3 conv, not on the first 1x1 as in the paper
        (the "ResNet v1.5" of torchvision and most re-implementations): same
        parameters, slightly more FLOPs, better accuracy, and no 1x1 conv that
        skips three quarters of its input.

    Example:
        >>> block = Bottleneck(256, 64)
        >>> block(torch.randn(2, 256, 7, 9)).shape
        torch.Size([2, 256, 7, 9])
    """

    expansion = 4

    def __init__(
        self,
        channels: int,
        width: int,
        *,
        dim_out: int | None = None,
        stride: int = 1,
        groups: int = 1,
        norm_layer: LayerSpec = "batchnorm",
        act_layer: LayerSpec = "relu",
        attention: LayerSpec = None,
        attention_kwargs: dict[str, Any] | None = None,
        zero_init_last: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        dim_out = dim_out or width * self.expansion
        require(width % groups == 0, f"{type(self).__name__}: groups={groups} must divide width={width}")
        require(stride >= 1, f"{type(self).__name__}: stride={stride} must be >= 1")
        self.channels, self.width, self.dim_out = channels, width, dim_out
        self.stride, self.groups = stride, groups
        fk = dict(device=device, dtype=dtype)
        bias = norm_layer is None
        self.conv1 = nn.Conv2d(channels, width, 1, bias=bias, **fk)
        self.bn1 = create_norm(norm_layer, width, **fk)
        self.act1 = create_act(act_layer, **fk)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=bias, **fk)
        self.bn2 = create_norm(norm_layer, width, **fk)
        self.act2 = create_act(act_layer, **fk)
        self.conv3 = nn.Conv2d(width, dim_out, 1, bias=bias, **fk)
        self.bn3 = create_norm(norm_layer, dim_out, **fk)
        self.attn = make_attention(attention, dim_out, attention_kwargs, **fk)
        self.shortcut = _shortcut(channels, dim_out, stride, norm_layer, fk)
        self.act3 = create_act(act_layer, **fk)
        if zero_init_last:
            nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.channels:
            check_shape(x, "B C H W", name=type(self).__name__, C=self.channels)  # raises, naming the misfit
        # stock submodules nobody hooks run as their functional op (blockzoo._fastcall)
        m = self._modules
        h = call(m["act1"], conv_bn(m["conv1"], m["bn1"], x))
        h = call(m["act2"], conv_bn(m["conv2"], m["bn2"], h))
        # F(x) = BN_3(conv1x1(h))
        f = conv_bn(m["conv3"], m["bn3"], h)
        # y = act(A(F(x)) + S(x))
        return call(m["act3"], call(m["attn"], f) + call(m["shortcut"], x))

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, width={self.width}, dim_out={self.dim_out}, "
            f"stride={self.stride}, groups={self.groups}"
        )
