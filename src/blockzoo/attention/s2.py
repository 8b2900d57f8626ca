"""S² attention: the spatial-shift + split-attention mixer of S²-MLPv2.

Paper: S²-MLPv2: Improved Spatial-Shift MLP Architecture for Vision (Yu, arXiv
2108.01072, 2021).

Letters: B batch, C channels, H W spatial, M = 3 branches.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo.act import LayerSpec, create_act
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require
from blockzoo.registry import Example, images, register

__all__ = ["S2Attention", "spatial_shift"]


def _shift_into(out: torch.Tensor, x: torch.Tensor, order: str) -> None:
    """Write S²-MLP's shift of ``x`` (B, C, H, W) into ``out``, a copy of ``x``.

    Each channel quarter moves one step along its axis; the border row or column it leaves
    keeps its own value, which ``out`` already holds as a copy of ``x``. One slice copy
    per quarter, no concatenation.
    """
    dims = (2, 2, 3, 3) if order == "hw" else (3, 3, 2, 2)
    q = x.shape[1] // 4
    for i, (dim, step) in enumerate(zip(dims, (1, -1, 1, -1), strict=True)):
        n = x.shape[dim]
        src, dst = x.narrow(1, i * q, q), out.narrow(1, i * q, q)
        if step > 0:
            dst.narrow(dim, 1, n - 1).copy_(src.narrow(dim, 0, n - 1))
        else:
            dst.narrow(dim, 0, n - 1).copy_(src.narrow(dim, 1, n - 1))


def _shift_cat(x: torch.Tensor, order: str) -> torch.Tensor:
    """``spatial_shift`` by concatenation: more ops, but a cheap backward (views of the gradient)."""
    dims = (2, 2, 3, 3) if order == "hw" else (3, 3, 2, 2)
    parts = []
    for p, d, step in zip(x.chunk(4, dim=1), dims, (1, -1, 1, -1), strict=True):
        n = p.shape[d]
        if step > 0:
            parts.append(torch.cat([p.narrow(d, 0, 1), p.narrow(d, 0, n - 1)], d))
        else:
            parts.append(torch.cat([p.narrow(d, 1, n - 1), p.narrow(d, n - 1, 1)], d))
    return torch.cat(parts, 1)


def spatial_shift(x: torch.Tensor, order: str = "hw") -> torch.Tensor:
    """S²-MLP's shift: four channel quarters moved one step in four directions.

    ``order="hw"`` shifts the quarters +H, -H, +W, -W (S²-MLPv2's first shift);
    ``order="wh"`` shifts them +W, -W, +H, -H (its second shift). x is (B, C, H, W),
    C a multiple of 4; borders keep their values.
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return _shift_cat(x, order)
    out = x.clone()
    _shift_into(out, x, order)
    return out


@register(
    name="s2_attention",
    family="attention",
    paper="S2-MLPv2: Improved Spatial-Shift MLP Architecture for Vision",
    arxiv="2108.01072",
    year=2021,
    input="image",
    example=Example(config=dict(channels=16), inputs=images(), size=(8, 8),
                    out_shape="same", tiny=dict(channels=4)),
)
class S2Attention(nn.Module):
    r"""S² attention: expand, shift two copies in opposite patterns, split-attend, project.

    Yu et al., "S²-MLPv2: Improved Spatial-Shift MLP Architecture for Vision",
    arXiv 2108.01072.

    Equation::

        [x_1; x_2; x_3] = W_1 x                                  1x1 C -> 3C
        x_1 <- shift_hw(x_1);  x_2 <- shift_wh(x_2)               (x_3 unshifted)
        z   = GAP(x_1 + x_2 + x_3)                                (B, C)
        a   = softmax over the 3 branches of W_b act(W_a z)       W_a: C -> C, W_b: C -> 3C, no bias
        y   = W_2 (sum_k a_k x_k)                                 1x1 C -> C

    Args:
        channels: C, the input channels; a multiple of 4 (four shift directions).
        act_layer: the split-attention MLP's activation (paper: GELU).

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, C, H, W).

    Deviations:
        - The channel MLPs are written as 1x1 convolutions on (B, C, H, W), the same maps
          as the paper's per-token linear layers.
        - Mean or sum, unresolved: the paper writes the split-attention descriptor as
          sum_k 1 X_k with 1 a row of ones, a sum over the n patches (third-party
          reimplementations sum), while the ResNeSt split attention it adopts averages.
          We average (GAP), which keeps the MLP's input independent of the image size.
          The two differ by the factor n = H W before the GELU, so they are not
          equivalent; no authors' code was released to settle it.

    Example:
        >>> s2 = S2Attention(64)
        >>> s2(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(self, channels: int, *, act_layer: LayerSpec = "gelu",
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        require(channels % 4 == 0, f"S2Attention: channels={channels} must be a multiple of 4")
        fk = dict(device=device, dtype=dtype)
        self.channels = channels
        self.expand = nn.Conv2d(channels, 3 * channels, 1, **fk)
        self.attn_fc1 = nn.Linear(channels, channels, bias=False, **fk)
        self.act = create_act(act_layer, **fk)
        self.attn_fc2 = nn.Linear(channels, 3 * channels, bias=False, **fk)
        self.proj = nn.Conv2d(channels, channels, 1, **fk)
        self.attn_map = AttentionMap("channel")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = check_shape(x, "B C H W", name="S2Attention", C=self.channels)
        t = self.expand(x).view(dims["B"], 3, self.channels, dims["H"], dims["W"])  # [x_1; x_2; x_3]
        if torch.is_grad_enabled() and t.requires_grad:
            # Under autograd the concatenating form: the in-place form below would record a
            # CopySlices node per slice copy, each cloning the whole gradient in backward.
            u = torch.stack([_shift_cat(t[:, 0], "hw"), _shift_cat(t[:, 1], "wh"), t[:, 2]], 1)
            z = u.sum(1).mean((2, 3))  # (B, C)
        else:
            # Inference: the two shifted branches written into one copy, u_3 = x_3 left in place.
            u = t[:, :2].clone()  # (B, 2, C, H, W)
            _shift_into(u[:, 0], t[:, 0], "hw")
            _shift_into(u[:, 1], t[:, 1], "wh")
            z = u.mean((3, 4)).sum(1) + t[:, 2].mean((2, 3))  # (B, C)
        # a = softmax_k(W_b act(W_a z))
        a = self.attn_fc2(self.act(self.attn_fc1(z))).view(dims["B"], 3, self.channels)  # (B, 3, C)
        a = self.attn_map(a.softmax(1)[..., None, None])  # (B, 3, C, 1, 1)
        # y = W_2 sum_k a_k u_k
        if u.shape[1] == 3:
            return self.proj((a * u).sum(1))
        # accumulated in one (B, C, H, W) tensor instead of a (B, 3, C, H, W) product
        y = (t[:, 2] * a[:, 2]).addcmul_(u[:, 0], a[:, 0]).addcmul_(u[:, 1], a[:, 1])
        return self.proj(y)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"
