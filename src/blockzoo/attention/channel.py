"""Channel attention: gates that rescale each channel of a feature map.

Papers: Squeeze-and-Excitation Networks (Hu, arXiv 1709.01507, 2017);
ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks
(Wang, arXiv 1910.03151, 2020).

Letters: B batch, C channels, H W spatial.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.module import _global_forward_hooks, _global_forward_pre_hooks

from blockzoo._fastcall import call
from blockzoo._kept import conv1d_band
from blockzoo.act import LayerSpec, create_act
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require
from blockzoo.registry import Example, images, register

__all__ = ["EfficientChannelAttention", "SqueezeExcite", "eca_kernel_size"]


@register(
    name="se",
    family="attention",
    paper="Squeeze-and-Excitation Networks",
    arxiv="1709.01507",
    year=2017,
    input="image",
    example=Example(config=dict(channels=16, reduction=4), inputs=images(), size=(8, 8),
                    out_shape="same", tiny=dict(channels=4, reduction=2)),
)
class SqueezeExcite(nn.Module):
    r"""Squeeze-and-Excitation: a channel gate from globally pooled features.

    Hu et al., "Squeeze-and-Excitation Networks", arXiv 1709.01507.

    Equation (squeeze, excite, scale)::

        z_c = 1/(H W) sum_{i,j} x_c(i, j)
        s   = sigmoid(W_2 act(W_1 z + b_1) + b_2)      W_1: C -> C/r,  W_2: C/r -> C
        y_c = s_c * x_c

    Args:
        channels: C, the input channels.
        reduction: r, the bottleneck ratio of the excitation MLP (hidden = C // r,
            at least ``min_hidden``).
        hidden: the bottleneck width, overriding ``channels // reduction``.
        min_hidden: the smallest bottleneck width allowed by ``reduction``.
        act_layer: the bottleneck activation (paper: ReLU).
        gate_layer: the gate nonlinearity (paper: sigmoid).
        bias: whether the two 1x1 maps have biases.

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, C, H, W); each channel of the input scaled by its gate in (0, 1).

    Deviations:
        None from the paper; checked against the official Caffe models
        (hujie-frank/SENet, ``SE-ResNet-50.prototxt``): both FCs are 1x1 convolutions
        with biases (Caffe's default ``bias_term``), the hidden width is exactly C / r
        (16 for C = 256, 32 for C = 512), not rounded. timm's ``SEModule`` rounds it
        up to a multiple of 8 (8 for C = 64, where ours is 4); ``hidden=`` reproduces
        any such width.

    Example:
        >>> se = SqueezeExcite(64)
        >>> se(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        reduction: int = 16,
        hidden: int | None = None,
        min_hidden: int = 1,
        act_layer: LayerSpec = "relu",
        gate_layer: LayerSpec = "sigmoid",
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(reduction >= 1, f"SqueezeExcite: reduction={reduction} must be >= 1")
        self.channels = channels
        self.hidden = hidden or max(min_hidden, channels // reduction)
        fk = dict(device=device, dtype=dtype)
        self.fc1 = nn.Conv2d(channels, self.hidden, 1, bias=bias, **fk)
        self.act = create_act(act_layer, **fk)
        self.fc2 = nn.Conv2d(self.hidden, channels, 1, bias=bias, **fk)
        self.gate = create_act(gate_layer, **fk)
        self.attn_map = AttentionMap("channel")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.channels:
            check_shape(x, "B C H W", name="SqueezeExcite", C=self.channels)  # raises, naming the misfit
        # Submodules read from ``_modules``, not through nn.Module.__getattr__ (~0.4 us each here).
        mods = self._modules
        fc1, act, fc2, gate = mods["fc1"], mods["act"], mods["fc2"], mods["gate"]
        # (a parametrized conv is a subclass whose weight is not in ``_parameters``: module path)
        if (type(fc1) is not nn.Conv2d or type(fc2) is not nn.Conv2d
                or _global_forward_hooks or _global_forward_pre_hooks
                or fc1._forward_hooks or fc2._forward_hooks or act._forward_hooks or gate._forward_hooks
                or fc1._forward_pre_hooks or fc2._forward_pre_hooks
                or act._forward_pre_hooks or gate._forward_pre_hooks):
            z = x.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
            return x * mods["attn_map"](gate(fc2(act(fc1(z)))))  # as modules, so their hooks fire
        # The same maps as matrix products on the pooled (B, C) vector, without four module
        # calls: on a (B, C, 1, 1) tensor a 1x1 conv and the calls cost more than the maths
        # (docs/benchmarks.md, "SE and GRN"). The parameters are the convs' own.
        p1, p2 = fc1._parameters, fc2._parameters
        z = x.mean((2, 3))  # (B, C)
        # s = sigmoid(W_2 act(W_1 z + b_1) + b_2); a stock ReLU / sigmoid in place on the
        # fresh (B, C/r) and (B, C) products when autograd is off
        h = F.linear(z, p1["weight"].flatten(1), p1["bias"])
        inplace = not (torch.is_grad_enabled() and h.requires_grad)
        h = h.relu_() if inplace and type(act) is nn.ReLU else _call(act, h)
        s = F.linear(h, p2["weight"].flatten(1), p2["bias"])
        s = s.sigmoid_() if inplace and type(gate) is nn.Sigmoid else _call(gate, s)
        return x * mods["attn_map"](s.view(s.shape[0], s.shape[1], 1, 1))  # (B, C, H, W)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.hidden}"


_PLAIN_ACTS: dict[type[nn.Module], Callable[[torch.Tensor], torch.Tensor]] = {
    nn.ReLU: torch.relu, nn.Sigmoid: torch.sigmoid, nn.Identity: lambda t: t,
}


def _call(m: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """``m(t)`` for an unhooked module; the plain function for a stateless ReLU/sigmoid."""
    f = _PLAIN_ACTS.get(type(m))
    if f is None or getattr(m, "inplace", False):
        return m(t)
    return f(t)


def eca_kernel_size(channels: int, *, gamma: float = 2.0, b: float = 1.0) -> int:
    """ECA's adaptive kernel size k = |log2(C)/gamma + b/gamma|_odd.

    ``|t|_odd`` is the odd number nearest to t, computed as in the paper's reference
    setting: ``t = int(|(log2 C + b) / gamma|)``, ``k = t`` if t is odd else ``t + 1``
    (a tie, t exactly even, goes up). C=64 gives 3, C=128 gives 5, C=2048 gives 7.
    """
    require(channels >= 1, f"eca_kernel_size: channels={channels} must be >= 1")
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


@register(
    name="eca",
    family="attention",
    paper="ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks",
    arxiv="1910.03151",
    year=2020,
    input="image",
    example=Example(config=dict(channels=16), inputs=images(), size=(8, 8),
                    out_shape="same", tiny=dict(channels=4, kernel_size=3)),
)
class EfficientChannelAttention(nn.Module):
    r"""ECA: a channel gate from a 1-D convolution across pooled channels (no bottleneck).

    Wang et al., "ECA-Net: Efficient Channel Attention for Deep Convolutional Neural
    Networks", arXiv 1910.03151.

    Equation::

        z_c = 1/(H W) sum_{i,j} x_c(i, j)
        s   = sigmoid(conv1d_k(z))          one shared k-tap kernel over the channel axis,
                                            zero padding (k-1)/2, no bias
        y_c = s_c * x_c
        k   = |log2(C)/gamma + b/gamma|_odd   when kernel_size is not given

    Args:
        channels: C, the input channels.
        kernel_size: k, the taps of the 1-D conv across channels (odd); default from
            ``eca_kernel_size(channels, gamma=gamma, b=b)``.
        gamma: gamma of the kernel-size formula (paper: 2); only used when
            ``kernel_size`` is None.
        b: b of the kernel-size formula (paper: 1); only used when ``kernel_size`` is None.
        gate_layer: the gate nonlinearity (paper: sigmoid).

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, C, H, W); each channel scaled by its gate in (0, 1).

    Deviations:
        None from the paper's equations; checked against the official code
        (BangguWu/ECANet, ``models/eca_module.py``): a ``Conv1d(1, 1, k)`` without bias,
        zero padding (k - 1) / 2, over the average-pooled channels, then a sigmoid.
        The official module takes k as given; its released ResNet-50 used per-stage
        k = 3, 5, 5, 7 (the formula gives 5, 5, 5, 7) and its MobileNetV2 k = 1 for
        C <= 96. The default here is the paper's formula, which gives k = 1 for
        C <= 7 (as the official MobileNetV2's k = 1 shows, a one-tap ECA is a valid
        member of the family); timm clamps k to at least 3.

    Example:
        >>> eca = EfficientChannelAttention(64)
        >>> eca.kernel_size, eca(torch.randn(2, 64, 7, 9)).shape
        (3, torch.Size([2, 64, 7, 9]))
    """

    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int | None = None,
        gamma: float = 2.0,
        b: float = 1.0,
        gate_layer: LayerSpec = "sigmoid",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(gamma > 0, f"EfficientChannelAttention: gamma={gamma} must be > 0")
        if kernel_size is None:
            kernel_size = eca_kernel_size(channels, gamma=gamma, b=b)
        require(
            kernel_size >= 1 and kernel_size % 2 == 1,
            f"EfficientChannelAttention: kernel_size={kernel_size} must be odd and >= 1",
        )
        self.channels = channels
        self.kernel_size = kernel_size
        fk = dict(device=device, dtype=dtype)
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False, **fk)
        self.gate = create_act(gate_layer, **fk)
        self.attn_map = AttentionMap("channel")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.channels:
            check_shape(x, "B C H W", name="EfficientChannelAttention", C=self.channels)  # raises
        mods = self._modules
        band = None
        if not (torch.is_grad_enabled() or torch.compiler.is_compiling()) and type(mods["gate"]) in _GATES:
            band = conv1d_band(mods["conv"], x.shape[1], max(1, x.shape[2] * x.shape[3]))
        if band is not None and band.dtype == x.dtype and band.device == x.device and x.numel():
            # without autograd: GAP and the k-tap conv across channels as the spatial sum times
            # the conv's banded (C, C) matrix divided by H W (cached), one matrix product
            s = call(mods["gate"], torch.mm(x.sum((2, 3)), band))  # (B, C)
            return x * mods["attn_map"](s.view(s.shape[0], -1, 1, 1))  # (B, C, 1, 1)
        z = x.mean((2, 3)).unsqueeze(1)  # (B, 1, C)
        # s = sigmoid(conv1d_k(z)); the conv and gate as their ops unless hooked (blockzoo._fastcall)
        s = call(mods["gate"], call(mods["conv"], z))  # (B, 1, C)
        s = mods["attn_map"](s.transpose(1, 2).unsqueeze(-1))  # (B, C, 1, 1)
        return x * s

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}"


# gates acting on each element alone (so on (B, C) as on (B, 1, C)); PReLU's slopes are per channel
_GATES = (nn.Sigmoid, nn.Hardsigmoid, nn.Tanh, nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU,
          nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish, nn.Softplus)
