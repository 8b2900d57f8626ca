r"""Swin Transformer V2's window attention: scaled cosine attention with a continuous position bias.

Paper: Swin Transformer V2: Scaling Up Capacity and Resolution (Liu et al., arXiv
2111.09883, 2022).

Letters: B batch, C channels (= dim), H W spatial, M_h M_w window, s_h s_w shift,
Hp Wp the padded size, nW windows per image, N = M_h M_w tokens per window, h heads,
d head dim.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo._memo import memo_table
from blockzoo.attention._attend import attend, pair
from blockzoo.attention.maps import AttentionMap
from blockzoo.attention.swin import (
    _into_windows,
    _out_of_windows,
    relative_position_index,
    shifted_window_mask,
    window_plan,
)
from blockzoo.checks import check_shape, require, require_divides
from blockzoo.registry import Example, images, register

__all__ = ["CosineWindowAttention", "log_spaced_coords"]


@memo_table()
def log_spaced_coords(wh: int, ww: int, norm: tuple[int, int], device: Any = None,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    r"""((2 M_h - 1)(2 M_w - 1), 2) log-spaced relative coordinates, Eq. (4) of arXiv 2111.09883.

    Built once per arguments and shared (``blockzoo._memo``): do not modify it in place.

    Every offset (dy, dx) of an M_h x M_w window, divided by (T - 1) per axis (T = ``norm``,
    the window the bias network was trained for; at least 1), scaled to [-8, 8] and mapped
    by  sign(t) log2(1 + |t|) / log2(8)  (the released code's normalisation), rows in the
    order of ``relative_position_index``; computed in ``dtype`` (float32 as the released code).
    """
    dy = torch.arange(-(wh - 1), wh, device=device, dtype=dtype) / max(norm[0] - 1, 1)
    dx = torch.arange(-(ww - 1), ww, device=device, dtype=dtype) / max(norm[1] - 1, 1)
    t = torch.stack(torch.meshgrid(dy, dx, indexing="ij"), -1).reshape(-1, 2) * 8  # (R, 2)
    return torch.sign(t) * torch.log2(t.abs() + 1.0) / math.log2(8)


@register(
    name="cosine_window_attention",
    family="attention",
    paper="Swin Transformer V2: Scaling Up Capacity and Resolution",
    arxiv="2111.09883",
    year=2022,
    input="image",
    example=Example(config=dict(dim=16, num_heads=2, window_size=4, shift_size=2, cpb_hidden=32),
                    inputs=images("dim"), size=(8, 8), out_shape="same",
                    tiny=dict(dim=4, num_heads=1, window_size=2, shift_size=1, cpb_hidden=8)),
)
class CosineWindowAttention(nn.Module):
    r"""(Shifted) window attention with scaled cosine logits and a log-spaced continuous position bias.

    Liu et al., "Swin Transformer V2: Scaling Up Capacity and Resolution", arXiv
    2111.09883, Sec. 3.2, Eq. (2)-(4).

    Equation, per window of N = M_h M_w tokens and head::

        Sim(q_i, k_j) = cos(q_i, k_j) / tau + B_ij,      1 / tau = exp(min(theta, log 100))
        B_ij = 16 sigmoid(G(log-spaced(Delta x_ij, Delta y_ij)))
        log-spaced(t) = sign(t) log(1 + |t|)             (Eq. 4, t scaled to [-8, 8])
        y = SoftMax(Sim) V W^O

    G is a 2-layer MLP (2 -> 512 -> h, ReLU) evaluated on the offsets of the window in
    use, so a window of another size needs no table interpolation; theta is a learned
    per-head log-temperature (initialised to log 10). The q and v projections have
    biases, k has none (as the released code). With ``shift_size`` s > 0 the map is
    rolled by (-s, -s), attended with the sub-window mask and rolled back, as in Swin V1
    (``ShiftedWindowAttention``), whose size rules it shares: an axis no longer than M is
    one unshifted window, other sizes are zero-padded to a multiple of M with the padded
    keys masked.

    Args:
        dim: C, input and output channels.
        num_heads: h.
        window_size: M (an int or (M_h, M_w); Swin V2-T at 256: 8).
        shift_size: s (int or pair), 0 for W-MSA; Swin alternates 0 and M // 2.
        pretrained_window_size: T, the window the offsets are normalised by (0: the
            window in use, as when training from scratch; a fine-tuned model keeps its
            pre-training window).
        qkv_bias: q and v biases (paper: True).
        cpb_hidden: the hidden width of G (paper: 512).

    Shape:
        - Input: (B, C, H, W), C = dim, any H, W.
        - Output: (B, C, H, W).
        - ``attend_grid`` (what Swin V2's blocks call): (B, H, W, C) -> (B, H, W, C).

    Deviations:
        Tokens of other sub-windows get the released code's additive -100 (cosine logits
        are bounded, so -inf would not be the same); padded keys get -inf. The released
        code rolls before it pads, this block pads before it rolls: the same on sizes that
        are multiples of the window. No dropout.

    Example:
        >>> attn = CosineWindowAttention(96, num_heads=3, window_size=8, shift_size=4)
        >>> attn(torch.randn(2, 96, 64, 40)).shape
        torch.Size([2, 96, 64, 40])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        window_size: int | tuple[int, int] = 8,
        shift_size: int | tuple[int, int] = 0,
        pretrained_window_size: int | tuple[int, int] = 0,
        qkv_bias: bool = True,
        cpb_hidden: int = 512,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        name = "CosineWindowAttention"
        self.window_size = pair(window_size, "window_size", name)
        s = (shift_size, shift_size) if isinstance(shift_size, int) else tuple(shift_size)
        require(len(s) == 2 and all(0 <= v < m for v, m in zip(s, self.window_size, strict=True)),
                f"{name}: shift_size={shift_size!r} must be in [0, window_size={window_size!r})")
        self.shift_size = (s[0], s[1])
        pw = pretrained_window_size
        t = (pw, pw) if isinstance(pw, int) else tuple(pw)
        require(len(t) == 2 and all(v >= 0 for v in t),
                f"{name}: pretrained_window_size={pw!r} must be >= 0 (0: the window in use)")
        self.pretrained_window_size = (t[0], t[1])
        self.head_dim = require_divides(name, "num_heads", num_heads, "dim", dim)
        self.dim, self.num_heads = dim, num_heads
        fk = dict(device=device, dtype=dtype)
        self.logit_scale = nn.Parameter(torch.full((num_heads, 1, 1), math.log(10.0), **fk))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, cpb_hidden, **fk), nn.ReLU(),
                                     nn.Linear(cpb_hidden, num_heads, bias=False, **fk))
        self.qkv = nn.Linear(dim, 3 * dim, bias=False, **fk)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim, **fk))
            self.v_bias = nn.Parameter(torch.zeros(dim, **fk))
        else:
            self.q_bias = self.v_bias = None
        self.proj = nn.Linear(dim, dim, **fk)
        self.attn_map = AttentionMap("weights")

    def position_bias(self, wh: int, ww: int, device: Any = None) -> torch.Tensor:
        """(h, N, N) bias 16 sigmoid(G(log-spaced offsets)) of an M_h x M_w window."""
        norm = (self.pretrained_window_size if self.pretrained_window_size[0] > 0 else (wh, ww))
        wdt = self.qkv.weight.dtype
        exact = torch.float64 if wdt == torch.float64 else torch.float32  # half types: from float32
        coords = log_spaced_coords(wh, ww, norm, device=device, dtype=exact).to(wdt)  # (R, 2)
        table = self.cpb_mlp(coords)  # (R, h)
        n = wh * ww
        index = relative_position_index(wh, ww, (wh, ww), device=device)  # (N, N)
        return 16 * torch.sigmoid(table[index.flatten()].view(n, n, -1).permute(2, 0, 1))  # (h, N, N)

    def attend_grid(self, x: torch.Tensor) -> torch.Tensor:
        """Window attention on a channels-last map (B, H, W, C) -> (B, H, W, C)."""
        b, h, w, _ = x.shape
        plan = wh, ww, _, _ = window_plan(h, w, self.window_size, self.shift_size)
        win, hp, wp = _into_windows(x, plan)  # (B, nW, N, C)
        n, nh, d, nw = wh * ww, self.num_heads, self.head_dim, win.shape[1]
        bias = None
        if self.q_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))  # k has no bias
        q, k, v = F.linear(win, self.qkv.weight, bias).view(b * nw, n, 3, nh, d).permute(2, 0, 3, 1, 4)
        # cos(q, k) / tau: unit q and k, the temperature folded into q (per head)
        scale = torch.clamp(self.logit_scale, max=math.log(100.0)).exp()  # (h, 1, 1)
        q = F.normalize(q, dim=-1) * scale
        k = F.normalize(k, dim=-1)
        logit_bias = self.position_bias(wh, ww, device=x.device)  # (h, N, N)
        mask = shifted_window_mask(h, w, hp, wp, plan, x.device, x.dtype, cross=-100.0)
        if mask is not None:
            logit_bias = logit_bias + mask[:, None]  # (nW, h, N, N)
            logit_bias = logit_bias.expand(b, -1, -1, -1, -1).reshape(b * nw, nh, n, n)
        # SoftMax(cos(q, k) / tau + B) V
        out = attend(q, k, v, self.attn_map, logit_bias, scale=1.0)  # (B nW, h, N, d)
        return _out_of_windows(out, self.proj, b, (h, w), (hp, wp), plan)  # (B, H, W, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, "B C H W", name="CosineWindowAttention", C=self.dim)
        return self.attend_grid(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, C, H, W)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size}, "
                f"shift_size={self.shift_size}")
