"""A²-Nets double attention: gather global features by attention, distribute them by attention.

Paper: A²-Nets: Double Attention Networks (Chen, arXiv 1810.11579, 2018).

Letters: B batch, C channels, H W spatial, N = H W, m gathered feature width, n number
of global descriptors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo._fastcall import call
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require
from blockzoo.registry import Example, images, register

__all__ = ["DoubleAttention"]


@register(
    name="double_attention",
    family="attention",
    paper="A2-Nets: Double Attention Networks",
    arxiv="1810.11579",
    year=2018,
    input="image",
    example=Example(config=dict(channels=16), inputs=images(), size=(8, 8),
                    out_shape="same", tiny=dict(channels=4, c_m=3, c_n=2)),
)
class DoubleAttention(nn.Module):
    r"""Double attention block: second-order attention pooling, then adaptive distribution.

    Chen et al., "A²-Nets: Double Attention Networks", arXiv 1810.11579.

    Equation, with A = phi(x) (m channels), Bm = theta(x) and V = rho(x) (n channels),
    1x1 convs, flattened to N = H W positions::

        G     = A softmax_N(Bm)^T               gather: n global descriptors (m x n),
                                                 each an attention-weighted pool over N
        Z_i   = G softmax_n(V_i)                 distribute: at position i, a mixture of
                                                 the n descriptors (Z: m x N)
        y     = x + W_z Z                        W_z: 1x1 conv m -> C

    Args:
        channels: C, the input channels.
        c_m: m, the width of the gathered features (default C).
        c_n: n, the number of global descriptors (default max(1, C // 4)).
        residual: add the input back (the paper's block sits in a residual unit).

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, C, H, W).

    Deviations:
        The defaults c_m = C and c_n = C / 4 are our choice; the paper sets m and n
        per stage. theta has no bias (public A2-Net implementations give it one): row k
        of Bm gets b_k at every position, which softmax_N over that row cancels, so the
        bias cannot change the output (rho's bias stays: softmax_n runs across channels).
        We know of no code released by the authors; the paper's equations are explicit
        (gather G = A softmax(B)^T, distribute Z = G softmax(V), a 1x1 conv back to C)
        and the block is checked against them.

    Example:
        >>> a2 = DoubleAttention(64)
        >>> a2(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(self, channels: int, *, c_m: int | None = None, c_n: int | None = None,
                 residual: bool = True, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.channels = channels
        self.c_m = c_m or channels
        self.c_n = c_n or max(1, channels // 4)
        require(self.c_m >= 1 and self.c_n >= 1,
                f"DoubleAttention: c_m={self.c_m} and c_n={self.c_n} must be >= 1")
        self.residual = residual
        self.phi = nn.Conv2d(channels, self.c_m, 1, **fk)
        self.theta = nn.Conv2d(channels, self.c_n, 1, bias=False, **fk)  # softmax_N cancels a bias
        self.rho = nn.Conv2d(channels, self.c_n, 1, **fk)
        self.proj = nn.Conv2d(self.c_m, channels, 1, **fk)
        self.gather_map = AttentionMap("weights")
        self.distribute_map = AttentionMap("weights")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.channels:
            check_shape(x, "B C H W", name="DoubleAttention", C=self.channels)  # raises, naming the misfit
        b, _, h, w = x.shape
        mods = self._modules  # the convs as functional ops unless hooked (_fastcall)
        a = call(mods["phi"], x).flatten(2)  # (B, m, N)
        gather = mods["gather_map"](call(mods["theta"], x).flatten(2).softmax(-1))  # (B, n, N)
        distribute = mods["distribute_map"](call(mods["rho"], x).flatten(2).softmax(1))  # (B, n, N)
        # G = A softmax_N(Bm)^T
        g = torch.bmm(a, gather.transpose(1, 2))  # (B, m, n)
        # Z_i = G softmax_n(V_i)
        z = torch.bmm(g, distribute).view(b, self.c_m, h, w)  # (B, m, H, W)
        y = call(mods["proj"], z)
        return x + y if self.residual else y

    def extra_repr(self) -> str:
        return f"channels={self.channels}, c_m={self.c_m}, c_n={self.c_n}, residual={self.residual}"
