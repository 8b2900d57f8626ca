r"""HAT-Net's hierarchical multi-head self-attention (H-MHSA).

Paper: Vision Transformers with Hierarchical Attention (Liu, Wu, Sun, Zhang, Chhatkuli,
Van Gool, arXiv 2106.03180, 2021; first titled "Transformer in Convolutional Neural
Networks"), Sec. 3. The structure (norms, separate global projections, pooling ratio)
follows the authors' released code, yun-liu/HAT-Net ``HAT_Net.py``.

Letters: B batch, C channels (= dim), H W spatial, G the grid (local window) side,
Hp Wp the size padded to whole grids, n = (Hp / G)(Wp / G) grids, r the pooling ratio,
N = H W queries, M = ceil(H / r) ceil(W / r) pooled keys, h heads, d head dim.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo._memo import memo_table
from blockzoo.attention._attend import attend, key_mask, pad_to_multiple
from blockzoo.attention.maps import AttentionMap
from blockzoo.attention.swin import real_window_tokens
from blockzoo.checks import check_shape, require, require_divides
from blockzoo.registry import Example, images, register

__all__ = ["HierarchicalMHSA"]

# The global attention of at most this many logits per head (N M) is computed transposed from
# the channel-first projections; more go through fused SDPA on contiguous q, k, v (CPU, both
# against SDPA's math path on the strided views: 2.7x at N M = 1024, 1.8x at 262144).
_TRANSPOSED_MAX_LOGITS = 16384


@memo_table()
def _grid_key_mask(h: int, w: int, hp: int, wp: int, g: int, device: Any, dtype: torch.dtype) -> torch.Tensor:
    """(n, 1, 1, G^2) additive mask: -inf on the padded positions of each G x G grid."""
    return key_mask(real_window_tokens(h, w, hp, wp, g, g, device), dtype)[:, None, None, :]


@register(
    name="hierarchical_mhsa",
    family="attention",
    paper="Vision Transformers with Hierarchical Attention",
    arxiv="2106.03180",
    year=2021,
    input="image",
    example=Example(config=dict(dim=16, num_heads=2, grid_size=4, ds_ratio=2), inputs=images("dim"),
                    size=(8, 8), sizes=((7, 9), (12, 10), (3, 5)), out_shape="same",
                    tiny=dict(dim=4, num_heads=1, grid_size=2, ds_ratio=2)),
)
class HierarchicalMHSA(nn.Module):
    r"""Self-attention inside G x G grids, then of every token over r x r average-pooled tokens; summed.

    Liu et al., "Vision Transformers with Hierarchical Attention", arXiv 2106.03180, Sec. 3
    (H-MHSA), as the authors' code computes it.

    Equation, x the (B, C, H, W) map, GN a one-group GroupNorm, all projections 1 x 1 convs::

        Q0, K0, V0 = GN(x) W^qkv                       split into the n grids of G x G tokens
        A0 = softmax(Q0 K0^T / sqrt(d)) V0              within each grid (local)
        X1 = GN(x + A0)
        P  = GN(AvgPool_{r x r, stride r}(X1))          M pooled tokens
        A1 = softmax((X1 W^q)(P W^k)^T / sqrt(d)) (P W^v)   every token over the pooled ones (global)
        H-MHSA(x) = (A1 + X1) W^p

    With G = 1 there is no local step: H-MHSA(x) = MHSA(GN(x)) W^p, plain global
    multi-head self-attention (HAT-Net's last stage).

    Args:
        dim: C, input and output channels.
        num_heads: h (HAT-Net: C / 48 in HAT-Net-Tiny, head width d = 48).
        grid_size: G, the side of the local grids (HAT-Net: 8, 7, 7, 1 in stages 1-4).
        ds_ratio: r, the average-pooling ratio of the global keys (HAT-Net: 8, 4, 2, 1);
            unused (must be 1) when G = 1.
        qkv_bias: biases on the q, k, v projections (authors' code: True).
        norm_eps: of the GroupNorms (1e-6).

    Shape:
        - Input: (B, C, H, W), C = dim, any H, W (see Deviations for sizes that are not
          multiples of G or r).
        - Output: (B, C, H, W).

    Deviations:
        Follows the released code where the paper's text is terser: a GroupNorm before the
        q, k, v projection, after the local residual (X1) and after the pooling; the global
        step has its own q and k, v projections; the output projection acts on A1 + X1.
        The pooling ratio r is an argument of its own (the released model pools by 8, 4, 2
        with grids of 8, 7, 7). The released attention also builds a ``proj_norm``
        GroupNorm that its forward never uses (2C parameters); it is left out here.
        Sizes: the released code needs H and W to be multiples of G; here the map is
        zero-padded at the bottom / right to whole grids, padded keys are masked out of
        every grid's softmax and padded queries are cropped (the border grids are simply
        smaller). The pooling keeps a last partial r x r cell, averaged over its real
        pixels only (``ceil_mode``), so every pixel reaches a key. At multiples of G and r
        both are exactly the released computation. No dropout (the paper trains without).

    Example:
        >>> attn = HierarchicalMHSA(48, num_heads=1, grid_size=8, ds_ratio=8)
        >>> attn(torch.randn(2, 48, 56, 40)).shape
        torch.Size([2, 48, 56, 40])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 1,
        *,
        grid_size: int = 8,
        ds_ratio: int = 8,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        name = "HierarchicalMHSA"
        require(isinstance(grid_size, int) and grid_size >= 1,
                f"{name}: grid_size={grid_size!r} must be >= 1")
        require(isinstance(ds_ratio, int) and ds_ratio >= 1, f"{name}: ds_ratio={ds_ratio!r} must be >= 1")
        require(grid_size > 1 or ds_ratio == 1,
                f"{name}: ds_ratio={ds_ratio} needs a local step (grid_size > 1); grid_size=1 is plain MHSA")
        self.head_dim = require_divides(name, "num_heads", num_heads, "dim", dim)
        self.dim, self.num_heads, self.grid_size, self.ds_ratio = dim, num_heads, grid_size, ds_ratio
        fk = dict(device=device, dtype=dtype)
        gn = functools.partial(nn.GroupNorm, 1, dim, eps=norm_eps, **fk)
        self.norm = gn()
        self.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=qkv_bias, **fk)
        self.proj = nn.Conv2d(dim, dim, 1, **fk)
        if grid_size > 1:
            self.grid_norm: nn.Module | None = gn()
            self.ds_norm: nn.Module | None = gn()
            self.q: nn.Module | None = nn.Conv2d(dim, dim, 1, bias=qkv_bias, **fk)
            self.kv: nn.Module | None = nn.Conv2d(dim, 2 * dim, 1, bias=qkv_bias, **fk)
            self.local_map: AttentionMap | None = AttentionMap("weights")
        else:
            self.grid_norm = self.ds_norm = self.q = self.kv = self.local_map = None
        self.attn_map = AttentionMap("weights")

    def _local(self, qkv: torch.Tensor) -> torch.Tensor:
        """A0: attention within each G x G grid of the (B, 3C, H, W) projections -> (B, C, H, W)."""
        b, _, h, w = qkv.shape
        g, nh, d = self.grid_size, self.num_heads, self.head_dim
        qkv, ph, pw = pad_to_multiple(qkv, g, g)  # (B, 3C, Hp, Wp)
        hp, wp = h + ph, w + pw
        gh, gw = hp // g, wp // g
        t = qkv.reshape(b, 3, nh, d, gh, g, gw, g)  # (B, 3, h, d, gh, G, gw, G)
        t = t.permute(1, 0, 4, 6, 2, 5, 7, 3)  # (3, B, gh, gw, h, G, G, d)
        q, k, v = t.reshape(3, b * gh * gw, nh, g * g, d)  # 3 x (B n, h, G^2, d)
        mask = None
        if ph or pw:
            mask = _grid_key_mask(h, w, hp, wp, g, qkv.device, qkv.dtype)  # (n, 1, 1, G^2)
            mask = mask.repeat(b, 1, 1, 1)  # (B n, 1, 1, G^2)
        # A0 = softmax(Q0 K0^T / sqrt(d)) V0, per grid
        a = attend(q, k, v, self.local_map, mask)  # (B n, h, G^2, d)
        a = a.reshape(b, gh, gw, nh, g, g, d).permute(0, 3, 6, 1, 4, 2, 5)  # (B, h, d, gh, G, gw, G)
        return a.reshape(b, self.dim, hp, wp)[:, :, :h, :w]  # (B, C, H, W)

    def _global(self, qs: torch.Tensor, kvs: torch.Tensor) -> torch.Tensor | None:
        """A1 (B, C, H, W) from the channel-first projections without autograd: with d the
        channel axis, SDPA sees q, k, v whose last dim is strided and takes its unfused math path
        (copies, a scale pass, a safe softmax). Few logits: the transposed logits K Q^T as
        (B, h, M, N) straight from the channel-first views, a softmax over M, and V S written
        channel-first, with no copy; many: contiguous q, k, v through the fused SDPA kernel.
        None on devices other than the CPU (the caller runs ``attend``)."""
        if qs.device.type != "cpu":
            return None
        b, c, h, w = qs.shape
        nh, d = self.num_heads, self.head_dim
        n, m = h * w, kvs.shape[-2] * kvs.shape[-1]
        q = qs.reshape(b, nh, d, n)  # (B, h, d, N)
        kv = kvs.reshape(b, 2, nh, d, m)  # (B, 2, h, d, M)
        if n * m <= _TRANSPOSED_MAX_LOGITS:
            s = torch.matmul(kv[:, 0].transpose(-2, -1), q)  # (B, h, M, N)
            s = s.mul_(1.0 / math.sqrt(d)).softmax(-2)  # softmax over the keys
            return torch.matmul(kv[:, 1], s).view(b, c, h, w)  # (B, h, d, N) = (B, C, H, W)
        k, v = kv.transpose(-2, -1).contiguous().unbind(1)  # 2 x (B, h, M, d)
        a = F.scaled_dot_product_attention(q.transpose(-2, -1).contiguous(), k, v)  # (B, h, N, d)
        return a.transpose(-2, -1).reshape(b, c, h, w)

    def _heads(self, z: torch.Tensor, parts: int) -> torch.Tensor:
        """(B, parts C, H, W) -> (parts, B, h, H W, d)."""
        b = z.shape[0]
        return z.reshape(b, parts, self.num_heads, self.head_dim, -1).permute(1, 0, 2, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.dim:
            check_shape(x, "B C H W", name="HierarchicalMHSA", C=self.dim)  # raises
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x))  # (B, 3C, H, W)
        if self.grid_size == 1:
            qs, kvs = qkv[:, :c], qkv[:, c:]  # (B, C, H, W), (B, 2C, H, W)
            base = None
        else:
            # X1 = GN(x + A0)
            base = self.grid_norm(x + self._local(qkv))  # (B, C, H, W)
            # P = GN(AvgPool_r(X1)): a last partial cell averages its real pixels only
            r = self.ds_ratio
            pooled = F.avg_pool2d(base, r, r, ceil_mode=True) if r > 1 else base  # (B, C, H', W')
            qs, kvs = self.q(base), self.kv(self.ds_norm(pooled))  # (B, C, H, W), (B, 2C, H', W')
        # A1 = softmax(Q K^T / sqrt(d)) V
        a = None
        if not (torch.is_grad_enabled() or torch.compiler.is_compiling() or self.attn_map.active):
            a = self._global(qs, kvs)
        if a is None:
            q, (k, v) = self._heads(qs, 1)[0], self._heads(kvs, 2)  # (B, h, N, d), 2 x (B, h, M, d)
            a = attend(q, k, v, self.attn_map)  # (B, h, N, d)
            a = a.transpose(-2, -1).reshape(b, c, h, w)  # (B, C, H, W)
        # H-MHSA(x) = (A1 + X1) W^p
        return self.proj(a if base is None else a + base)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, grid_size={self.grid_size}, "
                f"ds_ratio={self.ds_ratio}")
