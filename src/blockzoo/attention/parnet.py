"""ParNet attention: the RepVGG-SSE block with its skip-squeeze-excitation branch.

Paper: Non-deep Networks (Goyal, arXiv 2110.07641, 2021).

Letters: B batch, C channels, H W spatial.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo.act import LayerSpec, create_act, create_norm
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape
from blockzoo.registry import Example, images, register

__all__ = ["ParNetAttention"]


@register(
    name="parnet_attention",
    family="attention",
    paper="Non-deep Networks",
    arxiv="2110.07641",
    year=2021,
    input="image",
    example=Example(config=dict(channels=16), inputs=images(), size=(8, 8),
                    out_shape="same", tiny=dict(channels=4)),
)
class ParNetAttention(nn.Module):
    r"""ParNet's RepVGG-SSE block: 1x1 and 3x3 conv branches plus a skip-squeeze-excitation.

    Goyal et al., "Non-deep Networks", arXiv 2110.07641.

    Equation::

        b_1 = BN(conv_1x1(x))
        b_3 = BN(conv_3x3(x))
        s   = BN(x)                                        the skip branch
        SSE = s * sigmoid(W GAP(s))                        one bias-free 1x1 conv C -> C
                                                           (no bottleneck)
        y   = act(b_1 + b_3 + SSE)

    Args:
        channels: C, the input (and output) channels.
        act_layer: the output activation (paper: SiLU).
        norm_layer: the branches' normalisation (paper: BN).

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, C, H, W).

    Deviations:
        The paper does not say whether the SSE's 1x1 conv has a bias; the authors' release
        (imankgoyal/NonDeepNetworks, ``SE1`` -> ``ConvSig``) has none, and neither do we.
        Only the equal-width, stride-1 block is covered (the release's downsampling
        variant, with its ``2 * sigmoid`` gate on the input, is not).

    Example:
        >>> pa = ParNetAttention(64)
        >>> pa(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(self, channels: int, *, act_layer: LayerSpec = "silu",
                 norm_layer: LayerSpec = "batchnorm2d", device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.channels = channels
        self.conv1x1 = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False, **fk),
                                     create_norm(norm_layer, channels, **fk))
        self.conv3x3 = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False, **fk),
                                     create_norm(norm_layer, channels, **fk))
        self.skip_norm = create_norm(norm_layer, channels, **fk)
        self.excite = nn.Conv2d(channels, channels, 1, bias=False, **fk)
        self.act = create_act(act_layer, **fk)
        self.attn_map = AttentionMap("channel")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, "B C H W", name="ParNetAttention", C=self.channels)
        s = self.skip_norm(x)
        # SSE = BN(x) * sigmoid(W GAP(BN(x)))
        gate = self.attn_map(torch.sigmoid(self.excite(s.mean((2, 3), keepdim=True))))  # (B, C, 1, 1)
        return self.act(self.conv1x1(x) + self.conv3x3(x) + s * gate)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"
