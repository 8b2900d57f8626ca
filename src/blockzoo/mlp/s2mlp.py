r"""S²-MLP: spatial-shift MLP block (channel groups shifted one pixel in four directions).

Paper: S²-MLP: Spatial-Shift MLP Architecture for Vision (Yu, arXiv 2106.07477, 2021).

Letters: B batch, C channels, H W spatial, r expansion ratio.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo._fastcall import call, invoke, listened
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
        t = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        u = call(mods["act"], call(mods["fc1"], call(mods["norm1"], t))).permute(0, 3, 1, 2)  # (B, C, H, W)
        shift = mods["shift"]
        fast = type(shift) is SpatialShift and not listened(shift)
        u = _shift(u, shift.channels // 4) if fast else shift(u)
        # U = X + FC_2(S(act(FC_1(LN(X)))))
        t = t + call(mods["fc2"], u.permute(0, 2, 3, 1))  # (B, H, W, C)
        # Y = U + MLP(LN(U))
        t = t + invoke(mods["mlp"], call(mods["norm2"], t))
        return t.permute(0, 3, 1, 2)  # (B, C, H, W)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.hidden}"
