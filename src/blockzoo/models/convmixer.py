"""ConvMixer: a patch embedding, then ConvMixer blocks at one resolution, then a linear head.

Paper: Patches Are All You Need? (Trockman, Kolter, arXiv 2201.09792, 2022).

Letters: B batch, C input channels (in_chans), H W spatial, p patch size, K classes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo.act import LayerSpec, create_act, create_norm
from blockzoo.checks import check_shape, require
from blockzoo.conv.convmixer import ConvMixerBlock
from blockzoo.models.classic import check_min_size, logits_shape
from blockzoo.registry import Example, images, register

__all__ = ["ConvMixer"]


@register(
    name="convmixer",
    family="model",
    paper="Patches Are All You Need?",
    arxiv="2201.09792",
    year=2022,
    input="image",
    output="logits",
    example=Example(
        config=dict(in_chans=3, num_classes=1000),
        inputs=images("in_chans"),
        size=(16, 16),
        out_shape=logits_shape,
        tiny=dict(dim=4, depth=1, kernel_size=3, num_classes=3),
    ),
)
class ConvMixer(nn.Module):
    r"""ConvMixer-h/d: patch embedding, d ConvMixer blocks of width h, global pooling, linear head.

    Trockman & Kolter, "Patches Are All You Need?", arXiv 2201.09792 (Eq. 1-3).

    Equation::

        z_0 = BN(act(conv_{p x p, stride p}(x)))           patch embedding, C -> h
        z_l = ConvMixerBlock(z_{l-1})                       l = 1..d
        logits = W GAP(z_d) + b

    Args:
        in_chans: C, the image channels.
        num_classes: K.
        dim: h, the width (paper: 256 for CIFAR, 768-1536 for ImageNet).
        depth: d, the number of blocks.
        kernel_size: k of the depthwise convs (paper: 5-9).
        patch_size: p (paper: 1-2 for CIFAR, 7-14 for ImageNet).
        act_layer, norm_layer: as in the paper, GELU and BN.

    Shape:
        - Input: (B, C, H, W), C = in_chans, H, W >= p (the patch embedding drops a
          border of H mod p rows and W mod p columns).
        - Output: (B, K) logits, K = num_classes.

    Example:
        >>> model = ConvMixer(3, 10, dim=64, depth=4, kernel_size=5, patch_size=2)
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        *,
        dim: int = 256,
        depth: int = 8,
        kernel_size: int = 9,
        patch_size: int = 7,
        act_layer: LayerSpec = "gelu",
        norm_layer: LayerSpec = "batchnorm",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(depth >= 1 and patch_size >= 1,
                f"ConvMixer: depth={depth} and patch_size={patch_size} must be >= 1")
        self.in_chans, self.num_classes, self.patch_size = in_chans, num_classes, patch_size
        fk = dict(device=device, dtype=dtype)
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dim, patch_size, stride=patch_size, **fk),
            create_act(act_layer, **fk),
            create_norm(norm_layer, dim, **fk),
        )
        self.blocks = nn.Sequential(*[
            ConvMixerBlock(dim, kernel_size, act_layer=act_layer, norm_layer=norm_layer, **fk)
            for _ in range(depth)
        ])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(dim, num_classes, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, "B C H W", name="ConvMixer", C=self.in_chans)
        check_min_size(x, self.patch_size, "ConvMixer", f"one {self.patch_size}x{self.patch_size} patch")
        z = self.blocks(self.stem(x))  # (B, h, H / p, W / p)
        return self.fc(self.pool(z).flatten(1))  # (B, K)

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}, num_classes={self.num_classes}, patch_size={self.patch_size}"
