"""S² attention: the spatial-shift + split-attention mixer of S²-MLPv2.

Paper: S²-MLPv2: Improved Spatial-Shift MLP Architecture for Vision (Yu, arXiv
2108.01072, 2021).

Letters: B batch, C channels, H W spatial, M = 3 branches.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo._fastcall import call
from blockzoo._memo import memo_table
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


@memo_table()
def _shift_index(c: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    """Flat source positions in one sample of (3, C, H, W) for [shift_hw(x_1); shift_wh(x_2); x_3]:
    the three branches of S²-attention gathered by one ``index_select`` (3 C H W int64)."""
    hh, ww = torch.arange(h, device=device), torch.arange(w, device=device)
    moves = {("h", 1): ((hh - 1).clamp_(min=0), ww), ("h", -1): ((hh + 1).clamp_(max=h - 1), ww),
             ("w", 1): (hh, (ww - 1).clamp_(min=0)), ("w", -1): (hh, (ww + 1).clamp_(max=w - 1))}
    idx = torch.arange(3 * c * h * w, device=device).view(3, c, h, w)
    q = c // 4
    for k, axes in enumerate(("hhww", "wwhh")):
        for i, (axis, step) in enumerate(zip(axes, (1, -1, 1, -1), strict=True)):
            hi, wi = moves[axis, step]
            ch = torch.arange(k * c + i * q, k * c + (i + 1) * q, device=device)
            idx[k, i * q:(i + 1) * q] = (ch[:, None, None] * h + hi[None, :, None]) * w + wi[None, None, :]
    return idx.flatten()


# The gather reads every element through an index (~1.4 ns each on one CPU core), the slice
# copies stream them: the gather wins below this many output elements per call, where the
# copies' 34 op calls cost more than the data.
_GATHER_MAX = 1 << 17


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
        c = self.channels
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != c:
            check_shape(x, "B C H W", name="S2Attention", C=c)  # raises, naming the misfit
        b, _, h, w = x.shape
        mods = self._modules
        t = call(mods["expand"], x)  # (B, 3C, H, W): [x_1; x_2; x_3]
        if torch.is_grad_enabled() and t.requires_grad:
            # Under autograd the concatenating form: the in-place form below would record a
            # CopySlices node per slice copy, each cloning the whole gradient in backward.
            t = t.view(b, 3, c, h, w)
            u = torch.stack([_shift_cat(t[:, 0], "hw"), _shift_cat(t[:, 1], "wh"), t[:, 2]], 1)
            z = u.sum(1).mean((2, 3))  # (B, C)
        elif (not torch.compiler.is_compiling() and t.numel() <= _GATHER_MAX
              and t.is_contiguous()):
            # Small inference: all three branches by one gather (u_3 = x_3 copied as is).
            u = torch.index_select(t.view(b, -1), 1, _shift_index(c, h, w, t.device))
            u = u.view(b, 3, c, h, w)
            z = u.sum((1, 3, 4)).div_(h * w)  # (B, C): sum_k GAP(u_k)
        else:
            # Inference: the two shifted branches written into one copy, u_3 = x_3 left in place.
            t = t.view(b, 3, c, h, w)
            u = t[:, :2].clone()  # (B, 2, C, H, W)
            _shift_into(u[:, 0], t[:, 0], "hw")
            _shift_into(u[:, 1], t[:, 1], "wh")
            z = u.mean((3, 4)).sum(1) + t[:, 2].mean((2, 3))  # (B, C)
        # a = softmax_k(W_b act(W_a z))
        a = call(mods["attn_fc2"], call(mods["act"], call(mods["attn_fc1"], z))).view(b, 3, c)
        a = mods["attn_map"](a.softmax(1).view(b, 3, c, 1, 1))  # (B, 3, C, 1, 1)
        # y = W_2 sum_k a_k u_k
        if u.shape[1] == 3:
            return call(mods["proj"], (a * u).sum(1))
        # accumulated in one (B, C, H, W) tensor instead of a (B, 3, C, H, W) product
        y = (t[:, 2] * a[:, 2]).addcmul_(u[:, 0], a[:, 0]).addcmul_(u[:, 1], a[:, 1])
        return call(mods["proj"], y)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"
