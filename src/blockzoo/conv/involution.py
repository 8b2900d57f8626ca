"""Involution: a kernel generated at every position from that position's features.

Paper: Involution: Inverting the Inherence of Convolution for Visual Recognition
(Li et al., arXiv 2103.06255, 2021).

Letters: B batch, C channels, G kernel groups, C/G channels per group, K kernel
size, H W spatial, s stride, H' W' the output size.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo._fastcall import call, invoke
from blockzoo.act import LayerSpec
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require
from blockzoo.conv._functional import conv_out_shape
from blockzoo.conv.conv_bn_act import ConvBnAct
from blockzoo.registry import Example, images, register

__all__ = ["Involution"]


# Above this many elements of the unfolded (B, C K K, H' W') tensor the per-tap loop is used.
_UNFOLD_MAX = 1 << 17

@register(
    name="involution",
    family="conv",
    paper="Involution: Inverting the Inherence of Convolution for Visual Recognition",
    arxiv="2103.06255",
    year=2021,
    input="image",
    example=Example(
        config=dict(channels=16, kernel_size=3, group_channels=4, reduction=4),
        inputs=images(),
        size=(8, 8),
        # odd k, padding k // 2, taps every s-th position: H' = ceil(H / s), as a conv's
        out_shape=conv_out_shape,
        tiny=dict(channels=4, group_channels=2, reduction=2),
    ),
)
class Involution(nn.Module):
    r"""Involution: spatially specific, channel-shared kernels generated from the input.

    Li et al., "Involution: Inverting the Inherence of Convolution", arXiv 2103.06255.

    Equation, at output position (i, j), for channel c of group g = c // (C / G)::

        H_{i,j}      = phi(X_{Psi_{i,j}})  = W_1 act(BN(W_0 pool_s(X)_{i,j}))       (K*K*G values)
        Y_{i,j,c}    = sum_{(u,v) in K x K} H_{i,j, u, v, g} X_{i s + u - K//2, j s + v - K//2, c}

    W_0: 1x1 conv C -> C/r, W_1: 1x1 conv C/r -> K K G. The kernel is generated
    once per output position and shared by the C/G channels of each group — the
    inverse of a convolution (shared over space, specific to channels).

    Args:
        channels: C, the input and output channels.
        kernel_size: K, odd (paper: 7).
        stride: s; the kernel generator reads the s x s average-pooled input.
        group_channels: C/G, channels sharing one kernel (paper: 16); must divide C.
        reduction: r, the bottleneck ratio of the kernel generator (paper: 4).
        norm_layer, act_layer: inside the kernel generator (paper: BN, ReLU).

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, C, ceil(H / s), ceil(W / s)).
        - ``attn_map`` records the generated kernels (B, G K K, H', W').

    Deviations:
        The stride's average pool uses ``ceil_mode`` so that any H, W works (the
        paper's pool needs H, W divisible by s); for divisible sizes it is the same.

    Example:
        >>> inv = Involution(32, 7, group_channels=16)
        >>> inv(torch.randn(2, 32, 9, 10)).shape
        torch.Size([2, 32, 9, 10])
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 7,
        *,
        stride: int = 1,
        group_channels: int = 16,
        reduction: int = 4,
        norm_layer: LayerSpec = "batchnorm",
        act_layer: LayerSpec = "relu",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(channels % group_channels == 0,
                f"Involution: group_channels={group_channels} must divide channels={channels}")
        require(kernel_size % 2 == 1, f"Involution: kernel_size={kernel_size} must be odd")
        require(reduction >= 1 and stride >= 1,
                f"Involution: reduction={reduction} and stride={stride} must be >= 1")
        self.channels, self.kernel_size, self.stride = channels, kernel_size, stride
        self.group_channels = group_channels
        self.groups = channels // group_channels
        fk = dict(device=device, dtype=dtype)
        self.pool = nn.AvgPool2d(stride, stride, ceil_mode=True) if stride > 1 else nn.Identity()
        self.reduce = ConvBnAct(channels, max(1, channels // reduction), 1,
                                norm_layer=norm_layer, act_layer=act_layer, **fk)
        self.span = nn.Conv2d(max(1, channels // reduction), kernel_size**2 * self.groups, 1, **fk)
        self.attn_map = AttentionMap("kernel")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.channels:
            check_shape(x, "B C H W", name="Involution", C=self.channels)  # raises, naming the misfit
        b, k, g, s = x.shape[0], self.kernel_size, self.groups, self.stride
        m = self._modules  # stock modules as their ops unless hooked (blockzoo._fastcall)
        # H_{i,j} = W_1 act(BN(W_0 pool(X)))
        kernel = m["attn_map"](call(m["span"], invoke(m["reduce"], call(m["pool"], x))))  # (B, G K K, H', W')
        h, w = kernel.shape[-2:]
        if k % 2 and not torch.compiler.is_compiling() and x.numel() * k * k <= _UNFOLD_MAX:
            # A small map: the K K taps below are 2 K K small ops, whose per-call cost is most
            # of the time there; one unfold (B, C K K, H' W') and one product-sum do it in four
            # ops (example config x8: 131 against 141 us, 9 alternating passes; at 8x64x32x32
            # the taps are ~10x faster than the unfold, which holds K K copies of the input).
            # the K x K neighbourhoods as a strided view of the padded map, no copy (F.unfold's
            # im2col copy cost most of the time: 78 of 100 us at the example config x8)
            u = F.pad(x, (k // 2,) * 4).unfold(2, k, s).unfold(3, k, s)  # (B, C, H', W', K, K)
            u = u.permute(0, 1, 4, 5, 2, 3).view(b, g, self.group_channels, k, k, h, w)
            return (kernel.view(b, g, 1, k, k, h, w) * u).sum((3, 4)).view(b, self.channels, h, w)
        kernel = kernel.reshape(b, g, k * k, 1, h, w)  # (B, G, K K, 1, H', W')
        xp = F.pad(x, (k // 2,) * 4)  # (B, C, H + K - 1, W + K - 1)
        xp = xp.reshape(b, g, self.group_channels, *xp.shape[-2:])  # (B, G, C/G, H + K - 1, W + K - 1)
        # Y_{i,j,c} = sum_{u,v} H_{i,j,u,v,g} X_{i s + u - K//2, j s + v - K//2, c}: one
        # multiply-add per kernel tap (u, v), each over all positions at once (an unfold
        # to (B, C K K, H' W') was 12x slower on CPU and holds K K copies of the input).
        out = None
        for t in range(k * k):
            u, v = divmod(t, k)
            tap = xp[..., u : u + s * (h - 1) + 1 : s, v : v + s * (w - 1) + 1 : s]  # (B, G, C/G, H', W')
            out = tap * kernel[:, :, t] if out is None else torch.addcmul(out, tap, kernel[:, :, t])
        return out.reshape(b, self.channels, h, w)  # (B, C, H', W')

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"groups={self.groups}"
        )
