r"""Shuffle Transformer's spatially shuffled window attention.

Paper: Shuffle Transformer: Rethinking Spatial Shuffle for Vision Transformer (Huang et
al., arXiv 2106.03650, 2021).

Letters: B batch, C channels (= dim), H W spatial, M_h M_w window, Hp Wp the padded size,
g_h g_w the shuffle strides (Hp / M_h, Wp / M_w), nW = g_h g_w windows per image,
N = M_h M_w tokens per window, h heads, d head dim.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from blockzoo.attention._attend import attend, key_mask
from blockzoo.attention.swin import (
    ShiftedWindowAttention,
    _unwindows,
    _windows,
    real_window_tokens,
    relative_position_index,
)
from blockzoo.checks import check_shape
from blockzoo.registry import Example, images, register

__all__ = ["ShuffleWindowAttention"]


@register(
    name="shuffle_window_attention",
    family="attention",
    paper="Shuffle Transformer: Rethinking Spatial Shuffle for Vision Transformer",
    arxiv="2106.03650",
    year=2021,
    input="image",
    example=Example(config=dict(dim=16, num_heads=2, window_size=4), inputs=images("dim"),
                    size=(8, 8), out_shape="same",
                    tiny=dict(dim=4, num_heads=1, window_size=2)),
)
class ShuffleWindowAttention(ShiftedWindowAttention):
    r"""Multi-head self-attention inside spatially shuffled M x M windows (Shuffle W-MSA).

    Huang et al., "Shuffle Transformer: Rethinking Spatial Shuffle for Vision Transformer",
    arXiv 2106.03650 (Shuffle-WMSA: window attention with spatial shuffle).

    Equation: the map (Hp = M_h g_h rows, Wp = M_w g_w columns) is regrouped so that window
    (i, j), 0 <= i < g_h, 0 <= j < g_w, holds the tokens spaced a stride apart::

        window(i, j) = { x[a g_h + i, b g_w + j] : 0 <= a < M_h, 0 <= b < M_w }

    (the channel shuffle of ShuffleNet applied to the spatial axes: reshape an axis to
    (M, g), transpose to (g, M), partition into windows), then per window and head, as
    Swin's W-MSA::

        Attention(Q, K, V) = SoftMax(Q K^T / sqrt(d) + B) V,   B = B_hat[rel(a, b; a', b')]
        y = Concat(heads) W^O,   Q, K, V = X W^Q, X W^K, X W^V

    and every token goes back to its place. The relative position (a - a', b - b') is the
    offset on the window's own (strided) grid, as the released code indexes its table. A
    window thus spans the whole image (long-range connections across windows) at the
    cost of W-MSA. The shuffled windows are Swin's window partition with the roles of
    window and grid swapped: ``_windows(x, g_h, g_w)`` gives M_h M_w "windows" of g_h g_w
    tokens, whose transpose is the g_h g_w shuffled windows of M_h M_w tokens.

    ``shuffle=False`` is the plain W-MSA (Swin's ``ShiftedWindowAttention`` with no shift):
    the Shuffle Transformer alternates the two.

    Sizes: along an axis no larger than M the window is the whole axis (g = 1: the
    shuffled and regular windows coincide), as Swin's; otherwise the map is zero-padded
    at the bottom / right to a multiple of M and the padded keys are masked out (-inf) of
    every window (each shuffled window holds the real token (i, j), so no row is empty).

    Args:
        dim: C, input and output channels.
        num_heads: h (default C / 32: the paper's head width d = 32).
        window_size: M (an int or (M_h, M_w); paper: 7).
        shuffle: the shuffled windows (default) or the regular ones.
        head_dim: d (default C // h).
        qkv_bias: biases on the q, k, v projection (the released code has none).

    Shape:
        - Input: (B, C, H, W), C = dim, any H, W.
        - Output: (B, C, H, W).
        - ``attend_grid`` (what the Shuffle Transformer's blocks call): (B, H, W, C) -> (B, H, W, C).

    Deviations:
        The released code's q, k, v and output projections are 1 x 1 convolutions
        (``to_qkv``, ``proj``); here they are the same maps as ``nn.Linear`` on
        channels-last tokens (weights (O, C) instead of (O, C, 1, 1)). The released code
        needs H, W divisible by M; here other sizes are padded and masked. No dropout on
        the attention weights (the paper trains without it).

    Example:
        >>> attn = ShuffleWindowAttention(96, num_heads=3, window_size=7)
        >>> attn(torch.randn(2, 96, 56, 60)).shape
        torch.Size([2, 96, 56, 60])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int | None = None,
        *,
        window_size: int | tuple[int, int] = 7,
        shuffle: bool = True,
        head_dim: int | None = None,
        qkv_bias: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(dim, num_heads, window_size=window_size, shift_size=0, head_dim=head_dim,
                         qkv_bias=qkv_bias, device=device, dtype=dtype)
        self.shuffle = shuffle

    def attend_grid(self, x: torch.Tensor) -> torch.Tensor:
        """(Shuffled) window attention on a channels-last map (B, H, W, C) -> (B, H, W, C)."""
        if not self.shuffle:
            return super().attend_grid(x)  # W-MSA
        b, h, w, _ = x.shape
        wh, ww, _, _ = self._plan(h, w)
        hp, wp = -(-h // wh) * wh, -(-w // ww) * ww
        gh, gw = hp // wh, wp // ww
        if hp > h or wp > w:
            x = F.pad(x, (0, 0, 0, wp - w, 0, hp - h))  # (B, Hp, Wp, C)
        n, nw, nh, d = wh * ww, gh * gw, self.num_heads, self.head_dim
        # The shuffled windows: Swin's (g_h, g_w)-window partition, transposed.
        win = _windows(x, gh, gw).transpose(1, 2)  # (B, nW, N, C)
        qkv = self.qkv(win).reshape(b * nw, n, 3, nh, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3 x (B nW, h, N, d)
        index = relative_position_index(wh, ww, self.window_size, device=x.device)  # (N, N)
        # 4-D (1, h, N, N): CPU SDPA copies strided q, k, v when the mask is 3-D
        bias = self.relative_position_bias_table[index.flatten()].view(n, n, nh).permute(2, 0, 1)[None]
        if hp > h or wp > w:
            real = real_window_tokens(h, w, hp, wp, gh, gw, x.device).t()  # (nW, N): the transposed partition
            mask = key_mask(real, x.dtype)[:, None, None, :]  # (nW, 1, 1, N): -inf on padded keys
            bias = (bias + mask).expand(b, -1, -1, -1, -1).reshape(b * nw, nh, n, n)  # (B nW, h, N, N)
        # SoftMax(Q K^T / sqrt(d) + B) V
        out = attend(q, k, v, self.attn_map, bias)  # (B nW, h, N, d)
        # An explicit contiguous copy merges the heads (as Swin's ``_out_of_windows``, for export).
        out = out.view(b, nw, nh, n, d).permute(0, 3, 1, 2, 4).clone(memory_format=torch.contiguous_format)
        out = self.proj(out.view(b, n, nw, nh * d))  # (B, N, nW, C): the transposed partition
        return _unwindows(out, hp, wp, gh, gw)[:, :h, :w]  # (B, H, W, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, "B C H W", name="ShuffleWindowAttention", C=self.dim)
        return self.attend_grid(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, C, H, W)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, shuffle={self.shuffle}"
