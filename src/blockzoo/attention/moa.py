"""MOA: multi-resolution overlapped attention, a global attention between window tokens.

Paper: Aggregating Global Features into Local Vision Transformer (Patel, Bur, Li,
Wang; arXiv 2201.12903, 2022).

Letters: B batch, C channels, C' = C / reduction, H W spatial, w window (query patch)
side, o overlap, n number of windows, D token width, h heads, d head dim.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo._fastcall import call, listened
from blockzoo.attention._attend import attend, pad_to_multiple
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require, require_divides
from blockzoo.registry import Example, images, register

__all__ = ["MultiResolutionOverlappedAttention"]


@register(
    name="moa_attention",
    family="attention",
    paper="Aggregating Global Features into Local Vision Transformer",
    arxiv="2201.12903",
    year=2022,
    input="image",
    example=Example(config=dict(channels=16, window_size=2, overlap=1, reduction=2, num_heads=2),
                    inputs=images(), size=(8, 8), out_shape="same",
                    tiny=dict(channels=4, reduction=2, num_heads=1)),
)
class MultiResolutionOverlappedAttention(nn.Module):
    r"""MOA: each window becomes one query token; keys/values come from larger, overlapping patches.

    Patel et al., "Aggregating Global Features into Local Vision Transformer",
    arXiv 2201.12903 (the MOA module inserted after each stage of a local,
    window-based transformer, to exchange information between all windows).

    Equation, with z = W_r x (1x1 conv, C -> C' = C / reduction)::

        Q_n = W_q vec(z[window n])                    w x w pixels        -> D
        K_n = W_k vec(z[window n grown by o])         (w + 2o)^2 pixels   -> D   (overlapping)
        V_n = W_v vec(z[window n grown by o])
        U   = MHSA: softmax(Q K^T / sqrt(d)) V        global over the n windows, h heads
        y   = W_e unvec(W_u U)                        D -> C' w^2 -> window pixels; 1x1 conv C' -> C

    The query tokens are at window resolution (one per window), the keys slightly
    larger and overlapping, so neighbouring windows' pixels reach each other.

    Args:
        channels: C, input and output channels.
        window_size: w, the query patch (window) side (paper: the local transformer's window).
        overlap: o, how far each key/value patch extends beyond its window on every side.
        reduction: C / C', the channel reduction before flattening patches (it keeps the
            flattened patch tokens small; default 32).
        dim: D, the token width (default ``channels``).
        num_heads: h, attention heads (must divide D).
        qkv_bias: whether the token projections have biases.

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W: z is zero-padded at the
          bottom/right to multiples of w (a partial window is a token with zeros in it)
          and the output is cropped back to H x W.
        - Output: (B, C, H, W).

    Deviations:
        - Our reading of the paper's figure: the output token is mapped back to the
          window's pixels by a linear layer (W_u), and the module returns the attention
          output alone (the caller adds the residual).
        - No position embedding between window tokens.
        - The authors' release (krushi1992/MOA-transformer, ``GlobalAttention`` and its
          call in ``BasicLayer``) has layout bugs we do not follow: it reshapes the
          (B, L, C) tokens to (B, C, H, W) without a transpose, turns the query and key
          patches into tokens with ``view`` instead of a transpose (mixing windows with
          features), adds the window outputs to an un-partitioned ``view`` of the tokens,
          and fixes the key unfold's stride at 14 (right for window 14 only). We implement
          the evident intent: window-aligned query patches and overlapping key patches
          (stride w, padding o).
        - Where the release is coherent it still differs from us: its output is one
          token per window (``proj``, Linear D -> D with D = C) broadcast-added to every
          pixel of that window, where ours is pixel-specific (W_u, then the 1x1 conv
          C' -> C); it learns a relative position bias between window tokens (a table
          sized by the input resolution; we have none, so any input size works); it fixes
          o = 1 (keys w + 2) and flattens query patches as (p1 p2 c), a permutation of
          W_q's input columns against our (c p1 p2).

    Example:
        >>> moa = MultiResolutionOverlappedAttention(32, window_size=4, overlap=1, reduction=4)
        >>> moa(torch.randn(2, 32, 7, 9)).shape
        torch.Size([2, 32, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        window_size: int = 7,
        overlap: int = 1,
        reduction: int = 32,
        dim: int | None = None,
        num_heads: int = 1,
        qkv_bias: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        dim = dim or channels
        require(window_size >= 1, f"MOA: window_size={window_size} must be >= 1")
        require(overlap >= 0, f"MOA: overlap={overlap} must be >= 0")
        require(reduction >= 1 and channels // reduction >= 1,
                f"MOA: reduction={reduction} must be in [1, channels={channels}]")
        require_divides("MOA", "num_heads", num_heads, "dim", dim)
        self.channels, self.window_size, self.overlap = channels, window_size, overlap
        self.reduced, self.dim, self.num_heads = channels // reduction, dim, num_heads
        fk = dict(device=device, dtype=dtype)
        w, kw, cr = window_size, window_size + 2 * overlap, self.reduced
        self.reduce = nn.Conv2d(channels, cr, 1, **fk)
        self.q = nn.Linear(cr * w * w, dim, bias=qkv_bias, **fk)
        self.kv = nn.Linear(cr * kw * kw, 2 * dim, bias=qkv_bias, **fk)
        self.unembed = nn.Linear(dim, cr * w * w, **fk)
        self.expand = nn.Conv2d(cr, channels, 1, **fk)
        self.attn_map = AttentionMap("weights")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = check_shape(x, "B C H W", name="MultiResolutionOverlappedAttention", C=self.channels)
        B, H, W = dims["B"], dims["H"], dims["W"]
        w, o, h, D = self.window_size, self.overlap, self.num_heads, self.dim
        mods = self._modules
        stock = (("reduce", nn.Conv2d), ("expand", nn.Conv2d), ("kv", nn.Linear))
        if (not torch.is_grad_enabled() and not torch.compiler.is_compiling() and not self.attn_map.active
                and all(type(mods[m]) is t and "weight" in mods[m]._parameters
                        and "bias" in mods[m]._parameters for m, t in stock)
                and not listened(mods["reduce"], mods["expand"], mods["kv"])):
            return self._forward_tokens(x, B, H, W)
        z, _, _ = pad_to_multiple(self.reduce(x), w, w)  # (B, C', Hp, Wp)
        Hp, Wp = z.shape[-2:]
        qp = F.unfold(z, w, stride=w).transpose(1, 2)  # (B, n, C' w w)
        kp = F.unfold(z, w + 2 * o, stride=w, padding=o).transpose(1, 2)  # (B, n, C' (w+2o)^2)
        n = qp.shape[1]
        q = self.q(qp).view(B, n, h, D // h).transpose(1, 2)  # (B, h, n, d)
        k, v = self.kv(kp).view(B, n, 2, h, D // h).permute(2, 0, 3, 1, 4)  # (B, h, n, d) each
        # U = softmax(Q K^T / sqrt(d)) V, global over the windows
        u = attend(q, k, v, self.attn_map, scale=1.0 / math.sqrt(D // h))  # (B, h, n, d)
        u = self.unembed(u.transpose(1, 2).reshape(B, n, D))  # (B, n, C' w w)
        y = F.fold(u.transpose(1, 2), (Hp, Wp), w, stride=w)  # (B, C', Hp, Wp)
        return self.expand(y[:, :, :H, :W])

    def _forward_tokens(self, x: torch.Tensor, B: int, H: int, W: int) -> torch.Tensor:
        """``forward`` in eval without autograd, channels-last: the 1 x 1 convolutions as linear maps
        over the channels, the non-overlapping query windows and their fold back as views and one
        reshape each (``F.unfold`` / ``F.fold`` with stride = kernel copy through im2col / col2im),
        the key-value projection of the unfolded grown windows as one strided convolution (no
        (B, n, C' (w+2o)^2) patch matrix); the same products. The output is (B, C, H, W) with
        channels-last strides."""
        w, o, h, D, cr = self.window_size, self.overlap, self.num_heads, self.dim, self.reduced
        mods = self._modules
        rp, ep, kvp = mods["reduce"]._parameters, mods["expand"]._parameters, mods["kv"]._parameters
        z = F.linear(x.permute(0, 2, 3, 1), rp["weight"].reshape(cr, -1), rp["bias"])  # (B, H, W, C')
        z = F.pad(z, (0, 0, 0, (-W) % w, 0, (-H) % w)).permute(0, 3, 1, 2)  # (B, C', Hp, Wp), a view
        Hp, Wp = z.shape[2], z.shape[3]
        nh, nw = Hp // w, Wp // w
        n = nh * nw
        qp = z.reshape(B, cr, nh, w, nw, w).permute(0, 2, 4, 1, 3, 5).reshape(B, n, cr * w * w)
        q = call(mods["q"], qp).view(B, n, h, D // h).transpose(1, 2)  # (B, h, n, d)
        kw = w + 2 * o
        # K, V = W_kv unfold(z): the projection of the grown windows is a (w+2o) conv of stride w
        kv = F.conv2d(z, kvp["weight"].reshape(2 * D, cr, kw, kw), kvp["bias"], w, o)  # (B, 2D, nh, nw)
        k, v = kv.view(B, 2, h, D // h, n).permute(1, 0, 2, 4, 3)  # (B, h, n, d) each
        # U = softmax(Q K^T / sqrt(d)) V, global over the windows
        u = F.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(D // h))  # (B, h, n, d)
        u = call(mods["unembed"], u.transpose(1, 2).reshape(B, n, D))  # (B, n, C' w w)
        y = u.view(B, nh, nw, cr, w, w).permute(0, 1, 4, 2, 5, 3).reshape(B, Hp, Wp, cr)[:, :H, :W]  # fold
        out = F.linear(y, ep["weight"].reshape(self.channels, cr), ep["bias"])  # (B, H, W, C)
        return out.permute(0, 3, 1, 2)  # (B, C, H, W)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, window_size={self.window_size}, overlap={self.overlap}, "
                f"reduced={self.reduced}, dim={self.dim}, num_heads={self.num_heads}")
