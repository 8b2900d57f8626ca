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

from blockzoo._fastcall import sequential
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
                    out_shape="same", tiny=dict(channels=4, key_groups=2, num_heads=2, min_hidden=4)),
)
class ContextualTransformer(nn.Module):
    r"""CoT block: keys mined by a k x k conv guide a local self-attention over k x k windows.

    Li et al., "Contextual Transformer Networks for Visual Recognition", arXiv 2107.12292.

    Equation, with Q = x, G weight heads, channel c aggregated by head c mod G::

        K_1 = relu(BN(conv_{k x k, groups}(x)))           static context (keys)
        V   = BN(W_v x)                                   1x1 conv
        A   = GN(W_delta relu(BN(W_theta [Q; K_1])))      Eq. (2): (B, G, k*k, H, W), one weight
                                                          per head, window offset and position;
                                                          GroupNorm with one group per head
        K_2(p) = sum_{o in k x k} A(p, o) V(p + o)        Eq. (3): local aggregation
        K_2 = silu(BN(K_2))
        a   = softmax_2(W_2 relu(BN(W_1 GAP(K_2 + K_1))))  split attention (radix 2) per channel
        y   = a_1 K_2 + a_2 K_1

    Args:
        channels: C, the input (and output) channels.
        kernel_size: k, the window side (paper: 3), odd.
        key_groups: groups of the k x k key conv (paper: 4); divides C.
        num_heads: G, the local-attention weight heads; divides C. Default C / 8 (the
            release's ``share_planes = 8``: 8 channels share one weight map) when 8
            divides C, else 1.
        embed_reduction: W_theta maps 2C -> C / embed_reduction (release: 2).
        reduction: the fusion MLP maps C -> max(2C / reduction, min_hidden) -> 2C (release: 4).
        min_hidden: floor of the fusion MLP's hidden width (release: 32).
        act_layer: activation of K_1, W_theta and the fusion MLP (paper: ReLU).
        out_act: activation after the aggregation's BN (release: SiLU).
        norm_layer: normalisation (paper: BN).

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, C, H, W).

    Deviations:
        Eq. (2)-(3) fix only A = [K_1, Q] W_theta W_delta (W_theta with ReLU) and
        K_2 = V (*) A; where the paper is silent we follow the authors' release
        (JDAI-CV/CoTNet ``CotLayer``), whose state-dict keys ours match:
        - A is normalised by a GroupNorm (one group per head over its k*k offsets and
          all positions), not a softmax; W_theta is followed by BN then ReLU.
        - Channel c uses weight head c mod G (the release's aggregation kernel).
        - K_2 passes a BN and SiLU before the fusion; the fusion is the split attention
          of ResNeSt (radix 2) the paper cites, its logits laid out (C, 2) per channel.
        - The concatenation is [Q; K_1] (release order; the paper writes [K_1, Q], a
          permutation of W_theta's input columns).
        - The fusion MLP's first conv has no bias (the release's is cancelled by the BN
          after it), so a release checkpoint loads without ``se.0.bias``.

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
        num_heads: int | None = None,
        embed_reduction: int = 2,
        reduction: int = 4,
        min_hidden: int = 32,
        act_layer: LayerSpec = "relu",
        out_act: LayerSpec = "silu",
        norm_layer: LayerSpec = "batchnorm2d",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        if num_heads is None:  # the release's share_planes = 8 where 8 divides C
            num_heads = channels // 8 if channels % 8 == 0 else 1
        require(kernel_size % 2 == 1, f"ContextualTransformer: kernel_size={kernel_size} must be odd")
        require_divides("ContextualTransformer", "key_groups", key_groups, "channels", channels)
        require_divides("ContextualTransformer", "num_heads", num_heads, "channels", channels)
        for name, v in (("embed_reduction", embed_reduction), ("reduction", reduction),
                        ("min_hidden", min_hidden)):
            require(v >= 1, f"ContextualTransformer: {name}={v} must be >= 1")
        fk = dict(device=device, dtype=dtype)
        kk = kernel_size * kernel_size
        self.channels, self.kernel_size, self.num_heads = channels, kernel_size, num_heads
        self.key_embed = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=key_groups,
                      bias=False, **fk),
            create_norm(norm_layer, channels, **fk), create_act(act_layer, **fk),
        )
        mid = max(1, channels // embed_reduction)
        self.embed = nn.Sequential(  # W_theta, W_delta, then one GroupNorm group per head
            nn.Conv2d(2 * channels, mid, 1, bias=False, **fk),
            create_norm(norm_layer, mid, **fk), create_act(act_layer, **fk),
            nn.Conv2d(mid, num_heads * kk, 1, **fk),
            nn.GroupNorm(num_heads, num_heads * kk, **fk),
        )
        self.conv1x1 = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False, **fk),  # W_v
                                     create_norm(norm_layer, channels, **fk))
        self.bn = create_norm(norm_layer, channels, **fk)
        self.act = create_act(out_act, **fk)
        hidden = max(2 * channels // reduction, min_hidden)
        self.se = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False, **fk),
            create_norm(norm_layer, hidden, **fk), create_act(act_layer, **fk),
            nn.Conv2d(hidden, 2 * channels, 1, **fk),
        )
        # A after its GroupNorm: local aggregation weights, not a distribution
        self.attn_map = AttentionMap("local")
        self.fuse_map = AttentionMap("channel")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = check_shape(x, "B C H W", name="ContextualTransformer", C=self.channels)
        b, h, w = dims["B"], dims["H"], dims["W"]
        c, k, g = self.channels, self.kernel_size, self.num_heads
        k1 = sequential(self.key_embed, x)  # (B, C, H, W)
        # A = GN(W_delta W_theta [Q; K_1]), one weight per head, offset and position
        a = sequential(self.embed, torch.cat([x, k1], 1)).view(b, g, k * k, h, w)
        a = self.attn_map(a)  # (B, G, K, H, W)
        v = sequential(self.conv1x1, x)  # (B, C, H, W)
        # channel j G + i of the window unfold is aggregated by head i
        vw = F.unfold(v, k, padding=k // 2).view(b, c // g, g, k * k, h, w)  # (B, C/G, G, K, H, W)
        # K_2(p) = sum_o A(p, o) V(p + o)
        k2 = (a.unsqueeze(1) * vw).sum(3).reshape(b, c, h, w)  # (B, C, H, W)
        k2 = self.act(self.bn(k2))
        # split attention over {K_2, K_1}: logits laid out (C, 2), softmax over the pair
        s = sequential(self.se, (k1 + k2).mean((2, 3), keepdim=True)).view(b, c, 2)  # (B, C, 2)
        f = self.fuse_map(s.softmax(2).transpose(1, 2)[..., None, None])  # (B, 2, C, 1, 1)
        return f[:, 0] * k2 + f[:, 1] * k1

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}, num_heads={self.num_heads}"
