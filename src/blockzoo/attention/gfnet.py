"""GFNet's global filter: a learnable filter multiplied in the 2-D Fourier domain.

Paper: Global Filter Networks for Image Classification (Rao, arXiv 2107.00645, 2021).

Letters: B batch, C channels, H W spatial (input), h w the size the filter is defined for.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import ShapeError, check_shape, require
from blockzoo.registry import Example, images, register

__all__ = ["GlobalFilter"]


@register(
    name="global_filter",
    family="attention",
    paper="Global Filter Networks for Image Classification",
    arxiv="2107.00645",
    year=2021,
    input="image",
    example=Example(config=dict(channels=16, height=8, width=8), inputs=images(), size=(8, 8),
                    out_shape="same", tiny=dict(channels=4)),
)
class GlobalFilter(nn.Module):
    r"""Global filter layer: FFT2, multiply by a learned complex filter, inverse FFT2.

    Rao et al., "Global Filter Networks for Image Classification", arXiv 2107.00645.

    Equation, per channel c::

        X   = FFT2(x)                   real FFT over (H, W): (B, C, H, W // 2 + 1), orthonormal
        X~  = K_c * X                   K: learnable complex filter (C, h, w // 2 + 1)
        y   = IFFT2(X~)                 back to (B, C, H, W)

    The filter is defined for one size (height, width). At another size, with
    ``resize=True`` (default), K's real and imaginary parts are bilinearly
    interpolated to (H, W // 2 + 1) (align_corners=True) before the product; with
    ``resize=False`` another size raises ``ShapeError``.

    Args:
        channels: C, the input channels.
        height: h, the input height the filter is defined for.
        width: w, the input width the filter is defined for.
        resize: interpolate the filter for other sizes (True) or reject them (False).

    Shape:
        - Input: (B, C, H, W), C = channels; (H, W) = (height, width), or any size when
          ``resize`` is True.
        - Output: (B, C, H, W).

    Deviations:
        The paper defines the filter for one size only; interpolating it to other sizes is
        our choice, so that the layer works at any H, W. The filter is initialised with
        N(0, 0.02^2) entries. Half-precision inputs are transformed in float32 (CPU FFTs
        do not support them) and cast back.

    Example:
        >>> gf = GlobalFilter(64, 14, 14)
        >>> gf(torch.randn(2, 64, 14, 14)).shape, gf(torch.randn(2, 64, 7, 9)).shape
        (torch.Size([2, 64, 14, 14]), torch.Size([2, 64, 7, 9]))
    """

    def __init__(self, channels: int, height: int, width: int, *, resize: bool = True,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        require(height >= 1 and width >= 1, f"GlobalFilter: height={height}, width={width} must be >= 1")
        self.channels, self.height, self.width, self.resize = channels, height, width, resize
        self.weight = nn.Parameter(
            torch.randn(channels, height, width // 2 + 1, 2, device=device, dtype=dtype) * 0.02
        )
        self.attn_map = AttentionMap("filter")

    def filter_for(self, h: int, w: int) -> torch.Tensor:
        """The complex filter (C, h, w // 2 + 1) for an input of size (h, w).

        Half-precision weights are promoted to float32 (complex32 FFTs are not supported).
        """
        weight = self.weight if self.weight.dtype in (torch.float32, torch.float64) else self.weight.float()
        if (h, w // 2 + 1) != (self.height, self.width // 2 + 1):
            if not self.resize:
                raise ShapeError(
                    f"GlobalFilter: filter defined for (H, W)=({self.height}, {self.width}), got "
                    f"({h}, {w}); sizes with the same (H, W // 2 + 1) work, or pass resize=True"
                )
            grid = weight.permute(3, 0, 1, 2).reshape(1, 2 * self.channels, self.height, -1)  # (1, 2C, h, w')
            grid = F.interpolate(grid, size=(h, w // 2 + 1), mode="bilinear", align_corners=True)
            weight = grid.view(2, self.channels, h, w // 2 + 1).permute(1, 2, 3, 0)  # (C, H, W', 2)
        return torch.complex(weight[..., 0], weight[..., 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if len(shape) != 4 or shape[1] != self.channels:  # (integer tests first; the message on failure)
            check_shape(x, "B C H W", name="GlobalFilter", C=self.channels)
        h, w = shape[2], shape[3]
        in_dtype = x.dtype
        work = x if in_dtype in (torch.float32, torch.float64) else x.float()
        weight = self._parameters.get("weight")
        attn_map = self.attn_map
        if (weight is not None and weight.dtype == in_dtype and weight.is_contiguous()
                and h == self.height and w // 2 + 1 == self.width // 2 + 1
                and not (attn_map._recording or attn_map._forward_hooks or attn_map._forward_pre_hooks)):
            # the filter at its own size, nobody recording it: a complex view of the weight
            # (filter_for's torch.complex copies its two halves into a new tensor)
            k = torch.view_as_complex(weight)  # (C, H, W // 2 + 1) complex
        else:
            k = attn_map(self.filter_for(h, w))  # (C, H, W // 2 + 1) complex
        # X = FFT2(x); y = IFFT2(K * X)
        spec = torch.fft.rfft2(work, dim=(2, 3), norm="ortho")  # (B, C, H, W // 2 + 1)
        if k.dtype != spec.dtype or (torch.is_grad_enabled() and (spec.requires_grad or k.requires_grad)):
            spec = spec * k
        else:
            spec.mul_(k)  # (a fresh spectrum nobody differentiates: in place)
        y = torch.fft.irfft2(spec, s=(h, w), dim=(2, 3), norm="ortho")  # (B, C, H, W)
        return y.to(in_dtype)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, height={self.height}, width={self.width}, resize={self.resize}"
