"""Selective Kernel attention: softmax attention across branches of different kernels.

Paper: Selective Kernel Networks (Li, arXiv 1903.06586, 2019).

Letters: B batch, C channels, H W spatial, M branches, d the fuse width.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from blockzoo._fastcall import call, sequential
from blockzoo.act import LayerSpec, create_act, create_norm
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require, require_divides
from blockzoo.registry import Example, images, register

__all__ = ["SelectiveKernel"]


@register(
    name="sk",
    family="attention",
    paper="Selective Kernel Networks",
    arxiv="1903.06586",
    year=2019,
    input="image",
    example=Example(config=dict(channels=16, groups=4, reduction=4, min_hidden=4), inputs=images(),
                    size=(8, 8), out_shape="same",
                    tiny=dict(channels=4, groups=2, min_hidden=2)),
)
class SelectiveKernel(nn.Module):
    r"""Selective Kernel (SK) unit: split into kernel branches, fuse, select by softmax.

    Li et al., "Selective Kernel Networks", arXiv 1903.06586.

    Equation, for M branches U_m = act(BN(conv_{k_m}(x))) (grouped convs)::

        U   = sum_m U_m                                          (fuse)
        s_c = 1/(H W) sum_{i,j} U_c(i, j)
        z   = act(BN(W s))                  W: C -> d,  d = max(C / r, L)
        a_m = exp(A_m z) / sum_m' exp(A_m' z)   per channel        A_m: d -> C, no bias (select)
        y   = sum_m a_m * U_m

    A k x k branch is, as in the paper, a 3x3 conv with dilation (k - 1) / 2 when
    ``dilate`` is True (5x5 -> 3x3 dilation 2), else a plain k x k conv.

    Args:
        channels: C, the input (and output) channels.
        kernel_sizes: the k_m of the branches, odd (paper: (3, 5)).
        groups: G, groups of each branch conv (paper: 32, SK[M=2, G=32, r=16] of
            SKNet-50, Table 1); must divide C. Was 1 until issue 15.
        reduction: r of d = max(C / r, L) (paper: 16).
        min_hidden: L, the smallest fuse width d (paper: 32).
        dilate: realise k x k as a dilated 3x3 (paper) or as a plain k x k conv.
        act_layer: activation after each branch and in the fuse (paper: ReLU).
        norm_layer: normalisation after each conv and the fuse (paper: BN).

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, C, H, W).

    Deviations:
        None from the paper; checked against the official Caffe model
        (implus/SKNet, ``models/sknet50.prototxt``): branch convs without bias, each
        followed by BN and ReLU; 5x5 as a 3x3 with dilation 2; the fuse FC
        ``B_fc1`` without bias, then BN and ReLU, d = max(C / 16, 32) (32 for C = 128,
        64 for C = 1024); the select FC ``B_fc2`` without bias, its 2C outputs read as
        (M, C) and softmaxed over M. Until issue 17 the select FC had a bias, which
        neither the paper nor the official model has. timm's ``SelectiveKernel``
        differs: d = C / 16 rounded to a multiple of 8 with no floor L, and by default
        it splits the input channels between the branches (``split_input``);
        ``min_hidden=8`` gives timm's count for C = 128, groups 32,
        ``split_input=False``.

    Example:
        >>> sk = SelectiveKernel(64)
        >>> sk(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        kernel_sizes: Sequence[int] = (3, 5),
        groups: int = 32,
        reduction: int = 16,
        min_hidden: int = 32,
        dilate: bool = True,
        act_layer: LayerSpec = "relu",
        norm_layer: LayerSpec = "batchnorm2d",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        kernel_sizes = tuple(kernel_sizes)
        require(len(kernel_sizes) >= 2, f"SelectiveKernel: kernel_sizes={kernel_sizes} needs >= 2 branches")
        require(all(k >= 1 and k % 2 == 1 for k in kernel_sizes),
                f"SelectiveKernel: kernel_sizes={kernel_sizes} must all be odd")
        require_divides("SelectiveKernel", "groups", groups, "channels", channels)
        require(reduction >= 1, f"SelectiveKernel: reduction={reduction} must be >= 1")
        fk = dict(device=device, dtype=dtype)
        self.channels = channels
        self.kernel_sizes = kernel_sizes
        self.groups = groups
        self.dilate = dilate
        self.hidden = max(channels // reduction, min_hidden)
        branches = []
        for k in kernel_sizes:
            if dilate and k > 3:
                d = (k - 1) // 2  # a 3x3 with dilation d covers k x k
                conv = nn.Conv2d(channels, channels, 3, padding=d, dilation=d, groups=groups,
                                 bias=False, **fk)
            else:
                conv = nn.Conv2d(channels, channels, k, padding=k // 2, groups=groups, bias=False, **fk)
            branches.append(nn.Sequential(conv, create_norm(norm_layer, channels, **fk),
                                          create_act(act_layer, **fk)))
        self.branches = nn.ModuleList(branches)
        self.fuse = nn.Sequential(
            nn.Conv2d(channels, self.hidden, 1, bias=False, **fk),
            create_norm(norm_layer, self.hidden, **fk),
            create_act(act_layer, **fk),
        )
        # A_m z without a bias: the paper's Eq. 5 and the official fc2 (bias_term: false)
        self.select = nn.Conv2d(self.hidden, channels * len(kernel_sizes), 1, bias=False, **fk)
        self.attn_map = AttentionMap("channel")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.channels:
            check_shape(x, "B C H W", name="SelectiveKernel", C=self.channels)  # raises, naming the misfit
        m = self._modules  # stock layers as their ops unless hooked (blockzoo._fastcall)
        # the branch maps U_m kept apart: no (B, M, C, H, W) stack, and the weighted sum below
        # accumulates into one map (the same sums, in the same order, as stacking and summing)
        u = [sequential(branch, x) for branch in m["branches"]]  # M x (B, C, H, W)
        # s = GAP(sum_m U_m); z = act(BN(W s))
        total = u[0]
        for um in u[1:]:
            total = total + um
        z = sequential(m["fuse"], total.mean((2, 3), keepdim=True))  # (B, d, 1, 1)
        logits = call(m["select"], z).view(x.shape[0], len(u), self.channels, 1, 1)  # (B, M, C, 1, 1)
        # a_m = softmax over branches of A_m z; V = sum_m a_m U_m
        a = m["attn_map"](logits.softmax(1))  # (B, M, C, 1, 1)
        out = a[:, 0] * u[0]
        for i in range(1, len(u)):
            out = torch.addcmul(out, a[:, i], u[i])
        return out

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, kernel_sizes={self.kernel_sizes}, groups={self.groups}, "
                f"hidden={self.hidden}, dilate={self.dilate}")
