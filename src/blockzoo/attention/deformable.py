"""Deformable attention (DAT): keys and values sampled at learned, query-dependent offsets.

Paper: Vision Transformer with Deformable Attention (Xia, Pan, Song, Li, Huang;
arXiv 2201.00520, 2022).

Letters: B batch, C channels, H W spatial, N = H*W queries, r stride of the reference
grid, Hk = ceil(H / r), Wk = ceil(W / r), M = Hk*Wk sampled keys, G offset groups,
h heads, d head dim.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo._fastcall import call
from blockzoo.attention._attend import attend
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require, require_divides
from blockzoo.registry import Example, images, register

__all__ = ["DeformableAttention"]


class _ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


@register(
    name="deformable_attention",
    family="attention",
    paper="Vision Transformer with Deformable Attention",
    arxiv="2201.00520",
    year=2022,
    input="image",
    example=Example(config=dict(channels=16, num_heads=2, num_groups=2, stride=2),
                    inputs=images(), size=(8, 8), out_shape="same",
                    tiny=dict(channels=4, num_heads=2, num_groups=1)),
)
class DeformableAttention(nn.Module):
    r"""Deformable multi-head attention: every query attends to M keys sampled at shifted points.

    Xia et al., "Vision Transformer with Deformable Attention", arXiv 2201.00520.

    Equation, per offset group (which shares sample points among its heads)::

        q       = W_q x                                               (1x1 conv)
        p       = reference grid: centres of the r x r cells, Hk x Wk points (pixels)
        dp      = s * r * tanh(theta_offset(q))                       (pixels; |dp| <= s r)
        x~      = phi(x; p + dp)                                      bilinear sampling
        k, v    = W_k x~, W_v x~
        y_i     = W_o sum_j softmax_j(q_i . k_j / sqrt(d) + B(pos_i - (p + dp)_j)) v_j

    theta_offset is a depthwise k x k conv with stride r, LayerNorm, GELU and a 1x1 conv
    to 2 channels; B is the relative position bias at the continuous displacement
    between the query pixel and the sampled point, read from a learned table of
    (2R + 1) x (2R + 1) entries per head by bilinear interpolation (as in DAT).

    Args:
        channels: C, input and output channels.
        num_heads: h, attention heads.
        num_groups: G, offset groups (each samples its own points; must divide h).
        stride: r, the reference grid's spacing in pixels (M = ceil(H/r) ceil(W/r) keys).
        offset_kernel_size: k, the offset network's depthwise kernel side (odd).
        offset_range: s, the largest offset, in reference cells (default 2).
        pos_bias: whether to add the relative position bias B.
        pos_range: R, the displacement (pixels, per axis) the bias table covers; beyond
            it the bias of the table's edge applies.

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W (the reference grid has
          ceil(H / r) x ceil(W / r) points; a point past the last pixel is clamped to it).
        - Output: (B, C, H, W).

    Deviations:
        - Offsets are bounded in pixels (s * r), not as a fraction of the normalised
          grid, so that the bound does not depend on the input size.
        - The bias table spans a fixed displacement range R and clamps beyond it,
          where DAT sizes it (2H - 1) x (2W - 1) by the feature map, which would fix the
          input size.
        - The block is the attention layer only (no norm, residual or MLP around it).
        - W_k has no bias (DAT's proj_k has one): it adds q_i . b / sqrt(d) to the logit
          of every sampled key j alike, which softmax_j cancels, so it cannot change the output.

    Example:
        >>> attn = DeformableAttention(32, num_heads=4, num_groups=2, stride=2)
        >>> attn(torch.randn(2, 32, 7, 9)).shape
        torch.Size([2, 32, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        num_heads: int = 4,
        num_groups: int = 1,
        stride: int = 2,
        offset_kernel_size: int = 5,
        offset_range: float = 2.0,
        pos_bias: bool = True,
        pos_range: int = 16,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        head_dim = require_divides("DeformableAttention", "num_heads", num_heads, "channels", channels)
        require_divides("DeformableAttention", "num_groups", num_groups, "num_heads", num_heads)
        require(stride >= 1, f"DeformableAttention: stride={stride} must be >= 1")
        require(offset_kernel_size % 2 == 1,
                f"DeformableAttention: offset_kernel_size={offset_kernel_size} must be odd")
        require(offset_range > 0, f"DeformableAttention: offset_range={offset_range} must be > 0")
        require(pos_range >= 1, f"DeformableAttention: pos_range={pos_range} must be >= 1")
        self.channels, self.num_heads, self.num_groups = channels, num_heads, num_groups
        self.head_dim, self.group_channels = head_dim, channels // num_groups
        self.stride, self.offset_range = stride, offset_range
        fk = dict(device=device, dtype=dtype)
        gc = self.group_channels
        self.q = nn.Conv2d(channels, channels, 1, **fk)
        self.k = nn.Conv2d(channels, channels, 1, bias=False, **fk)  # softmax_j cancels a bias
        self.v = nn.Conv2d(channels, channels, 1, **fk)
        self.proj = nn.Conv2d(channels, channels, 1, **fk)
        self.offset = nn.Sequential(
            nn.Conv2d(gc, gc, offset_kernel_size, stride, offset_kernel_size // 2, groups=gc, **fk),
            _ChannelLayerNorm(gc, **fk),
            nn.GELU(),
            nn.Conv2d(gc, 2, 1, bias=False, **fk),
        )
        self.pos_range = pos_range
        if pos_bias:
            self.rpe_table = nn.Parameter(torch.empty(num_heads, 2 * pos_range + 1, 2 * pos_range + 1, **fk))
        else:
            self.register_parameter("rpe_table", None)
        self.attn_map = AttentionMap("weights")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.rpe_table is not None:
            nn.init.trunc_normal_(self.rpe_table, std=0.02)

    def reference_points(self, H: int, W: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Centres of the r x r cells in pixels, (Hk, Wk, 2) as (row, col), clamped to the image."""
        r = self.stride
        rows = (torch.arange(0, H, r, device=device, dtype=dtype) + (r - 1) / 2).clamp(max=H - 1)
        cols = (torch.arange(0, W, r, device=device, dtype=dtype) + (r - 1) / 2).clamp(max=W - 1)
        return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), -1)  # (Hk, Wk, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.channels:
            check_shape(x, "B C H W", name="DeformableAttention", C=self.channels)  # raises
        B, _, H, W = x.shape
        G, gc, h, d = self.num_groups, self.group_channels, self.num_heads, self.head_dim
        mods = self._modules  # stock convs as their ops unless hooked (blockzoo._fastcall)
        q = call(mods["q"], x)  # (B, C, H, W)
        # dp = s r tanh(theta_offset(q)), in pixels, (row, col)
        dp = self.offset(q.reshape(B * G, gc, H, W))  # (B*G, 2, Hk, Wk)
        Hk, Wk = dp.shape[-2:]
        dp = self.offset_range * self.stride * dp.tanh().permute(0, 2, 3, 1)  # (B*G, Hk, Wk, 2)
        pos = self.reference_points(H, W, x.device, x.dtype) + dp  # (B*G, Hk, Wk, 2)
        # x~ = phi(x; p + dp): grid_sample wants (col, row) normalised to [-1, 1] (pixel centres)
        size = torch.tensor([H, W], device=x.device, dtype=x.dtype)
        grid = ((2 * pos + 1) / size - 1).flip(-1)  # (B*G, Hk, Wk, 2)
        xs = F.grid_sample(x.reshape(B * G, gc, H, W), grid, mode="bilinear", padding_mode="zeros",
                           align_corners=False)  # (B*G, C/G, Hk, Wk)
        xs = xs.reshape(B, self.channels, Hk, Wk)
        M = Hk * Wk
        qh = q.view(B, h, d, H * W).transpose(-2, -1)  # (B, h, N, d)
        kh = call(mods["k"], xs).view(B, h, d, M).transpose(-2, -1)  # (B, h, M, d)
        vh = call(mods["v"], xs).view(B, h, d, M).transpose(-2, -1)  # (B, h, M, d)
        bias = None
        if self.rpe_table is not None:
            ii = torch.arange(H, device=x.device, dtype=x.dtype)
            jj = torch.arange(W, device=x.device, dtype=x.dtype)
            qpos = torch.stack(torch.meshgrid(ii, jj, indexing="ij"), -1)  # (H, W, 2) query pixels
            disp = qpos.reshape(1, H * W, 1, 2) - pos.reshape(B * G, 1, M, 2)  # (B*G, N, M, 2)
            # B(pos_i - (p + dp)_j): bilinear in the table; index R + t <-> grid t / R
            table = self.rpe_table.view(1, G, h // G, *self.rpe_table.shape[-2:]).expand(B, -1, -1, -1, -1)
            table = table.reshape(B * G, h // G, *self.rpe_table.shape[-2:])  # (B*G, h/G, 2R+1, 2R+1)
            bias = F.grid_sample(table, (disp / self.pos_range).flip(-1), mode="bilinear",
                                 padding_mode="border", align_corners=True)  # (B*G, h/G, N, M)
            bias = bias.reshape(B, h, H * W, M)
        if (torch.is_grad_enabled() or self.attn_map.active or torch.compiler.is_compiling()
                or torch.jit.is_tracing()):
            # y = softmax(q k^T / sqrt(d) + B) v
            y = attend(qh, kh, vh, self.attn_map, bias=bias, scale=1.0 / math.sqrt(d))  # (B, h, N, d)
            return call(mods["proj"], y.transpose(-2, -1).reshape(B, self.channels, H, W))
        # Inference: two matmuls on the (B, h, d, .) layouts of the projections. SDPA with a
        # float bias takes its unfused math path here (a safe softmax: three extra passes over
        # the (B, h, N, M) logits), and y^T = v A^T lands as (B, h, d, N), the output's layout.
        qs = qh.transpose(-2, -1) * (1.0 / math.sqrt(d))  # (B, h, d, N), contiguous
        logits = torch.matmul(qs.transpose(-2, -1), kh.transpose(-2, -1))  # (B, h, N, M): q k^T / sqrt(d)
        if bias is not None:
            logits = logits.add_(bias)
        a = logits.softmax(-1)  # (B, h, N, M)
        y = torch.matmul(vh.transpose(-2, -1), a.transpose(-2, -1))  # (B, h, d, N)
        return call(mods["proj"], y.view(B, self.channels, H, W))

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, num_heads={self.num_heads}, num_groups={self.num_groups}, "
                f"stride={self.stride}, offset_range={self.offset_range}")
