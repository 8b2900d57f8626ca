r"""sMLP: sparse MLP token mixing along H and along W, fused with the identity.

Paper: Sparse MLP for Image Recognition: Is Self-Attention Really Necessary?
(Tang, arXiv 2109.05422, 2021).

Letters: B batch, C channels, H W spatial.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo.checks import ShapeError, check_shape, require
from blockzoo.registry import Example, images, register

__all__ = ["SparseMLP", "check_image_size"]


def check_image_size(x: torch.Tensor, name: str, channels: int, height: int, width: int) -> None:
    """Check (B, C, H, W) with C = channels and (H, W) = (height, width), naming them when wrong."""
    dims = check_shape(x, "B C H W", name=name, C=channels)
    if (dims["H"], dims["W"]) != (height, width):
        raise ShapeError(
            f"{name}: its spatial mixing weights were built for height={height}, width={width}; "
            f"got input {tuple(x.shape)} with H={dims['H']}, W={dims['W']}"
        )


@register(
    name="smlp",
    family="mlp",
    paper="Sparse MLP for Image Recognition: Is Self-Attention Really Necessary?",
    arxiv="2109.05422",
    year=2021,
    input="image",
    example=Example(config=dict(channels=8, height=8, width=6), inputs=images(), size=(8, 6),
                    sizes=((8, 6),), out_shape="same", tiny=dict(channels=2)),
)
class SparseMLP(nn.Module):
    r"""sMLP token mixing: one linear map along H and one along W, shared by all channels, then fused.

    Tang et al., "Sparse MLP for Image Recognition: Is Self-Attention Really
    Necessary?", arXiv 2109.05422, Eq. (4)-(6)::

        X_H = X W_H^T + b_H        mixing along H (W_H: H x H), the same for every column and channel
        X_W = X W_W^T + b_W        mixing along W (W_W: W x W), the same for every row and channel
        Y   = FC_fuse([X, X_H, X_W])    concatenated channels, 3 C -> C at every pixel

    Each output pixel sees only its own row and column (a sparse connection).

    Args:
        channels: C.
        height, width: H and W, fixed by W_H and W_W; other sizes raise ``ShapeError``
            naming them.
        bias: whether the three linear maps have biases.

    Shape:
        - Input: (B, C, H, W), C = channels, H = height, W = width.
        - Output: (B, C, H, W).

    Example:
        >>> block = SparseMLP(32, 14, 14)
        >>> block(torch.randn(2, 32, 14, 14)).shape
        torch.Size([2, 32, 14, 14])
    """

    def __init__(
        self, channels: int, height: int, width: int, *, bias: bool = True,
        device: Any = None, dtype: Any = None,
    ) -> None:
        super().__init__()
        require(min(channels, height, width) > 0,
                f"SparseMLP: channels={channels}, height={height}, width={width} must be positive")
        self.channels, self.height, self.width = channels, height, width
        fk = dict(device=device, dtype=dtype)
        self.proj_h = nn.Linear(height, height, bias=bias, **fk)
        self.proj_w = nn.Linear(width, width, bias=bias, **fk)
        self.fuse = nn.Conv2d(3 * channels, channels, 1, bias=bias, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_size(x, "SparseMLP", self.channels, self.height, self.width)
        # X_H = mixing along H; X_W = mixing along W
        x_h = self.proj_h(x.transpose(2, 3)).transpose(2, 3)  # (B, C, H, W)
        x_w = self.proj_w(x)  # (B, C, H, W)
        # Y = FC_fuse([X, X_H, X_W])
        return self.fuse(torch.cat([x, x_h, x_w], dim=1))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, height={self.height}, width={self.width}"
