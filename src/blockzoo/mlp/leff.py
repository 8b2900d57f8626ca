r"""CeiT's locally-enhanced feed-forward (LeFF): a depthwise conv between the two pointwise layers.

Paper: Incorporating Convolution Designs into Visual Transformers (Yuan et al., arXiv
2103.11816, ICCV 2021), Sec. 3.3, Fig. 3.

Letters: B batch, C channels (= dim), E = e C the expanded width, H W spatial, N = H W tokens.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo._fastcall import call, conv_bn
from blockzoo.act import LayerSpec, create_act
from blockzoo.checks import ShapeError, check_shape, require
from blockzoo.registry import Example, images, register

__all__ = ["LocallyEnhancedFeedForward"]


@register(
    name="leff",
    family="mlp",
    paper="Incorporating Convolution Designs into Visual Transformers",
    arxiv="2103.11816",
    year=2021,
    input="image",
    example=Example(config=dict(dim=8, hidden=16), inputs=images("dim"), size=(6, 6), out_shape="same",
                    tiny=dict(dim=3, hidden=6)),
    exempt={"grad": "in training mode each conv bias sits just before a batch-statistics BatchNorm, which "
                    "removes it exactly (gradient 0); the biases act in eval through the running statistics "
                    "and the authors' network has them (tests/test_backbones_paper_only.py checks the list)"},
)
class LocallyEnhancedFeedForward(nn.Module):
    r"""Locally-enhanced feed-forward: expand, depthwise k x k conv over the token map, project back.

    Yuan et al., "CeiT", arXiv 2103.11816, Sec. 3.3, Eq. (4)-(6)::

        x_1 = GELU(BN(W_1 x_p))                        W_1: C -> E per token
        x_2 = GELU(BN(DWConv_{k x k}(x_1)))            over the H x W token map
        y   = BN(W_2 x_2)                              W_2: E -> C

    On tokens (``forward_tokens``) the class token x_c skips the layers and is put back in
    front unchanged: [x_c; y].

    Args:
        dim: C. hidden: E (CeiT: 4 C). kernel_size: k (3). act_layer: (GELU).
        norm_eps: of the BatchNorms (1e-5).

    Shape:
        - Input: (B, C, H, W), C = dim, any H, W; output (B, C, H, W).
        - ``forward_tokens(z, H, W)``: z (B, 1 + H W, C) (class token first) -> same shape.

    Deviations:
        Follows the authors' code: no activation after the last BatchNorm; the pointwise
        layers (1 x 1 convs with bias) are the paper's linear projections.

    Example:
        >>> leff = LocallyEnhancedFeedForward(192, 768)
        >>> leff(torch.randn(2, 192, 14, 14)).shape
        torch.Size([2, 192, 14, 14])
    """

    def __init__(self, dim: int, hidden: int, *, kernel_size: int = 3, act_layer: LayerSpec = "gelu",
                 norm_eps: float = 1e-5, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        require(kernel_size % 2 == 1, f"LocallyEnhancedFeedForward: kernel_size={kernel_size} must be odd")
        fk = dict(device=device, dtype=dtype)
        self.dim, self.hidden = dim, hidden
        self.conv1 = nn.Conv2d(dim, hidden, 1, **fk)
        self.bn1 = nn.BatchNorm2d(hidden, eps=norm_eps, **fk)
        self.conv2 = nn.Conv2d(hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden, **fk)
        self.bn2 = nn.BatchNorm2d(hidden, eps=norm_eps, **fk)
        self.conv3 = nn.Conv2d(hidden, dim, 1, **fk)
        self.bn3 = nn.BatchNorm2d(dim, eps=norm_eps, **fk)
        self.act = create_act(act_layer, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, "B C H W", name="LocallyEnhancedFeedForward", C=self.dim)
        m = self._modules  # (eval without autograd: each norm folded into its conv, conv_bn)
        h = call(m["act"], conv_bn(m["conv1"], m["bn1"], x))  # x_1: (B, E, H, W)
        h = call(m["act"], conv_bn(m["conv2"], m["bn2"], h))  # x_2: (B, E, H, W)
        return conv_bn(m["conv3"], m["bn3"], h)  # y: (B, C, H, W)

    def forward_tokens(self, z: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """LeFF on [x_c; x_p] (B, 1 + H W, C): the patch tokens as an H x W map, x_c unchanged."""
        b, n, c = z.shape
        if n != 1 + height * width:
            raise ShapeError(f"LocallyEnhancedFeedForward: expected 1 + {height}*{width} tokens, got {n}")
        cls, patches = z[:, :1], z[:, 1:]
        y = self(patches.transpose(1, 2).reshape(b, c, height, width))  # (B, C, H, W)
        return torch.cat([cls, y.flatten(2).transpose(1, 2)], dim=1)  # (B, 1 + N, C)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden={self.hidden}"
