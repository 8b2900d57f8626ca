r"""PiT's pooling layer: a strided depthwise convolution on the token map, a linear map on the class tokens.

Paper: Rethinking Spatial Dimensions of Vision Transformers (PiT, Heo et al., arXiv
2103.16302, 2021), Sec. 3.2 and Fig. 4.

Letters: B batch, C channels (= dim), C' = dim_out, H W spatial, s stride, T class tokens.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo._fastcall import listened
from blockzoo._fastops import grouped_conv
from blockzoo.checks import check_shape, require
from blockzoo.registry import Example, images, register

__all__ = ["PiTPooling"]


def _pooled_shape(shape: Any, cfg: Any) -> tuple[int, int, int, int]:
    s = cfg.get("stride", 2)
    return (shape[0], cfg["dim_out"], *((n + 2 * (s // 2) - s - 1) // s + 1 for n in shape[2:]))


@register(
    name="pit_pooling",
    family="conv",
    paper="Rethinking Spatial Dimensions of Vision Transformers",
    arxiv="2103.16302",
    year=2021,
    input="image",
    example=Example(config=dict(dim=8, dim_out=16), inputs=images("dim"), size=(8, 8),
                    sizes=((7, 5), (1, 3)), out_shape=_pooled_shape, tiny=dict(dim=4, dim_out=8)),
    exempt={"grad": "fc maps the class tokens, which only a PiT stage passes (forward(x, cls_tokens)); "
                    "an image alone leaves it unused"},
)
class PiTPooling(nn.Module):
    r"""Token-map pooling: a depthwise (s+1) x (s+1) conv of stride s widening C to C'; linear class tokens.

    Heo et al., "Rethinking Spatial Dimensions of Vision Transformers", arXiv 2103.16302,
    Sec. 3.2: the spatial tokens are reshaped into a map and pooled by a depth-wise
    convolution that halves H and W and widens the channels; the class token, which has
    no position, goes through a fully-connected layer to the new width.

    Equation::

        Y[:, c'] = sum_{u,v} W[c', u, v] X[:, floor(c' / m), s h + u - p, s w + v - p] + b_c'
                   (m = C' / C, kernel s + 1, padding p = floor(s / 2))
        t' = W_fc t + b_fc                                       (class tokens)

    Args:
        dim: C.
        dim_out: C' (a multiple of C; PiT doubles it).
        stride: s (PiT: 2).

    Shape:
        - Input: (B, C, H, W), C = dim, any H, W; optional class tokens (B, T, C).
        - Output: (B, C', H', W'), H' = floor((H + 2p - s - 1) / s) + 1 (= ceil(H / 2) for s = 2),
          and with class tokens the pair ``(map, tokens (B, T, C'))``.

    Example:
        >>> pool = PiTPooling(64, 128)
        >>> pool(torch.randn(2, 64, 27, 27)).shape
        torch.Size([2, 128, 14, 14])
    """

    def __init__(self, dim: int, dim_out: int, *, stride: int = 2, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        require(stride >= 1, f"PiTPooling: stride={stride} must be >= 1")
        require(dim_out % dim == 0, f"PiTPooling: dim_out={dim_out} must be a multiple of dim={dim} "
                                    "(a depthwise conv with a channel multiplier)")
        fk = dict(device=device, dtype=dtype)
        self.dim, self.dim_out, self.stride = dim, dim_out, stride
        self.conv = nn.Conv2d(dim, dim_out, stride + 1, stride, stride // 2, groups=dim, **fk)
        self.fc = nn.Linear(dim, dim_out, **fk)

    def forward(self, x: torch.Tensor, cls_tokens: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        shape = x.shape
        if len(shape) != 4 or shape[1] != self.dim:  # (integer tests first; the message on failure)
            check_shape(x, "B C H W", name="PiTPooling", C=self.dim)
        conv = self.conv
        params = conv._parameters
        if type(conv) is nn.Conv2d and "weight" in params and "bias" in params and not listened(conv):
            y = grouped_conv(conv, x, params["weight"], params["bias"])  # (B, C', H', W')
        else:
            y = conv(x)
        if cls_tokens is None:
            return y
        check_shape(cls_tokens, "B T C", name="PiTPooling", arg="cls_tokens", B=shape[0], C=self.dim)
        # t' = W_fc t + b_fc
        return y, self.fc(cls_tokens)  # (B, T, C')

    def extra_repr(self) -> str:
        return f"dim={self.dim}, dim_out={self.dim_out}, stride={self.stride}"
