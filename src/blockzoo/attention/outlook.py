"""Outlook attention (VOLO): attention weights generated from a pixel, applied to its window.

Paper: VOLO: Vision Outlooker for Visual Recognition (Yuan, Hou, Jiang, Feng, Yan;
arXiv 2106.13112, 2021).

Letters: B batch, C channels, H W spatial, K = kernel_size, L window centres,
h heads, d head dim.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require, require_divides
from blockzoo.registry import Example, images, register

__all__ = ["OutlookAttention"]


@register(
    name="outlook_attention",
    family="attention",
    paper="VOLO: Vision Outlooker for Visual Recognition",
    arxiv="2106.13112",
    year=2021,
    input="image",
    example=Example(config=dict(channels=16, num_heads=2, kernel_size=3), inputs=images(),
                    size=(8, 8), out_shape="same", tiny=dict(channels=4, num_heads=1)),
)
class OutlookAttention(nn.Module):
    r"""Outlook attention: each centre pixel predicts a K^2 x K^2 attention over its K x K window.

    Yuan et al., "VOLO: Vision Outlooker for Visual Recognition", arXiv 2106.13112.

    Equation, for a window centred at pixel c (every s-th pixel, s = stride) with pixels
    c + o_m, m = 1..K^2, per head::

        v       = W_v x                                       (1x1 conv)
        A_c     = softmax_n(reshape_{K^2 x K^2}(W_A xbar_c) / sqrt(d))   xbar = avg-pool_s(x)
        Y_c[m]  = sum_n A_c[m, n] v[c + o_n]                  (dense aggregation in the window)
        y_p     = W_o sum_{(c, m): c + o_m = p} Y_c[m]        (fold: sum over the windows covering p)

    No query-key dot product: the weights come from the centre's features alone
    (a linear map to h * K^4 numbers), which is what makes it cheap.

    Args:
        channels: C, input and output channels.
        num_heads: h, attention heads (``channels`` must be divisible by it).
        kernel_size: K, the (odd) window side.
        stride: s, the spacing of window centres (default 1; 2 quarters the attention cost).
        qkv_bias: whether the value projection has a bias.

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W (windows are zero-padded by K // 2;
          with stride s there are ceil(H / s) x ceil(W / s) centres).
        - Output: (B, C, H, W).

    Deviations:
        - The block is the attention layer only (VOLO's Outlooker adds norm, residual, MLP).

    Example:
        >>> attn = OutlookAttention(32, num_heads=4, kernel_size=3)
        >>> attn(torch.randn(2, 32, 7, 9)).shape
        torch.Size([2, 32, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        num_heads: int = 1,
        kernel_size: int = 3,
        stride: int = 1,
        qkv_bias: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require_divides("OutlookAttention", "num_heads", num_heads, "channels", channels)
        require(kernel_size >= 1 and kernel_size % 2 == 1,
                f"OutlookAttention: kernel_size={kernel_size} must be odd and positive")
        require(stride >= 1, f"OutlookAttention: stride={stride} must be >= 1")
        self.channels, self.num_heads = channels, num_heads
        self.kernel_size, self.stride = kernel_size, stride
        self.head_dim = channels // num_heads
        fk = dict(device=device, dtype=dtype)
        self.v = nn.Conv2d(channels, channels, 1, bias=qkv_bias, **fk)
        self.attn = nn.Conv2d(channels, num_heads * kernel_size**4, 1, **fk)
        self.proj = nn.Conv2d(channels, channels, 1, **fk)
        self.attn_map = AttentionMap("weights")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = check_shape(x, "B C H W", name="OutlookAttention", C=self.channels)
        B, H, W = dims["B"], dims["H"], dims["W"]
        h, d, K, s = self.num_heads, self.head_dim, self.kernel_size, self.stride
        p = K // 2
        v = F.unfold(self.v(x), K, padding=p, stride=s)  # (B, C*K*K, L)
        L = v.shape[-1]
        v = v.view(B, h, d, K * K, L).permute(0, 1, 4, 3, 2)  # (B, h, L, K*K, d)
        xbar = F.avg_pool2d(x, s, s, ceil_mode=True) if s > 1 else x  # (B, C, ceil(H/s), ceil(W/s))
        a = self.attn(xbar).view(B, h, K * K, K * K, L)  # (B, h, K*K, K*K, L)
        # A_c = softmax(W_A xbar_c / sqrt(d)), over n (dim 3) on the projection's own layout:
        # a softmax over a short last dim (K*K = 9) is the CPU kernel's slow case (~20x slower
        # than over dim 3 with L contiguous values inside)
        a = (a * d**-0.5).softmax(dim=3).permute(0, 1, 4, 2, 3)  # (B, h, L, K*K, K*K)
        a = self.attn_map(a)
        # Y_c[m] = sum_n A_c[m, n] v[c + o_n]
        y = a @ v  # (B, h, L, K*K, d)
        y = y.permute(0, 1, 4, 3, 2).reshape(B, h * d * K * K, L)  # (B, C*K*K, L)
        # y_p = sum of Y_c[m] over the windows covering p
        y = F.fold(y, (H, W), K, padding=p, stride=s)  # (B, C, H, W)
        return self.proj(y)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, num_heads={self.num_heads}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}")
