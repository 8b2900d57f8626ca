"""CondConv: each sample's kernel is a sigmoid-routed mixture of expert kernels.

Paper: CondConv: Conditionally Parameterized Convolutions for Efficient Inference
(Yang, Bender, Le, Ngiam, arXiv 1904.04971, 2019).

Letters: B batch, C input channels, O output channels, E experts, k kernel size,
H W spatial, g groups.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo._fastcall import call, own
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require
from blockzoo.conv._functional import (
    conv_out_shape,
    init_kernel_bank,
    per_sample_conv,
    raise_small,
    same_padding,
)
from blockzoo.registry import Example, images, register

__all__ = ["CondConv"]


# From this many multiply-adds per sample (about H' W' O C/g k^2) the per-sample kernels run on
# CPU as B ordinary convolutions instead of one of B groups (8 x 64 x 32 x 32, 3x3, one core,
# interleaved medians: 8.4-15.4 vs 9.1-16.4 ms, the gap widest on a loaded machine; at 8 x 8 x 8
# the grouped one wins, 62 vs 87 us).
_LOOP_MIN_MACS = 1 << 22


@register(
    name="condconv",
    family="conv",
    paper="CondConv: Conditionally Parameterized Convolutions for Efficient Inference",
    arxiv="1904.04971",
    year=2019,
    input="image",
    example=Example(
        config=dict(channels=8, dim_out=16, kernel_size=3, num_experts=4),
        inputs=images(),
        size=(8, 8),
        out_shape=conv_out_shape,
        tiny=dict(channels=3, dim_out=4, num_experts=2),
    ),
)
class CondConv(nn.Module):
    r"""Conditionally parameterised convolution: a per-sample mixture of expert kernels.

    Yang et al., "CondConv: Conditionally Parameterized Convolutions", arXiv 1904.04971.

    Equation::

        r(x) = sigmoid(R GAP(x))                        (B, E), each weight in (0, 1) independently
        y    = act((r_1 W_1 + ... + r_E W_E) * x)       one conv per sample

    Unlike Dynamic Convolution's softmax, the routing weights are independent
    sigmoids (they need not sum to one). Mixing the kernels first costs one
    convolution per sample instead of E.

    Args:
        channels: C, the input channels.
        dim_out: O, the output channels (default: C).
        kernel_size: k.
        num_experts: E (paper: 8 in its main results).
        stride, padding, dilation, groups: as in ``nn.Conv2d`` (padding defaults
            to "same" at stride 1).
        bias: whether each expert kernel has a bias (mixed with the same weights).
        dropout: dropout on the routing input (the paper uses it when E is large).

    Shape:
        - Input: (B, C, H, W), C = channels, H, W >= the kernel's reach.
        - Output: (B, O, H', W'), O = dim_out, H' = floor((H + 2p - d (k - 1) - 1) / s) + 1.
        - ``attn_map`` records the routing weights r (B, E).

    Deviations:
        The block is the CondConv layer alone (act = identity above); the paper's
        networks follow it with BN and an activation, which a caller adds.

    Example:
        >>> conv = CondConv(16, 32, 3, num_experts=8)
        >>> conv(torch.randn(2, 16, 9, 7)).shape
        torch.Size([2, 32, 9, 7])
    """

    def __init__(
        self,
        channels: int,
        dim_out: int | None = None,
        kernel_size: int = 3,
        *,
        num_experts: int = 8,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        dropout: float = 0.0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        dim_out = dim_out or channels
        require(num_experts >= 1, f"CondConv: num_experts={num_experts} must be >= 1")
        require(channels % groups == 0 and dim_out % groups == 0,
                f"CondConv: groups={groups} must divide channels={channels} and dim_out={dim_out}")
        self.channels, self.dim_out, self.kernel_size = channels, dim_out, kernel_size
        self.num_experts, self.stride, self.dilation, self.groups = num_experts, stride, dilation, groups
        self.padding = same_padding(kernel_size, dilation) if padding is None else padding
        fk = dict(device=device, dtype=dtype)
        self.dropout = nn.Dropout(dropout)
        self.route = nn.Linear(channels, num_experts, **fk)
        self.attn_map = AttentionMap("routing")
        self.weight = nn.Parameter(torch.empty(num_experts, dim_out, channels // groups,
                                               kernel_size, kernel_size, **fk))
        self.bias = nn.Parameter(torch.empty(num_experts, dim_out, **fk)) if bias else None
        init_kernel_bank(self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.channels:
            check_shape(x, "B C H W", name="CondConv", C=self.channels)  # raises, naming the misfit
        reach = self.dilation * (self.kernel_size - 1) + 1 - 2 * self.padding
        if x.shape[2] < reach or x.shape[3] < reach:
            raise_small("CondConv", x, reach)
        mods = self._modules
        # r = sigmoid(R GAP(x))
        r = torch.sigmoid(call(mods["route"], call(mods["dropout"], x.mean((2, 3)))))
        r = mods["attn_map"](r)  # (B, E)
        # W(x) = sum_e r_e W_e
        bank, bank_bias = own(self, "weight"), own(self, "bias")
        weight = (r @ bank.flatten(1)).view(-1, *bank.shape[1:])  # (B, O, C/g, k, k)
        bias = None if bank_bias is None else r @ bank_bias  # (B, O)
        if not (torch.compiler.is_compiling() or torch.jit.is_tracing()):
            b, o, cg, kh, kw = weight.shape
            macs = o * cg * kh * kw * x.shape[2] * x.shape[3]  # per sample, times stride^2
            if b > 1 and x.is_cpu and macs >= _LOOP_MIN_MACS * self.stride ** 2:
                # large maps on CPU: B ordinary convolutions beat one convolution of B groups
                return torch.cat([F.conv2d(x[i:i + 1], weight[i], None if bias is None else bias[i],
                                           self.stride, self.padding, self.dilation, self.groups)
                                  for i in range(b)])
        return per_sample_conv(x, weight, bias, stride=self.stride, padding=self.padding,
                               dilation=self.dilation, groups=self.groups)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, dim_out={self.dim_out}, kernel_size={self.kernel_size}, "
            f"num_experts={self.num_experts}, stride={self.stride}"
        )
