"""Contextual Transformer (CoT): static context from a k x k conv, dynamic context from local attention.

Paper: Contextual Transformer Networks for Visual Recognition (Li, arXiv 2107.12292, 2021).

Letters: B batch, C channels, H W spatial, G attention heads, k the window side,
K = k * k window positions.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo.act import LayerSpec, create_act, create_norm
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require, require_divides
from blockzoo.registry import Example, images, register

__all__ = ["ContextualTransformer"]


@register(
    name="cot",
    family="attention",
    paper="Contextual Transformer Networks for Visual Recognition",
    arxiv="2107.12292",
    year=2021,
    input="image",
    example=Example(config=dict(channels=16), inputs=images(), size=(8, 8),
                    out_shape="same", tiny=dict(channels=4, key_groups=2, num_heads=2, reduction=2)),
)
class ContextualTransformer(nn.Module):
    r"""CoT block: keys mined by a k x k conv guide a local self-attention over k x k windows.

    Li et al., "Contextual Transformer Networks for Visual Recognition", arXiv 2107.12292.

    Equation, with Q = x::

        K_1 = act(BN(conv_{k x k, groups}(x)))            static context (keys)
        V   = BN(W_v x)                                   1x1 conv
        A   = W_delta act(BN(W_theta [K_1; Q]))           (B, G, k*k, H, W): per position and
                                                          head, one weight per window offset
        A   = softmax over the k*k offsets of A
        K_2(p) = sum_{o in k x k} A(p, o) V(p + o)        dynamic context (local aggregation,
                                                          each head's weights shared by its C/G channels)
        a   = softmax_2(W_2 act(BN(W_1 GAP(K_1 + K_2))))  fusion weights per channel
        y   = a_1 K_1 + a_2 K_2

    Args:
        channels: C, the input (and output) channels.
        kernel_size: k, the window side (paper: 3), odd.
        key_groups: groups of the k x k key conv (paper: 4); divides C.
        num_heads: G, attention heads; divides C.
        reduction: W_theta maps 2C -> 2C / reduction (paper's code: 4), and the fusion
            MLP C -> max(1, C / reduction) -> 2C.
        act_layer: activation (paper: ReLU).
        norm_layer: normalisation (paper: BN).

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, C, H, W).

    Deviations:
        The paper says only that K_1 and K_2 are "fused"; we fuse them by a softmax
        attention over the two (as in the authors' release). The release normalises A
        with GroupNorm; we use a softmax over the window so that K_2 is an
        attention-weighted average of the values.

    Example:
        >>> cot = ContextualTransformer(64)
        >>> cot(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int = 3,
        key_groups: int = 4,
        num_heads: int = 4,
        reduction: int = 4,
        act_layer: LayerSpec = "relu",
        norm_layer: LayerSpec = "batchnorm2d",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(kernel_size % 2 == 1, f"ContextualTransformer: kernel_size={kernel_size} must be odd")
        require_divides("ContextualTransformer", "key_groups", key_groups, "channels", channels)
        require_divides("ContextualTransformer", "num_heads", num_heads, "channels", channels)
        require(reduction >= 1, f"ContextualTransformer: reduction={reduction} must be >= 1")
        fk = dict(device=device, dtype=dtype)
        self.channels, self.kernel_size, self.num_heads = channels, kernel_size, num_heads
        self.key_embed = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=key_groups,
                      bias=False, **fk),
            create_norm(norm_layer, channels, **fk), create_act(act_layer, **fk),
        )
        self.value_embed = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False, **fk),
                                         create_norm(norm_layer, channels, **fk))
        mid = max(1, 2 * channels // reduction)
        self.attention_embed = nn.Sequential(
            nn.Conv2d(2 * channels, mid, 1, bias=False, **fk),
            create_norm(norm_layer, mid, **fk), create_act(act_layer, **fk),
            nn.Conv2d(mid, num_heads * kernel_size * kernel_size, 1, **fk),
        )
        hidden = max(1, channels // reduction)
        self.fuse = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False, **fk),
            create_norm(norm_layer, hidden, **fk), create_act(act_layer, **fk),
            nn.Conv2d(hidden, 2 * channels, 1, **fk),
        )
        self.attn_map = AttentionMap("weights")
        self.fuse_map = AttentionMap("channel")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = check_shape(x, "B C H W", name="ContextualTransformer", C=self.channels)
        b, h, w = dims["B"], dims["H"], dims["W"]
        k, g = self.kernel_size, self.num_heads
        k1 = self.key_embed(x)  # (B, C, H, W)
        v = self.value_embed(x)  # (B, C, H, W)
        # A = W_delta W_theta [K_1; Q], softmax over the k*k window offsets
        a = self.attention_embed(torch.cat([k1, x], 1)).view(b, g, 1, k * k, h, w)  # (B, G, 1, K, H, W)
        a = self.attn_map(a.softmax(3))
        vw = F.unfold(v, k, padding=k // 2)  # (B, C K, N), channel-major
        vw = vw.view(b, g, self.channels // g, k * k, h, w)  # (B, G, C/G, K, H, W)
        # K_2(p) = sum_o A(p, o) V(p + o)
        k2 = (a * vw).sum(3).reshape(b, self.channels, h, w)  # (B, C, H, W)
        # fusion: softmax over {K_1, K_2} per channel
        s = self.fuse((k1 + k2).mean((2, 3), keepdim=True)).view(b, 2, self.channels, 1, 1)  # (B, 2, C, 1, 1)
        f = self.fuse_map(s.softmax(1))
        return f[:, 0] * k1 + f[:, 1] * k2

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}, num_heads={self.num_heads}"
