"""Dynamic Convolution: each sample's kernel is a softmax-weighted sum of K kernels.

Paper: Dynamic Convolution: Attention over Convolution Kernels (Chen et al.,
arXiv 1912.03458, 2020).

Letters: B batch, C input channels, O output channels, K kernels, k kernel size,
H W spatial, g groups.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo._fastcall import call
from blockzoo.act import LayerSpec, create_act
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

__all__ = ["DynamicConv"]


@register(
    name="dynamic_conv",
    family="conv",
    paper="Dynamic Convolution: Attention over Convolution Kernels",
    arxiv="1912.03458",
    year=2020,
    input="image",
    example=Example(
        config=dict(channels=8, dim_out=16, kernel_size=3, num_kernels=4),
        inputs=images(),
        size=(8, 8),
        out_shape=conv_out_shape,
        tiny=dict(channels=3, dim_out=4, num_kernels=2, temperature=1.0),
    ),
)
class DynamicConv(nn.Module):
    r"""Dynamic convolution: attention over K parallel kernels, aggregated per sample.

    Chen et al., "Dynamic Convolution: Attention over Convolution Kernels", arXiv 1912.03458.

    Equation::

        pi(x) = softmax( W_2 act(W_1 GAP(x)) / tau )          (B, K), sum_k pi_k = 1
        W~(x) = sum_k pi_k(x) W_k,     b~(x) = sum_k pi_k(x) b_k
        y     = W~(x)^T * x + b~(x)                            (one conv per sample)

    A large temperature tau keeps pi near uniform early in training (the paper
    starts at tau = 30 and anneals it to 1 over the first epochs: set
    ``block.temperature`` from the training loop).

    Args:
        channels: C, the input channels.
        dim_out: O, the output channels (default: C).
        kernel_size: k.
        num_kernels: K (paper: 4).
        temperature: tau of the attention softmax.
        reduction: r; the attention's hidden width is max(4, C / r) (paper: r = 4).
        stride, padding, dilation, groups: as in ``nn.Conv2d`` (padding defaults
            to "same" at stride 1).
        bias: whether the K kernels have biases.
        act_layer: the attention's hidden activation (paper: ReLU).

    Shape:
        - Input: (B, C, H, W), C = channels, H, W >= the kernel's reach.
        - Output: (B, O, H', W'), O = dim_out, H' = floor((H + 2p - d (k - 1) - 1) / s) + 1.
        - ``attn_map`` records pi (B, K).

    Deviations:
        The block is the aggregated convolution alone; the paper follows it with
        BN and ReLU, which a caller adds (as with ``nn.Conv2d``).

    Example:
        >>> conv = DynamicConv(16, 32, 3, num_kernels=4)
        >>> conv(torch.randn(2, 16, 9, 7)).shape
        torch.Size([2, 32, 9, 7])
    """

    def __init__(
        self,
        channels: int,
        dim_out: int | None = None,
        kernel_size: int = 3,
        *,
        num_kernels: int = 4,
        temperature: float = 30.0,
        reduction: int = 4,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        act_layer: LayerSpec = "relu",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        dim_out = dim_out or channels
        require(num_kernels >= 1, f"DynamicConv: num_kernels={num_kernels} must be >= 1")
        require(temperature > 0, f"DynamicConv: temperature={temperature} must be > 0")
        require(channels % groups == 0 and dim_out % groups == 0,
                f"DynamicConv: groups={groups} must divide channels={channels} and dim_out={dim_out}")
        self.channels, self.dim_out, self.kernel_size = channels, dim_out, kernel_size
        self.num_kernels, self.temperature = num_kernels, temperature
        self.stride, self.dilation, self.groups = stride, dilation, groups
        self.padding = same_padding(kernel_size, dilation) if padding is None else padding
        fk = dict(device=device, dtype=dtype)
        hidden = max(4, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden, **fk)
        self.act = create_act(act_layer, **fk)
        self.fc2 = nn.Linear(hidden, num_kernels, **fk)
        self.attn_map = AttentionMap("kernel")
        self.weight = nn.Parameter(torch.empty(num_kernels, dim_out, channels // groups,
                                               kernel_size, kernel_size, **fk))
        self.bias = nn.Parameter(torch.empty(num_kernels, dim_out, **fk)) if bias else None
        init_kernel_bank(self.weight, self.bias)
        # GAP(x) is near zero at the start: a zero hidden bias keeps the few hidden
        # units of the attention from all starting dead behind the ReLU.
        nn.init.zeros_(self.fc1.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.channels:
            check_shape(x, "B C H W", name="DynamicConv", C=self.channels)  # raises, naming the misfit
        reach = self.dilation * (self.kernel_size - 1) + 1 - 2 * self.padding
        if x.shape[2] < reach or x.shape[3] < reach:
            raise_small("DynamicConv", x, reach)
        # the attention's stock submodules as functional ops unless hooked (blockzoo._fastcall)
        m = self._modules
        z = call(m["fc2"], call(m["act"], call(m["fc1"], x.mean((2, 3)))))  # (B, K)
        # pi = softmax(z / tau)
        pi = m["attn_map"](torch.softmax(z / self.temperature, dim=-1))  # (B, K)
        # W~ = sum_k pi_k W_k,  b~ = sum_k pi_k b_k
        weight = (pi @ self.weight.flatten(1)).view(-1, *self.weight.shape[1:])  # (B, O, C/g, k, k)
        bias = None if self.bias is None else pi @ self.bias  # (B, O)
        return per_sample_conv(x, weight, bias, stride=self.stride, padding=self.padding,
                               dilation=self.dilation, groups=self.groups)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, dim_out={self.dim_out}, kernel_size={self.kernel_size}, "
            f"num_kernels={self.num_kernels}, temperature={self.temperature}, stride={self.stride}"
        )
