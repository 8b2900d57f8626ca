"""Shuffle Attention: per group, a channel half and a spatial half, then a channel shuffle.

Paper: SA-Net: Shuffle Attention for Deep Convolutional Neural Networks (Zhang, arXiv
2102.00240, 2021).

Letters: B batch, C channels, H W spatial, G groups, c = C / (2 G) channels per half.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo._fastcall import listened, own
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require
from blockzoo.registry import Example, images, register

__all__ = ["ShuffleAttention"]

# From this many input elements on, each half's product is written straight into its shuffled
# output channels; below, the ~10 view ops that takes cost more than the concatenation and the
# shuffle copy it saves (docs/benchmarks.md, issue 19).
_DIRECT_WRITE_MIN = 1 << 15


@register(
    name="shuffle_attention",
    family="attention",
    paper="SA-Net: Shuffle Attention for Deep Convolutional Neural Networks",
    arxiv="2102.00240",
    year=2021,
    input="image",
    example=Example(config=dict(channels=16, groups=4, init_weight=0.5), inputs=images(), size=(8, 8),
                    out_shape="same", tiny=dict(channels=8, groups=2)),
)
class ShuffleAttention(nn.Module):
    r"""Shuffle Attention (SA): group-wise channel and spatial gates, then a channel shuffle.

    Zhang & Yang, "SA-Net: Shuffle Attention for Deep Convolutional Neural Networks",
    arXiv 2102.00240.

    Equation: x is cut into G groups along channels, each group into two halves
    x_k1, x_k2 of c = C / (2G) channels. With per-channel parameters W_1, b_1, W_2, b_2
    of shape (c, 1, 1) shared by all groups::

        x'_k1 = sigmoid(W_1 GAP(x_k1) + b_1) * x_k1                  (channel half)
        x'_k2 = sigmoid(W_2 GN(x_k2) + b_2) * x_k2                   (spatial half)
        y     = channel_shuffle(cat_k [x'_k1, x'_k2], 2)

    GN normalises each channel over H W (GroupNorm with c groups of one channel) and
    applies its own per-channel affine gamma, beta (shared by all groups, like W_2, b_2).

    Args:
        channels: C, the input channels; a multiple of 2 * groups.
        groups: G (paper: 64).
        eps: the GroupNorm epsilon.
        init_weight: the initial W_1, W_2 (official: 0, so the gates start at
            sigmoid(b) = sigmoid(1) and GN's affine receives no gradient at the first step).

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, C, H, W).

    Deviations:
        None in the maths: where the paper is silent the official code (wofmanaf/SA-Net,
        ``sa_layer``) is followed. Its GN is ``nn.GroupNorm(c, c)`` with the default
        affine gamma = 1, beta = 0, applied before W_2, b_2; the product W_2 gamma is an
        over-parameterisation (the same maps as W_2 alone) but it is what was trained,
        so the 2c GN parameters are kept (6c parameters in all). W_1, W_2 start at 0 and
        b_1, b_2 at 1 (gates sigmoid(1) everywhere at initialisation; ``init_weight``
        sets another start); the shuffle is the official ``channel_shuffle(out, 2)``.

    Example:
        >>> sa = ShuffleAttention(64, groups=8)
        >>> sa(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(self, channels: int, *, groups: int = 64, eps: float = 1e-5, init_weight: float = 0.0,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        require(groups >= 1 and channels % (2 * groups) == 0,
                f"ShuffleAttention: channels={channels} must be a multiple of 2 * groups={2 * groups}")
        fk = dict(device=device, dtype=dtype)
        self.channels, self.groups, self.eps = channels, groups, eps
        c = channels // (2 * groups)
        self.cweight = nn.Parameter(torch.full((1, c, 1, 1), float(init_weight), **fk))
        self.cbias = nn.Parameter(torch.ones(1, c, 1, 1, **fk))
        self.sweight = nn.Parameter(torch.full((1, c, 1, 1), float(init_weight), **fk))
        self.sbias = nn.Parameter(torch.ones(1, c, 1, 1, **fk))
        self.gn = nn.GroupNorm(c, c, eps=eps, **fk)  # official: its own affine, then W_2, b_2
        self.channel_map = AttentionMap("channel")
        self.spatial_map = AttentionMap("spatial")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.channels:
            check_shape(x, "B C H W", name="ShuffleAttention", C=self.channels)  # raises, naming the misfit
        b, _, h, w = x.shape
        gn = self._modules["gn"]
        if type(gn) is nn.GroupNorm and not listened(gn):
            return self._fused(x, b, h, w)
        xg = x.reshape(b * self.groups, -1, h, w)  # (B G, 2c, H, W)
        x1, x2 = xg.chunk(2, dim=1)  # (B G, c, H, W) each
        # x'_k1 = sigmoid(W_1 GAP(x_k1) + b_1) * x_k1
        g1 = self.channel_map(torch.sigmoid(self.cweight * x1.mean((2, 3), keepdim=True) + self.cbias))
        # x'_k2 = sigmoid(W_2 GN(x_k2) + b_2) * x_k2
        n2 = self.gn(x2)  # (B G, c, H, W)
        g2 = self.spatial_map(torch.sigmoid(self.sweight * n2 + self.sbias))
        return self._concat_shuffle(x1 * g1, x2 * g2)

    def _concat_shuffle(self, y1: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
        """cat_k [y_k1, y_k2] along channels, then ``channel_shuffle(., 2)``: (B, C, H, W)."""
        b, h, w = y1.shape[0] // self.groups, y1.shape[-2], y1.shape[-1]
        out = torch.cat([y1, y2], 1).reshape(b, 2, self.channels // 2, h, w)  # (B, 2, C/2, H, W)
        return out.transpose(1, 2).reshape(b, self.channels, h, w)

    def _fused(self, x: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
        """The same maps with fewer passes: W_2, b_2 folded into GN's affine,
        W_2 (gamma n + beta) + b_2 = (W_2 gamma) n + (W_2 beta + b_2), one GroupNorm call giving
        the spatial gate's argument; the channel gate's argument in one ``addcmul``; and, for an
        even G, each half's product written straight to its shuffled channels of the output
        (no concatenation, no shuffle copy).

        The shuffle is a view: with G = 2 G', a group index splits into (i, g') = divmod(k, G'), the
        concatenated channel (k, half, ch) is i C/2 + j with j = (g', half, ch), and the shuffle
        puts it at output channel 2 j + i. So the output, seen as (B, G', 2, c, 2, H, W), takes
        half ``half`` of group (i, g') at [:, g', half, :, i]."""
        gs, c = self.groups, self.channels // (2 * self.groups)
        grad = torch.is_grad_enabled()
        # parameters and submodules read without nn.Module.__getattr__ (~0.3 us each, eleven of
        # them per call); ``own`` still honours a parametrized parameter
        mods = self._modules
        gn = mods["gn"]
        xg = x.reshape(b * gs, 2 * c, h, w)  # (B G, 2c, H, W)
        x1, x2 = xg.chunk(2, dim=1)  # (B G, c, H, W) each
        # x'_k1 = sigmoid(W_1 GAP(x_k1) + b_1) * x_k1
        gap = x1.mean((2, 3), keepdim=True)  # (B G, c, 1, 1)
        g1 = torch.addcmul(own(self, "cbias"), own(self, "cweight"), gap)
        g1 = mods["channel_map"](g1.sigmoid() if grad else g1.sigmoid_())
        # x'_k2 = sigmoid(W_2 GN(x_k2) + b_2) * x_k2
        sw, sb = own(self, "sweight").view(c), own(self, "sbias").view(c)
        g2 = F.group_norm(x2, c, sw * own(gn, "weight"), torch.addcmul(sb, sw, own(gn, "bias")), gn.eps)
        # g2: (B G, c, H, W)
        g2 = mods["spatial_map"](g2.sigmoid() if grad else g2.sigmoid_())
        # (a size test under compile or export would specialise the batch: there, concatenate)
        if gs % 2 or torch.compiler.is_compiling() or x.numel() < _DIRECT_WRITE_MIN:
            return self._concat_shuffle(x1 * g1, x2 * g2)
        half = gs // 2
        out = x.new_empty(b, self.channels, h, w)
        dst = out.view(b, half, 2, c, 2, h, w)  # (B, G', half, c, i, H, W)

        def shuffled(t: torch.Tensor) -> torch.Tensor:  # (B G, c, ., .) -> (B, G', c, i, ., .)
            return t.view(b, 2, half, c, t.shape[-2], t.shape[-1]).permute(0, 2, 3, 1, 4, 5)

        if grad:
            # autograd cannot record into ``out=`` views (any parameter may be the trainable one):
            # the same products, then one copy each
            dst[:, :, 0].copy_(shuffled(x1) * shuffled(g1))
            dst[:, :, 1].copy_(shuffled(x2) * shuffled(g2))
            return out
        torch.mul(shuffled(x1), shuffled(g1), out=dst[:, :, 0])
        torch.mul(shuffled(x2), shuffled(g2), out=dst[:, :, 1])
        return out

    def extra_repr(self) -> str:
        return f"channels={self.channels}, groups={self.groups}"
