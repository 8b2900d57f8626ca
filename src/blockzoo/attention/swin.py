r"""Swin Transformer's (shifted) window attention and patch merging.

Paper: Swin Transformer: Hierarchical Vision Transformer using Shifted Windows (Liu et
al., arXiv 2103.14030, 2021).

Letters: B batch, C channels (= dim), H W spatial, M_h M_w window, s_h s_w shift,
Hp Wp the padded size, nW windows per image, N = M_h M_w tokens per window, h heads,
d head dim.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo._memo import memo_table
from blockzoo.act import LayerSpec, create_norm
from blockzoo.attention._attend import attend, pair
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require, require_divides
from blockzoo.registry import Example, images, register

__all__ = ["PatchMerging", "ShiftedWindowAttention", "relative_position_index", "shifted_window_mask",
           "window_plan"]


@memo_table()
def relative_position_index(wh: int, ww: int, table: tuple[int, int], device: Any = None) -> torch.Tensor:
    """(N, N) index into a ((2 T_h - 1)(2 T_w - 1))-row bias table, N = wh * ww.

    Built once per arguments and shared (``blockzoo._memo``): do not modify it in place.

    Entry (i, j) is the row of the offset (dy, dx) = (y_i - y_j, x_i - x_j):
    (dy + T_h - 1) * (2 T_w - 1) + (dx + T_w - 1), T = ``table`` the window the table was
    made for (wh <= T_h, ww <= T_w: a smaller window uses the table's central rows).
    """
    th, tw = table
    ys, xs = torch.meshgrid(torch.arange(wh, device=device), torch.arange(ww, device=device), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()  # (N,)
    dy = ys[:, None] - ys[None, :] + th - 1  # (N, N)
    dx = xs[:, None] - xs[None, :] + tw - 1
    return dy * (2 * tw - 1) + dx


def _windows(x: torch.Tensor, wh: int, ww: int) -> torch.Tensor:
    """(B, Hp, Wp, *) -> (B, nW, wh * ww, *), windows in row-major order."""
    b, hp, wp = x.shape[:3]
    rest = x.shape[3:]
    x = x.reshape(b, hp // wh, wh, wp // ww, ww, *rest)  # (B, nh, wh, nw, ww, *)
    x = x.transpose(2, 3)  # (B, nh, nw, wh, ww, *)
    return x.reshape(b, (hp // wh) * (wp // ww), wh * ww, *rest)


@memo_table()
def real_window_tokens(h: int, w: int, hp: int, wp: int, wh: int, ww: int,
                       device: Any = None) -> torch.Tensor:
    """(nW, wh * ww) bool, True at the real tokens of each window of an H x W map zero-padded
    at the bottom / right to Hp x Wp and cut into wh x ww windows (``_windows``' order)."""
    ys, xs = torch.arange(hp, device=device), torch.arange(wp, device=device)
    real = (ys[:, None] < h) & (xs[None, :] < w)  # (Hp, Wp)
    return _windows(real[None], wh, ww)[0]


def _unwindows(x: torch.Tensor, hp: int, wp: int, wh: int, ww: int) -> torch.Tensor:
    """(B, nW, wh * ww, C) -> (B, Hp, Wp, C), the inverse of ``_windows``."""
    b, c = x.shape[0], x.shape[-1]
    x = x.reshape(b, hp // wh, wp // ww, wh, ww, c).transpose(2, 3)  # (B, nh, wh, nw, ww, C)
    return x.reshape(b, hp, wp, c)


def _into_windows(x: torch.Tensor, plan: tuple[int, int, int, int]) -> tuple[torch.Tensor, int, int]:
    """A channels-last map (B, H, W, C) padded to whole windows, cyclically shifted by the
    plan's (sh, sw) and cut into windows: (B, nW, N, C), and the padded Hp, Wp."""
    _, h, w, _ = x.shape
    wh, ww, sh, sw = plan
    hp, wp = -(-h // wh) * wh, -(-w // ww) * ww
    if hp > h or wp > w:
        x = F.pad(x, (0, 0, 0, wp - w, 0, hp - h))  # (B, Hp, Wp, C)
    if sh or sw:
        x = torch.roll(x, (-sh, -sw), (1, 2))  # the cyclic shift
    return _windows(x, wh, ww), hp, wp


def _out_of_windows(out: torch.Tensor, proj: nn.Module, b: int, size: tuple[int, int],
                    padded: tuple[int, int], plan: tuple[int, int, int, int]) -> torch.Tensor:
    """The attention output (B nW, h, N, d) merged over heads, projected, put back into the map,
    unshifted and cropped to ``size``: (B, H, W, C)."""
    bnw, nh, n, d = out.shape
    wh, ww, sh, sw = plan
    # An explicit contiguous copy: CPU SDPA may return (B nW, N, h, d)-strided memory, which
    # torch.export then reshapes with a view that ONNX's decomposed SDPA cannot take.
    out = out.transpose(1, 2).clone(memory_format=torch.contiguous_format)  # (B nW, N, h, d)
    out = proj(out.view(b, bnw // b, n, nh * d))  # (B, nW, N, C)
    x = _unwindows(out, *padded, wh, ww)  # (B, Hp, Wp, C)
    if sh or sw:
        x = torch.roll(x, (sh, sw), (1, 2))
    return x[:, :size[0], :size[1]]  # (B, H, W, C)


def window_plan(h: int, w: int, window: tuple[int, int], shift: tuple[int, int]) -> tuple[int, int, int, int]:
    """(M_h, M_w, s_h, s_w) used on an H x W map: along an axis no longer than its window,
    the window is the whole axis and that axis is not shifted (as the released code)."""
    (mh, mw), (sh, sw) = window, shift
    wh, sh = (h, 0) if h <= mh else (mh, sh)
    ww, sw = (w, 0) if w <= mw else (mw, sw)
    return wh, ww, sh, sw


@memo_table()
def shifted_window_mask(h: int, w: int, hp: int, wp: int, plan: tuple[int, int, int, int], device: Any,
                        dtype: torch.dtype, cross: float = float("-inf")) -> torch.Tensor | None:
    """(nW, N, N) additive mask of the rolled, padded Hp x Wp map, or None when nothing is masked.

    Built once per arguments and shared (``blockzoo._memo``): do not modify it in place.

    Keys in another sub-window of the rolled map than the query get ``cross`` (-inf; Swin
    V2 passes the released code's -100); padded keys get -inf for every real query. A
    padded query (cropped away later) sees its whole sub-window, so no row is empty.
    """
    wh, ww, sh, sw = plan
    if not (sh or sw or hp > h or wp > w):
        return None
    # Sub-window label of every position of the rolled, padded map (Sec. 3.2, Fig. 4):
    # rows [0, Hp - wh), [Hp - wh, Hp - sh), [Hp - sh, Hp) and the same for columns.
    ys, xs = torch.arange(hp, device=device), torch.arange(wp, device=device)
    row = (ys >= hp - wh).long() + (ys >= hp - sh).long() if sh else torch.zeros_like(ys)
    col = (xs >= wp - ww).long() + (xs >= wp - sw).long() if sw else torch.zeros_like(xs)
    label = row[:, None] * 3 + col[None, :]  # (Hp, Wp)
    # Which positions are real (not padding), rolled as the map is.
    real = (ys[:, None] < h) & (xs[None, :] < w)
    real = torch.roll(real, (-sh, -sw), (0, 1))
    label = _windows(label[None], wh, ww)[0]  # (nW, N)
    real = _windows(real[None], wh, ww)[0]  # (nW, N)
    same = label[:, :, None] == label[:, None, :]  # (nW, N, N)
    key_ok = real[:, None, :] | ~real[:, :, None]  # (nW, N, N)
    zero = torch.zeros((), dtype=dtype, device=device)
    out = torch.where(same, zero, torch.full_like(zero, cross))
    return torch.where(key_ok, out, torch.full_like(zero, float("-inf")))


@register(
    name="shifted_window_attention",
    family="attention",
    paper="Swin Transformer: Hierarchical Vision Transformer using Shifted Windows",
    arxiv="2103.14030",
    year=2021,
    input="image",
    example=Example(config=dict(dim=16, num_heads=2, window_size=4, shift_size=2), inputs=images("dim"),
                    size=(8, 8), out_shape="same",
                    tiny=dict(dim=4, num_heads=1, window_size=2, shift_size=1)),
)
class ShiftedWindowAttention(nn.Module):
    r"""Multi-head self-attention inside M x M windows, optionally cyclically shifted (W-MSA / SW-MSA).

    Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows",
    arXiv 2103.14030, Sec. 3.2, Eq. (4).

    Equation, per window of N = M^2 tokens and head::

        Attention(Q, K, V) = SoftMax(Q K^T / sqrt(d) + B) V,   B = B_hat[rel(i, j)]
        y = Concat(heads) W^O,   Q, K, V = X W^Q, X W^K, X W^V

    B_hat is a learned ((2M - 1)^2, h) table of relative position biases. With
    ``shift_size`` s > 0 the map is first rolled by (-s, -s) (the cyclic shift), the
    windows are attended with a mask that keeps tokens from different sub-windows of the
    rolled map apart, and the result is rolled back: the shifted window partition of
    Sec. 3.2, computed as efficiently as the regular one.

    Sizes (as the released code): along an axis where the map is no larger than M, the
    window is the whole axis and that axis is not shifted (a smaller window uses the
    table's central offsets). Otherwise the map is zero-padded at the bottom / right to
    a multiple of M; padded tokens are masked out of every real token's keys.

    Args:
        dim: C, input and output channels.
        num_heads: h (default C / 32: the paper's head width d = 32, Sec. 3.3).
        window_size: M (an int or (M_h, M_w); paper: 7).
        shift_size: s (int or pair), 0 for W-MSA; Swin alternates 0 and M // 2.
        head_dim: d (default C // h).
        qkv_bias: biases on the q, k, v projection (paper: True).

    Shape:
        - Input: (B, C, H, W), C = dim, any H, W.
        - Output: (B, C, H, W).
        - ``attend_grid`` (what Swin's blocks call): (B, H, W, C) -> (B, H, W, C).

    Deviations:
        Masked logits are -inf (the released code adds -100, whose weight exp(-100) is
        already zero in float32); no dropout on the attention weights (the paper trains
        without it).

    Example:
        >>> attn = ShiftedWindowAttention(96, num_heads=3, window_size=7, shift_size=3)
        >>> attn(torch.randn(2, 96, 56, 60)).shape
        torch.Size([2, 96, 56, 60])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int | None = None,
        *,
        window_size: int | tuple[int, int] = 7,
        shift_size: int | tuple[int, int] = 0,
        head_dim: int | None = None,
        qkv_bias: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        name = "ShiftedWindowAttention"
        self.window_size = pair(window_size, "window_size", name)
        s = (shift_size, shift_size) if isinstance(shift_size, int) else tuple(shift_size)
        require(len(s) == 2 and all(0 <= v < m for v, m in zip(s, self.window_size, strict=True)),
                f"{name}: shift_size={shift_size!r} must be in [0, window_size={window_size!r})")
        self.shift_size = (s[0], s[1])
        if num_heads is None:
            num_heads = require_divides(name, "the paper's head width", 32, "dim", dim,
                                        hint="(or give num_heads)")
        if head_dim is None:
            head_dim = require_divides(name, "num_heads", num_heads, "dim", dim)
        self.dim, self.num_heads, self.head_dim = dim, num_heads, head_dim
        fk = dict(device=device, dtype=dtype)
        mh, mw = self.window_size
        rows = (2 * mh - 1) * (2 * mw - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, num_heads, **fk))
        self.qkv = nn.Linear(dim, 3 * num_heads * head_dim, bias=qkv_bias, **fk)
        self.proj = nn.Linear(num_heads * head_dim, dim, **fk)
        self.attn_map = AttentionMap("weights")
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def _plan(self, h: int, w: int) -> tuple[int, int, int, int]:
        """(window, shift) per axis for an H x W map: a small axis is one unshifted window."""
        return window_plan(h, w, self.window_size, self.shift_size)

    def _mask(self, h: int, w: int, hp: int, wp: int, plan: tuple[int, int, int, int],
              device: Any, dtype: torch.dtype) -> torch.Tensor | None:
        """(nW, N, N) additive mask: -inf between sub-windows of the rolled map and on padded keys."""
        return shifted_window_mask(h, w, hp, wp, plan, device, dtype)

    def attend_grid(self, x: torch.Tensor) -> torch.Tensor:
        """Window attention on a channels-last map (B, H, W, C) -> (B, H, W, C)."""
        b, h, w, _ = x.shape
        plan = wh, ww, _, _ = self._plan(h, w)
        win, hp, wp = _into_windows(x, plan)  # (B, nW, N, C)
        n, nh, d, nw = wh * ww, self.num_heads, self.head_dim, win.shape[1]
        q, k, v = self.qkv(win).view(b * nw, n, 3, nh, d).permute(2, 0, 3, 1, 4)  # 3 x (B nW, h, N, d)
        index = relative_position_index(wh, ww, self.window_size, device=x.device)  # (N, N)
        bias = self.relative_position_bias_table[index.flatten()].view(n, n, nh).permute(2, 0, 1)  # (h, N, N)
        mask = self._mask(h, w, hp, wp, plan, x.device, x.dtype)
        if mask is not None:
            bias = bias + mask[:, None]  # (nW, h, N, N)
            bias = bias.expand(b, -1, -1, -1, -1).reshape(b * nw, nh, n, n)  # (B nW, h, N, N)
        else:
            bias = bias[None]  # (1, h, N, N): with a 3-D mask CPU SDPA copies the strided q, k, v
        # SoftMax(Q K^T / sqrt(d) + B) V
        out = attend(q, k, v, self.attn_map, bias)  # (B nW, h, N, d)
        return _out_of_windows(out, self.proj, b, (h, w), (hp, wp), plan)  # (B, H, W, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, "B C H W", name="ShiftedWindowAttention", C=self.dim)
        return self.attend_grid(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, C, H, W)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size}, "
                f"shift_size={self.shift_size}")


class PatchMerging(nn.Module):
    r"""Swin's downsampling: concatenate each 2 x 2 neighbourhood, normalise, reduce 4C -> C_out.

    Liu et al., arXiv 2103.14030, Sec. 3.1 ("patch merging").

    Equation, for the 2 x 2 group at (2i, 2j)::

        z = [x_{2i,2j}; x_{2i+1,2j}; x_{2i,2j+1}; x_{2i+1,2j+1}]     (4C, the released code's order)
        y_{i,j} = W LN(z),   W: (C_out, 4C), no bias
        y_{i,j} = LN(W z)                   with ``norm_after`` (Swin V2, arXiv 2111.09883)

    Args:
        dim: C. dim_out: C_out (paper: 2C). norm_layer: (LayerNorm).
        norm_after: normalise the C_out reduced features instead of the 4C concatenation,
            as Swin V2's released code does (the norm then has C_out features).

    Shape:
        - Input: (B, H, W, C), channels last, any H, W (odd sides zero-padded by one).
        - Output: (B, ceil(H / 2), ceil(W / 2), C_out).
    """

    def __init__(self, dim: int, dim_out: int | None = None, *, norm_layer: LayerSpec = "layernorm",
                 norm_after: bool = False, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.dim, self.dim_out = dim, dim_out or 2 * dim
        self.norm_after = norm_after
        self.norm = create_norm(norm_layer, self.dim_out if norm_after else 4 * dim, **fk)
        self.reduction = nn.Linear(4 * dim, self.dim_out, bias=False, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = check_shape(x, "B H W C", name="PatchMerging", C=self.dim).values()
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))  # (B, 2h', 2w', C)
        h2, w2 = x.shape[1] // 2, x.shape[2] // 2
        # (B, h', dy, w', dx, C) -> (B, h', w', dx, dy, C): [x00; x10; x01; x11]
        z = x.reshape(b, h2, 2, w2, 2, c).permute(0, 1, 3, 4, 2, 5).reshape(b, h2, w2, 4 * c)
        if self.norm_after:
            return self.norm(self.reduction(z))  # (B, h', w', C_out)
        return self.reduction(self.norm(z))  # (B, h', w', C_out)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, dim_out={self.dim_out}"
