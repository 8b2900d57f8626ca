"""Channel attention: gates that rescale each channel of a feature map.

Papers: Squeeze-and-Excitation Networks (Hu, arXiv 1709.01507, 2017).

Letters: B batch, C channels, H W spatial.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo.act import LayerSpec, create_act
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require
from blockzoo.registry import Example, images, register

__all__ = ["SqueezeExcite"]


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
        check_shape(x, "B C H W", name="SqueezeExcite", C=self.channels)
        z = x.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        # s = sigmoid(W_2 act(W_1 z))
        s = self.attn_map(self.gate(self.fc2(self.act(self.fc1(z)))))  # (B, C, 1, 1)
        return x * s

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.hidden}"
