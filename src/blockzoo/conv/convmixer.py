"""The ConvMixer block: a residual depthwise conv mixes space, a pointwise conv mixes channels.

Paper: Patches Are All You Need? (Trockman, Kolter, arXiv 2201.09792, 2022).

Letters: B batch, C channels, H W spatial, k kernel size.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo._fastcall import call
from blockzoo.act import LayerSpec, create_act, create_norm
from blockzoo.checks import check_shape
from blockzoo.registry import Example, images, register

__all__ = ["ConvMixerBlock"]


@register(
    name="convmixer_block",
    family="conv",
    paper="Patches Are All You Need?",
    arxiv="2201.09792",
    year=2022,
    input="image",
    example=Example(
        config=dict(channels=16, kernel_size=5),
        inputs=images(),
        size=(8, 8),
        out_shape="same",
        tiny=dict(channels=3, kernel_size=3),
    ),
)
class ConvMixerBlock(nn.Module):
    r"""ConvMixer block: residual depthwise conv (spatial mixing), then pointwise conv (channel mixing).

    Trockman & Kolter, "Patches Are All You Need?", arXiv 2201.09792 (Eq. 2, 3).

    Equation::

        z' = BN(act(DepthwiseConv_k(z))) + z
        y  = BN(act(PointwiseConv(z')))

    Args:
        channels: C (the paper's h, the hidden dimension).
        kernel_size: k of the depthwise conv (paper: 9); "same" padding, even k allowed.
        act_layer: the activation (paper: GELU).
        norm_layer: the norm after each activation (paper: BN).

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, C, H, W).

    Example:
        >>> block = ConvMixerBlock(64, 9)
        >>> block(torch.randn(2, 64, 7, 10)).shape
        torch.Size([2, 64, 7, 10])
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 9,
        *,
        act_layer: LayerSpec = "gelu",
        norm_layer: LayerSpec = "batchnorm",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        self.channels, self.kernel_size = channels, kernel_size
        fk = dict(device=device, dtype=dtype)
        self.dw = nn.Conv2d(channels, channels, kernel_size, groups=channels, padding="same", **fk)
        self.act1 = create_act(act_layer, **fk)
        self.bn1 = create_norm(norm_layer, channels, **fk)
        self.pw = nn.Conv2d(channels, channels, 1, **fk)
        self.act2 = create_act(act_layer, **fk)
        self.bn2 = create_norm(norm_layer, channels, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.channels:
            check_shape(x, "B C H W", name="ConvMixerBlock", C=self.channels)  # raises, naming the misfit
        m = self._modules  # stock modules as their ops unless hooked (blockzoo._fastcall)
        # z' = BN(act(DWConv(z))) + z
        x = call(m["bn1"], call(m["act1"], call(m["dw"], x))) + x
        # y = BN(act(PWConv(z')))
        return call(m["bn2"], call(m["act2"], call(m["pw"], x)))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}"
