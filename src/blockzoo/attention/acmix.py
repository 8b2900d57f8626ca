"""ACmix: self-attention and convolution sharing the same 1x1 projections.

Paper: On the Integration of Self-Attention and Convolution (Pan, Ge, Lu, Song, Chen,
Huang, Huang; arXiv 2111.14556, 2021).

Letters: B batch, C channels, H W spatial, N = H*W, h heads, d = C / h head dim,
K kernel sizes (K_a attention window, K_c convolution).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo.attention._attend import key_mask
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require, require_divides
from blockzoo.registry import Example, images, register

__all__ = ["ACmix"]


@register(
    name="acmix",
    family="attention",
    paper="On the Integration of Self-Attention and Convolution",
    arxiv="2111.14556",
    year=2021,
    input="image",
    example=Example(config=dict(channels=16, num_heads=2, kernel_att=3, kernel_conv=3),
                    inputs=images(), size=(8, 8), out_shape="same",
                    tiny=dict(channels=4, num_heads=2)),
)
class ACmix(nn.Module):
    r"""ACmix: one set of 1x1 projections feeding a local-attention path and a shift-conv path.

    Pan et al., "On the Integration of Self-Attention and Convolution", arXiv 2111.14556.

    Equation (stage I is shared; stage II has two paths)::

        q, k, v = W_q x, W_k x, W_v x                          (1x1 convs, h heads of size d)
        attention path, window Omega(p) of K_a x K_a pixels around p:
            F_att(p) = sum_{t in Omega(p)} softmax_t(q_p . k_t / sqrt(d) + r[t - p]) v_t
        convolution path (per feature index of d, over the 3h projected maps):
            f_m      = sum_{j=1..3h} w_{m,j} [q; k; v]_j        m = 1..K_c^2   (light FC, no bias)
            F_conv   = sum_m shift_{o_m}(f_m)                   (grouped K_c x K_c conv,
                                                                 initialised to exact shifts)
        y = alpha * F_att + beta * F_conv                      (alpha, beta learned, start 0.5)

    Args:
        channels: C, input and output channels.
        num_heads: h, attention heads (``channels`` must be divisible by it).
        kernel_att: K_a, the attention window side (odd; paper: 7).
        kernel_conv: K_c, the convolution kernel side (odd; paper: 3).
        qkv_bias: whether the shared 1x1 projections have biases.

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, C, H, W).

    Deviations:
        - Position: a learned relative bias r[t - p] per head and window offset, instead
          of the paper's encoding from a 1x1 conv of absolute coordinates normalised to
          [-1, 1] (which would tie the block to the input size).
        - Window pixels outside the image are masked instead of reflection-padded.
        - The local attention is computed elementwise in the unfold layout, not through
          SDPA: with one query per window a fused kernel has nothing to fuse, and the
          (B, h, N, K_a^2, d) layout SDPA needs costs two transposing copies of the
          unfolded keys and values (3-4x slower forward+backward on CPU).
        - Attention weights are recorded as (B, h, K_a^2, N): window offset, then pixel.
        - Where the paper is silent we follow the authors' release (LeapLabTHU/ACmix): the
          light fully-connected layer has no bias, the grouped conv has one, and alpha,
          beta start at 0.5 each.

    Example:
        >>> m = ACmix(32, num_heads=4)
        >>> m(torch.randn(2, 32, 7, 9)).shape
        torch.Size([2, 32, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        num_heads: int = 4,
        kernel_att: int = 7,
        kernel_conv: int = 3,
        qkv_bias: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require_divides("ACmix", "num_heads", num_heads, "channels", channels)
        for name, k in (("kernel_att", kernel_att), ("kernel_conv", kernel_conv)):
            require(k >= 1 and k % 2 == 1, f"ACmix: {name}={k} must be odd and positive")
        self.channels, self.num_heads, self.head_dim = channels, num_heads, channels // num_heads
        self.kernel_att, self.kernel_conv = kernel_att, kernel_conv
        fk = dict(device=device, dtype=dtype)
        self.q = nn.Conv2d(channels, channels, 1, bias=qkv_bias, **fk)
        self.k = nn.Conv2d(channels, channels, 1, bias=qkv_bias, **fk)
        self.v = nn.Conv2d(channels, channels, 1, bias=qkv_bias, **fk)
        self.rel_bias = nn.Parameter(torch.zeros(num_heads, kernel_att * kernel_att, **fk))
        kc2 = kernel_conv * kernel_conv
        self.fc = nn.Conv2d(3 * num_heads, kc2, 1, bias=False, **fk)
        self.dep_conv = nn.Conv2d(kc2 * self.head_dim, channels, kernel_conv, padding=kernel_conv // 2,
                                  groups=self.head_dim, **fk)
        self.alpha = nn.Parameter(torch.full((1,), 0.5, **fk))
        self.beta = nn.Parameter(torch.full((1,), 0.5, **fk))
        self.attn_map = AttentionMap("weights")
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.rel_bias, std=0.02)
        # the two paths start equally weighted, as in the authors' release
        self.alpha.fill_(0.5)
        self.beta.fill_(0.5)
        # the grouped conv starts as the sum of the K_c^2 shifts: map m shifted by offset o_m
        kc = self.kernel_conv
        shift = torch.zeros(kc * kc, kc, kc)
        m = torch.arange(kc * kc)
        shift[m, m // kc, m % kc] = 1.0
        self.dep_conv.weight.copy_(shift.repeat(self.channels, 1, 1, 1))
        self.dep_conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = check_shape(x, "B C H W", name="ACmix", C=self.channels)
        B, H, W = dims["B"], dims["H"], dims["W"]
        h, d, Ka = self.num_heads, self.head_dim, self.kernel_att
        q, k, v = self.q(x), self.k(x), self.v(x)  # (B, C, H, W) each

        # attention path: one query per pixel against its K_a x K_a window, kept in the
        # unfold layout (no transposing copies of the K_a^2-times larger k and v)
        qa = q.view(B, h, d, 1, H * W) * d**-0.5  # (B, h, d, 1, N)
        ku = F.unfold(k, Ka, padding=Ka // 2).view(B, h, d, Ka * Ka, H * W)  # (B, h, d, K_a^2, N)
        vu = F.unfold(v, Ka, padding=Ka // 2).view(B, h, d, Ka * Ka, H * W)  # (B, h, d, K_a^2, N)
        valid = F.unfold(x.new_ones(1, 1, H, W), Ka, padding=Ka // 2)[0] > 0.5  # (K_a^2, N)
        # A(p, t) = softmax_t(q_p . k_t / sqrt(d) + r[t - p]), outside pixels masked
        logits = (qa * ku).sum(2) + self.rel_bias[:, :, None] + key_mask(valid, x.dtype)  # (B, h, K_a^2, N)
        a = self.attn_map(logits.softmax(dim=2))
        # F_att(p) = sum_t A(p, t) v_t
        f_att = (a[:, :, None] * vu).sum(3).view(B, h * d, H, W)  # (B, C, H, W)

        # convolution path: f_m = sum_j w_{m,j} [q; k; v]_j, per feature index of d
        qkv = torch.stack([q, k, v], 1).view(B, 3 * h, d, H * W)  # (B, 3h, d, N)
        f = self.fc(qkv)  # (B, K_c^2, d, N)
        f = f.transpose(1, 2).reshape(B, d * self.kernel_conv**2, H, W)  # (B, d*K_c^2, H, W)
        # F_conv = sum_m shift_{o_m}(f_m)
        f_conv = self.dep_conv(f)  # (B, C, H, W)

        # y = alpha F_att + beta F_conv
        return self.alpha * f_att + self.beta * f_conv

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, num_heads={self.num_heads}, "
                f"kernel_att={self.kernel_att}, kernel_conv={self.kernel_conv}")
