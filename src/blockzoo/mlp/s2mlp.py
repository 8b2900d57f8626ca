r"""S²-MLP: spatial-shift MLP block (channel groups shifted one pixel in four directions).

Paper: S²-MLP: Spatial-Shift MLP Architecture for Vision (Yu, arXiv 2106.07477, 2021).

Letters: B batch, C channels, H W spatial, r expansion ratio.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo._fastcall import call, invoke, listened
from blockzoo._memo import memo_table
from blockzoo.act import LayerSpec, create_act, create_norm
from blockzoo.checks import check_shape, require
from blockzoo.mlp.mlp import MLP
from blockzoo.registry import Example, images, register

__all__ = ["S2MLPBlock", "SpatialShift"]


class SpatialShift(nn.Module):
    r"""Shift four channel groups by one pixel: right, left, down, up (no parameters).

    Yu et al., "S²-MLP", arXiv 2106.07477, Eq. (4), with groups of C / 4 channels::

        group 1: T[:, :, i, j] <- T[:, :, i, j - 1]   (j >= 1)
        group 2: T[:, :, i, j] <- T[:, :, i, j + 1]   (j <= W - 2)
        group 3: T[:, :, i, j] <- T[:, :, i - 1, j]   (i >= 1)
        group 4: T[:, :, i, j] <- T[:, :, i + 1, j]   (i <= H - 2)

    The first/last row or column that has no source keeps its own value (as in the
    paper). Channels beyond 4 (C // 4) are left unshifted.

    Args:
        channels: C (at least 4).

    Shape:
        - Input: (B, C, H, W); output: the same.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        require(channels >= 4, f"SpatialShift: channels={channels} must be >= 4 (four shift groups)")
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.channels:
            check_shape(x, "B C H W", name="SpatialShift", C=self.channels)  # raises, naming the misfit
        return _shift(x, self.channels // 4)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


def _shift(x: torch.Tensor, g: int) -> torch.Tensor:
    """``SpatialShift``'s four shifts on (B, C, H, W), groups of ``g`` channels."""
    out = x.clone()
    out[:, 0:g, :, 1:] = x[:, 0:g, :, :-1]
    out[:, g:2 * g, :, :-1] = x[:, g:2 * g, :, 1:]
    out[:, 2 * g:3 * g, 1:, :] = x[:, 2 * g:3 * g, :-1, :]
    out[:, 3 * g:4 * g, :-1, :] = x[:, 3 * g:4 * g, 1:, :]
    return out


# Up to this many elements (B H W C) the shift is one index_select from a cached index; above,
# the gather's per-element cost passes the five strided copies' fixed one (8 x 8 x 8 x 16: 9 vs
# 54 us; 8 x 32 x 32 x 64: 470 vs 155 us, one core).
_GATHER_MAX = 1 << 16


@memo_table()
def _shift_index(h: int, w: int, c: int, g: int, device: torch.device) -> torch.Tensor:
    """For each element of a shifted (H, W, C) map, flattened, the flat index it reads from
    (``_shift``'s four shifts, channels-last)."""
    src = torch.arange(h * w * c, device=device).view(h, w, c)
    idx = src.clone()
    idx[:, 1:, 0:g] = src[:, :-1, 0:g]
    idx[:, :-1, g:2 * g] = src[:, 1:, g:2 * g]
    idx[1:, :, 2 * g:3 * g] = src[:-1, :, 2 * g:3 * g]
    idx[:-1, :, 3 * g:4 * g] = src[1:, :, 3 * g:4 * g]
    return idx.view(-1)


@register(
    name="s2mlp",
    family="mlp",
    paper="S²-MLP: Spatial-Shift MLP Architecture for Vision",
    arxiv="2106.07477",
    year=2021,
    input="image",
    example=Example(config=dict(channels=16, hidden=32), inputs=images(), size=(8, 8), out_shape="same",
                    tiny=dict(channels=4, hidden=6)),
)
class S2MLPBlock(nn.Module):
    r"""S²-MLP block: channel FC, spatial shift, channel FC, then a channel-mixing MLP; both residual.

    Yu et al., "S²-MLP: Spatial-Shift MLP Architecture for Vision", arXiv 2106.07477.

    Equation (FCs act on channels at every pixel; S is ``SpatialShift``)::

        U = X + FC_2(S(act(FC_1(LN(X)))))           FC_1, FC_2: C -> C
        Y = U + FC_4(act(FC_3(LN(U))))              FC_3: C -> r C, FC_4: r C -> C

    The only communication between pixels is the one-pixel shift, so the block works
    at any H, W.

    Args:
        channels: C (at least 4).
        hidden: r C, the channel MLP's width (default 4 C).
        act_layer: activation (paper: GELU).
        norm_layer: the pre-norm over channels (paper: LayerNorm).

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, C, H, W).

    Example:
        >>> block = S2MLPBlock(64)
        >>> block(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(
        self, channels: int, *, hidden: int | None = None, act_layer: LayerSpec = "gelu",
        norm_layer: LayerSpec = "layernorm", device: Any = None, dtype: Any = None,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.hidden = hidden or 4 * channels
        fk = dict(device=device, dtype=dtype)
        self.norm1 = create_norm(norm_layer, channels, **fk)
        self.fc1 = nn.Linear(channels, channels, **fk)
        self.act = create_act(act_layer, **fk)
        self.shift = SpatialShift(channels)
        self.fc2 = nn.Linear(channels, channels, **fk)
        self.norm2 = create_norm(norm_layer, channels, **fk)
        self.mlp = MLP(channels, (self.hidden,), channels, act_layer=act_layer, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.channels:
            check_shape(x, "B C H W", name="S2MLPBlock", C=self.channels)  # raises, naming the misfit
        mods = self._modules  # stock layers as functional ops unless hooked (_fastcall)
        # (B, H, W, C), laid out once: the norm would copy a strided view itself, and the
        # residual add reads it again
        t = x.permute(0, 2, 3, 1).contiguous()
        u = call(mods["act"], call(mods["fc1"], call(mods["norm1"], t)))  # (B, H, W, C)
        shift = mods["shift"]
        if type(shift) is not SpatialShift or listened(shift):
            u = shift(u.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        elif (torch.compiler.is_compiling() or torch.jit.is_tracing() or u.numel() > _GATHER_MAX
              or not u.is_contiguous()):
            u = _shift(u.permute(0, 3, 1, 2), shift.channels // 4).permute(0, 2, 3, 1)
        else:  # a small map: the four shifts as one gather from a cached index (five strided copies)
            b, h, w, c = u.shape
            u = u.view(b, h * w * c).index_select(1, _shift_index(h, w, c, shift.channels // 4, u.device))
            u = u.view(b, h, w, c)
        # U = X + FC_2(S(act(FC_1(LN(X)))))
        fc2, mlp = mods["fc2"], mods["mlp"]
        f = call(fc2, u)  # (B, H, W, C)
        # without autograd a fresh output nobody hooks takes the residual in place
        grad = torch.is_grad_enabled()
        t = f.add_(t) if not grad and type(fc2) is nn.Linear and not listened(fc2) else t + f
        # Y = U + MLP(LN(U))
        f = invoke(mlp, call(mods["norm2"], t))
        fresh = not grad and type(mlp) is MLP and type(mlp.layers[-1]) is nn.Linear and not listened(
            mlp, mlp.layers, mlp.layers[-1])
        t = f.add_(t) if fresh else t + f
        return t.permute(0, 3, 1, 2)  # (B, C, H, W)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.hidden}"
