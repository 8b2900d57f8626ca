"""HaloNet's blocked local self-attention with a halo.

Paper: Scaling Local Self-Attention for Parameter Efficient Visual Backbones
(Vaswani, Ramachandran, Srinivas, Parmar, Hechtman, Shlens; arXiv 2103.12731, 2021).

Letters: B batch, C channels, H W spatial, b block size, s halo size, w = b + 2s window,
n number of blocks, h heads, d head dim.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo._fastcall import call
from blockzoo._memo import memo_table
from blockzoo.attention._attend import key_mask, pad_to_multiple
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require, require_divides
from blockzoo.registry import Example, images, register

__all__ = ["HaloAttention"]


@memo_table()
def _halo_tables(H: int, W: int, nh: int, nw: int, b: int, s: int, device: torch.device,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The relative-table rows idx (b, w) and the additive key mask (nh nw, w*w) of each
    block's window: 0 inside the image, -inf outside (the halo beyond the border, the
    bottom/right padding)."""
    w = b + 2 * s
    u = torch.arange(w, device=device)
    idx = u[None, :] - s - torch.arange(b, device=device)[:, None] + (b + s - 1)  # (b, w)

    def axis(n: int, size: int) -> torch.Tensor:
        pos = torch.arange(n, device=device)[:, None] * b - s + u  # (n, w) image row / column
        return (pos >= 0) & (pos < size)

    valid = axis(nh, H)[:, None, :, None] & axis(nw, W)[None, :, None, :]  # (nh, nw, w, w)
    return idx, key_mask(valid.reshape(nh * nw, w * w), dtype)


@register(
    name="halo_attention",
    family="attention",
    paper="Scaling Local Self-Attention for Parameter Efficient Visual Backbones",
    arxiv="2103.12731",
    year=2021,
    input="image",
    example=Example(config=dict(channels=16, block_size=4, halo_size=1, num_heads=2),
                    inputs=images(), size=(8, 8), out_shape="same",
                    tiny=dict(channels=4, block_size=2, halo_size=1, num_heads=1)),
)
class HaloAttention(nn.Module):
    r"""Halo attention: each b x b block of queries attends to its (b + 2s) x (b + 2s) neighbourhood.

    Vaswani et al., "Scaling Local Self-Attention for Parameter Efficient Visual
    Backbones", arXiv 2103.12731.

    Equation, for a query pixel i in block n and the keys j of that block's window
    (the block grown by a halo of s pixels on every side)::

        q, k, v = W_q x, W_k x, W_v x                          (1x1 convs, h heads of size d)
        A_{i,j} = softmax_j((q_i . k_j + q_i . (r^H[j_h - i_h] + r^W[j_w - i_w])) / sqrt(d))
        y_i     = W_o sum_j A_{i,j} v_j

    r^H, r^W are the factorised relative position embeddings of the paper (shared by
    the heads, one d-vector per row / column offset). Window pixels outside the image
    (the halo at the border and the padding below) are masked out of the softmax.

    Args:
        channels: C, input and output channels.
        block_size: b, the query block side (paper: 8).
        halo_size: s, the halo width (paper: 3).
        num_heads: h, attention heads.
        head_dim: d, per-head width (default ``channels // num_heads``).
        qkv_bias: whether the q/k/v projections have biases.

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W: the input is zero-padded at the
          bottom/right to multiples of b, padded keys are masked, the output is cropped.
        - Output: (B, C, H, W).

    Deviations:
        - Masked halo instead of attending to zero-padded pixels: a border pixel sees
          only real pixels, so the output does not depend on how much padding was added.
        - The block is the attention layer only (stride 1, no down-sampling variant).

    Example:
        >>> attn = HaloAttention(32, block_size=4, halo_size=1, num_heads=4)
        >>> attn(torch.randn(2, 32, 7, 9)).shape
        torch.Size([2, 32, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        block_size: int = 8,
        halo_size: int = 3,
        num_heads: int = 1,
        head_dim: int | None = None,
        qkv_bias: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(block_size >= 1, f"HaloAttention: block_size={block_size} must be >= 1")
        require(halo_size >= 0, f"HaloAttention: halo_size={halo_size} must be >= 0")
        require(num_heads >= 1, f"HaloAttention: num_heads={num_heads} must be >= 1")
        if head_dim is None:
            head_dim = require_divides("HaloAttention", "num_heads", num_heads, "channels", channels)
        self.channels, self.block_size, self.halo_size = channels, block_size, halo_size
        self.num_heads, self.head_dim = num_heads, head_dim
        self.win = block_size + 2 * halo_size
        fk = dict(device=device, dtype=dtype)
        inner = num_heads * head_dim
        self.q = nn.Conv2d(channels, inner, 1, bias=qkv_bias, **fk)
        self.kv = nn.Conv2d(channels, 2 * inner, 1, bias=qkv_bias, **fk)
        self.proj = nn.Conv2d(inner, channels, 1, **fk)
        n_rel = 2 * (block_size + halo_size) - 1
        self.rel_h = nn.Parameter(torch.empty(n_rel, head_dim, **fk))
        self.rel_w = nn.Parameter(torch.empty(n_rel, head_dim, **fk))
        self.attn_map = AttentionMap("weights")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.rel_h, std=self.head_dim ** -0.5)
        nn.init.normal_(self.rel_w, std=self.head_dim ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = check_shape(x, "B C H W", name="HaloAttention", C=self.channels)
        B, H, W = dims["B"], dims["H"], dims["W"]
        b, s, w, h, d = self.block_size, self.halo_size, self.win, self.num_heads, self.head_dim
        xp, _, _ = pad_to_multiple(x, b, b)
        Hp, Wp = xp.shape[-2:]
        nh, nw = Hp // b, Wp // b
        n = nh * nw
        idx, mask = _halo_tables(H, W, nh, nw, b, s, x.device, x.dtype)  # (b, w), (n, w*w)
        q = call(self.q, xp).view(B, h, d, nh, b, nw, b)
        q = q.permute(0, 1, 3, 5, 4, 6, 2).reshape(B * h * n, b * b, d)  # (B h n, b*b, d)
        # each block's w x w window of keys / values: views into the map zero-padded by s
        # (Tensor.unfold; one copy per operand below, cheaper than F.unfold's im2col)
        kv = F.pad(call(self.kv, xp), (s, s, s, s)).unfold(2, w, b).unfold(3, w, b)  # (B, 2hd, nh, nw, w, w)
        k, v = kv.reshape(B, 2, h, d, nh, nw, w, w).unbind(1)  # (B, h, d, nh, nw, w, w)
        scale = 1.0 / math.sqrt(d)
        # r_{i,j} = (r^H[j_h - i_h] + r^W[j_w - i_w]) / sqrt(d) for the b*b queries i and the
        # w*w window keys j of a block (the same for every block)
        r = self.rel_h[idx][:, None, :, None] + self.rel_w[idx][None, :, None, :]  # (b, b, w, w, d)
        r = (r * scale).view(b * b, w * w, d)
        # relative logits q_i . r_{i,j}, one product per query position i, plus the key mask
        rel = torch.bmm(q.transpose(0, 1), r.transpose(-1, -2))  # (b*b, B h n, w*w)
        rel = rel.view(b * b, B * h, n, w * w).add_(mask).view(b * b, B * h * n, w * w)
        # A = softmax(q k^T / sqrt(d) + rel): the batched products written out (the fused
        # attention kernel is slower on these many small windows)
        kt = k.permute(0, 1, 3, 4, 2, 5, 6).reshape(B * h * n, d, w * w)  # (B h n, d, w*w)
        a = torch.baddbmm(rel.transpose(0, 1), q, kt, alpha=scale)  # (B h n, b*b, w*w)
        a = self.attn_map(a.softmax(dim=-1).view(B, h, n, b * b, w * w))  # (B, h, n, b*b, w*w)
        v = v.permute(0, 1, 3, 4, 5, 6, 2).reshape(B * h * n, w * w, d)  # (B h n, w*w, d)
        y = torch.bmm(a.view(B * h * n, b * b, w * w), v)  # (B h n, b*b, d)
        y = y.view(B, h, nh, nw, b, b, d).permute(0, 1, 6, 2, 4, 3, 5)  # (B, h, d, nh, b, nw, b)
        y = y.reshape(B, h * d, Hp, Wp)[:, :, :H, :W]  # (B, h*d, H, W)
        return call(self.proj, y)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, block_size={self.block_size}, "
                f"halo_size={self.halo_size}, num_heads={self.num_heads}, head_dim={self.head_dim}")
