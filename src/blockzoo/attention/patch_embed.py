"""ViT patch embedding: an image cut into p x p patches, each mapped to a token.

Paper: An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale
(Dosovitskiy, arXiv 2010.11929, 2020).

Letters: B batch, C image channels (= channels), H W spatial, p patch size,
D token width (= dim), N = (H / p) * (W / p) tokens.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo._fastcall import call, listened
from blockzoo.act import LayerSpec, create_norm
from blockzoo.checks import check_divisible, check_shape, require
from blockzoo.registry import Example, images, register

__all__ = ["PatchEmbed", "resize_grid_embedding", "resize_token_embedding"]


# Below this many input elements a CPU patch convolution runs as im2col + one GEMM
# (``thnn_conv2d``): oneDNN's fixed cost (~30-40 us per call) is most of a small image's
# time there, and from about this size on oneDNN is as fast or faster.
_IM2COL_MAX = 16384


def _patch_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for the stride-p, unpadded p x p patch convolution; on a small CPU input
    without autograd, the same convolution as im2col + GEMM instead of oneDNN (the same sums,
    another order)."""
    # inference only: thnn_conv2d's backward refuses some weight-gradient layouts ("grad_weight
    # must be contiguous", seen in CoaT's, PCPVT's and Twins-SVT's patch embeddings)
    if (not torch.compiler.is_compiling() and not torch.jit.is_tracing() and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64) and x.numel() <= _IM2COL_MAX
            and not torch.is_grad_enabled() and type(conv) is nn.Conv2d and not listened(conv)):
        p = conv._parameters
        return torch._C._nn.thnn_conv2d(x, p["weight"], conv.kernel_size, p["bias"], conv.stride, 0)
    return call(conv, x)


def _tokens_shape(shape: Any, cfg: Any) -> tuple[int, int, int]:
    p = cfg["patch_size"]
    return (shape[0], -(-shape[2] // p) * -(-shape[3] // p), cfg["dim"])


@register(
    name="patch_embed",
    family="attention",
    paper="An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale",
    arxiv="2010.11929",
    year=2020,
    input="image",
    example=Example(config=dict(channels=3, dim=16, patch_size=2), inputs=images("channels"),
                    size=(8, 8), sizes=((6, 10), (12, 4)), out_shape=_tokens_shape,
                    tiny=dict(dim=4)),
)
class PatchEmbed(nn.Module):
    r"""Image to tokens: non-overlapping p x p patches, each linearly projected.

    Dosovitskiy et al., "An Image is Worth 16x16 Words", arXiv 2010.11929, eq. (1).

    Equation, for patch n flattened to x_p^n in R^(p*p*C)::

        z_n = E x_p^n + b,   E: (D, p*p*C)      (a p x p convolution with stride p)

    Args:
        channels: C, the image channels.
        dim: D, the token width.
        patch_size: p.
        pad: zero-pad the bottom/right so H and W become multiples of p; without it,
            H or W not divisible by p raises ``ShapeError``.
        norm_layer: optional normalisation of the tokens (``"layernorm"``).
        bias: bias of the projection.

    Shape:
        - Input: (B, C, H, W), C = channels; H, W multiples of p = patch_size (any H, W
          with ``pad=True``).
        - Output: (B, N, D), D = dim, N = ceil(H / p) * ceil(W / p), patches in row-major
          order; ``grid(H, W)`` gives (ceil(H / p), ceil(W / p)).

    Deviations:
        The class token and position embedding are the model's, not this block's.

    Example:
        >>> embed = PatchEmbed(3, 64, 16)
        >>> embed(torch.randn(2, 3, 224, 160)).shape
        torch.Size([2, 140, 64])
    """

    def __init__(
        self,
        channels: int,
        dim: int,
        patch_size: int,
        *,
        pad: bool = False,
        norm_layer: LayerSpec = None,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(patch_size > 0, f"PatchEmbed: patch_size={patch_size} must be positive")
        self.channels, self.dim, self.patch_size, self.pad = channels, dim, patch_size, pad
        fk = dict(device=device, dtype=dtype)
        self.proj = nn.Conv2d(channels, dim, patch_size, stride=patch_size, bias=bias, **fk)
        self.norm = create_norm(norm_layer, dim, **fk)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """The token grid (H / p, W / p) for an image of the given size (rounded up with pad)."""
        p = self.patch_size
        return -(-height // p), -(-width // p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = check_shape(x, "B C H W", name="PatchEmbed", C=self.channels)
        p = self.patch_size
        if self.pad:
            x = F.pad(x, (0, -dims["W"] % p, 0, -dims["H"] % p))  # (B, C, H', W')
        else:
            check_divisible(dims["H"], p, name="PatchEmbed", what="input height H")
            check_divisible(dims["W"], p, name="PatchEmbed", what="input width W")
        z = _patch_conv(self.proj, x)  # (B, D, H/p, W/p)
        return call(self.norm, z.flatten(2).transpose(1, 2))  # (B, N, D)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, dim={self.dim}, patch_size={self.patch_size}, pad={self.pad}"


def resize_grid_embedding(pos: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A learned grid embedding (1, D, g_h, g_w) resized bicubically to ``size`` (itself when equal),
    as ViT's and DeiT's code does when fine-tuning at another resolution."""
    if tuple(pos.shape[-2:]) == tuple(size):
        return pos
    return F.interpolate(pos, size=tuple(size), mode="bicubic", align_corners=False)


def resize_token_embedding(pos: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """A learned (1, g_h g_w, D) token embedding of a ``grid`` resized bicubically to ``size``."""
    if tuple(size) == tuple(grid):
        return pos
    img = pos.reshape(1, *grid, pos.shape[-1]).permute(0, 3, 1, 2)  # (1, D, g_h, g_w)
    return resize_grid_embedding(img, size).flatten(2).transpose(1, 2)  # (1, g_h' g_w', D)
