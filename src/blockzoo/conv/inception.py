"""The Inception block: parallel 1x1, 3x3, 5x5 and pooling branches, concatenated.

Paper: Going Deeper with Convolutions (Szegedy et al., arXiv 1409.4842, 2014).

Letters: B batch, C channels, H W spatial.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo.act import LayerSpec
from blockzoo.checks import check_shape, require
from blockzoo.conv.conv_bn_act import ConvBnAct
from blockzoo.registry import Example, images, register

__all__ = ["InceptionBlock"]


def _inception_out(shape: Any, cfg: Any) -> tuple[int, ...]:
    pool = cfg.get("pool_proj") or shape[1]
    c = cfg["out_1x1"] + cfg["out_3x3"] + cfg["out_5x5"] + pool
    return (shape[0], c, shape[2], shape[3])


@register(
    name="inception",
    family="conv",
    paper="Going Deeper with Convolutions",
    arxiv="1409.4842",
    year=2014,
    input="image",
    example=Example(
        config=dict(channels=16, out_1x1=8, red_3x3=8, out_3x3=12, red_5x5=4, out_5x5=6, pool_proj=6),
        inputs=images(),
        size=(8, 8),
        out_shape=_inception_out,
        tiny=dict(channels=3, out_1x1=2, red_3x3=2, out_3x3=2, red_5x5=1, out_5x5=2, pool_proj=1),
    ),
)
class InceptionBlock(nn.Module):
    r"""Inception block: four parallel branches concatenated along channels.

    Szegedy et al., "Going Deeper with Convolutions" (GoogLeNet), arXiv 1409.4842.

    Equation (each conv followed by its norm and ReLU; [.,.] concatenation on C)::

        y = [ conv1x1(x),
              conv3x3(conv1x1_r3(x)),
              conv5x5(conv1x1_r5(x)),
              conv1x1_p(maxpool3x3(x)) ]

    The 1x1 reductions (``red_3x3``, ``red_5x5``) shrink the channels before the
    expensive 3x3 and 5x5 convolutions; that is what makes the block cheap (with
    C = 192, the paper's 3a block costs about a quarter of the naive one).
    Passing ``None`` for a reduction (or for ``pool_proj``) gives the paper's
    naive version of that branch: the 3x3 / 5x5 conv reads all C channels, the
    pooled branch passes the C channels on unprojected.

    Args:
        channels: C, the input channels.
        out_1x1: channels of the 1x1 branch.
        red_3x3: the 1x1 reduction before the 3x3 conv (``None``: none).
        out_3x3: channels of the 3x3 branch.
        red_5x5: the 1x1 reduction before the 5x5 conv (``None``: none).
        out_5x5: channels of the 5x5 branch.
        pool_proj: the 1x1 projection after the 3x3 max pool (``None``: none, C channels).
        norm_layer: norm after every conv (paper: none; GoogLeNet v1 predates
            batch norm; ``"batchnorm"`` trains more easily).
        act_layer: activation after every conv (paper: ReLU).

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, O, H, W), O = out_1x1 + out_3x3 + out_5x5 + (pool_proj or C).

    Example:
        >>> block = InceptionBlock(192, 64, 96, 128, 16, 32, 32)      # GoogLeNet 3a
        >>> block(torch.randn(1, 192, 28, 28)).shape
        torch.Size([1, 256, 28, 28])
    """

    def __init__(
        self,
        channels: int,
        out_1x1: int,
        red_3x3: int | None,
        out_3x3: int,
        red_5x5: int | None,
        out_5x5: int,
        pool_proj: int | None,
        *,
        norm_layer: LayerSpec = None,
        act_layer: LayerSpec = "relu",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        sizes = [out_1x1, out_3x3, out_5x5] + [v for v in (red_3x3, red_5x5, pool_proj) if v is not None]
        require(all(v >= 1 for v in sizes), f"InceptionBlock: branch widths {sizes} must be >= 1")
        self.channels = channels
        self.dim_out = out_1x1 + out_3x3 + out_5x5 + (pool_proj or channels)
        kw = dict(norm_layer=norm_layer, act_layer=act_layer, device=device, dtype=dtype)

        def reduced(red: int | None, out: int, k: int) -> nn.Module:
            if red is None:
                return ConvBnAct(channels, out, k, **kw)
            return nn.Sequential(ConvBnAct(channels, red, 1, **kw), ConvBnAct(red, out, k, **kw))

        self.branch1 = ConvBnAct(channels, out_1x1, 1, **kw)
        self.branch3 = reduced(red_3x3, out_3x3, 3)
        self.branch5 = reduced(red_5x5, out_5x5, 5)
        pool = nn.MaxPool2d(3, stride=1, padding=1)
        self.branch_pool = (
            pool if pool_proj is None else nn.Sequential(pool, ConvBnAct(channels, pool_proj, 1, **kw))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, "B C H W", name="InceptionBlock", C=self.channels)
        # y = [b1(x), b3(x), b5(x), bpool(x)] along C
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], 1)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, dim_out={self.dim_out}"
