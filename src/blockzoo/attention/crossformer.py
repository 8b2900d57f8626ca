"""CrossFormer: cross-scale embedding, short- and long-distance attention, dynamic position bias.

Paper: CrossFormer: A Versatile Vision Transformer Hinging on Cross-scale Attention
(Wang, Yao, Chen, Lin, Cai, He, Liu; arXiv 2108.00154, 2021).

Letters: B batch, C channels, H W spatial, G group side (SDA), I interval (LDA),
n number of groups, M tokens per group, h heads, d head dim.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo._fastcall import call, listened
from blockzoo._kept import MERGE_EXTRA_MACS, derived, padded_kernels
from blockzoo.attention._attend import attend, key_mask, pad_to_multiple, pair
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import ShapeError, check_shape, require, require_divides
from blockzoo.registry import Example, images, register

__all__ = ["CrossScaleEmbedding", "DynamicPositionBias", "LongDistanceAttention",
           "ShortDistanceAttention"]


class _ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


@register(
    name="crossformer_cel",
    family="attention",
    paper="CrossFormer: A Versatile Vision Transformer Hinging on Cross-scale Attention",
    arxiv="2108.00154",
    year=2021,
    input="image",
    example=Example(config=dict(channels=8, dim_out=16, kernel_sizes=(2, 4), stride=2),
                    inputs=images(), size=(8, 8),
                    out_shape=lambda s, cfg: (s[0], cfg["dim_out"], s[2] // cfg["stride"],
                                              s[3] // cfg["stride"]),
                    tiny=dict(channels=2, dim_out=4)),
)
class CrossScaleEmbedding(nn.Module):
    r"""Cross-scale embedding layer (CEL): patches of several sizes around the same centres, concatenated.

    Wang et al., "CrossFormer", arXiv 2108.00154, Sec. 3.1.

    Equation, for kernels K_1 < K_2 < ... sharing one stride s::

        y = LN([conv_{K_1, s}(x) ; conv_{K_2, s}(x) ; ...])      channels D_1 + D_2 + ... = dim_out

    Each conv is padded by (K_i - s) / 2 so that all sample the same centres; the
    smallest kernel gets half the channels, each larger one half of the rest, the
    largest the remainder (the paper's rule: fewer channels for costlier kernels).

    Args:
        channels: C, input channels.
        dim_out: D, output channels.
        kernel_sizes: K_i, increasing; each K_i - s must be even (paper: 4, 8, 16, 32
            with s = 4 for the stem; 2, 4 with s = 2 between stages).
        stride: s, the down-sampling factor.
        norm: whether to LayerNorm the embedding over channels.

    Shape:
        - Input: (B, C, H, W), C = channels, H, W >= stride.
        - Output: (B, D, floor(H / s), floor(W / s)), D = dim_out.

    Example:
        >>> cel = CrossScaleEmbedding(3, 64, kernel_sizes=(4, 8, 16, 32), stride=4)
        >>> cel(torch.randn(2, 3, 30, 41)).shape
        torch.Size([2, 64, 7, 10])
    """

    def __init__(
        self,
        channels: int,
        dim_out: int,
        *,
        kernel_sizes: Sequence[int] = (2, 4),
        stride: int = 2,
        norm: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        ks = sorted(int(k) for k in kernel_sizes)
        require(len(ks) >= 1 and stride >= 1, f"CrossScaleEmbedding: kernel_sizes={kernel_sizes}, "
                f"stride={stride} must be non-empty and positive")
        require(all(k >= stride and (k - stride) % 2 == 0 for k in ks),
                f"CrossScaleEmbedding: every kernel in {ks} must be >= stride={stride} and differ "
                "from it by an even number")
        dims = [dim_out // 2 ** (i + 1) for i in range(len(ks) - 1)]
        dims.append(dim_out - sum(dims))
        require(all(d > 0 for d in dims),
                f"CrossScaleEmbedding: dim_out={dim_out} too small for {len(ks)} kernels")
        self.channels, self.dim_out, self.kernel_sizes, self.stride = channels, dim_out, tuple(ks), stride
        fk = dict(device=device, dtype=dtype)
        self.convs = nn.ModuleList(
            nn.Conv2d(channels, d, k, stride, (k - stride) // 2, **fk) for k, d in zip(ks, dims, strict=True)
        )
        self.norm = _ChannelLayerNorm(dim_out, **fk) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.channels:
            check_shape(x, "B C H W", name="CrossScaleEmbedding", C=self.channels)  # raises, naming it
        H, W = x.shape[2], x.shape[3]
        if H < self.stride or W < self.stride:
            raise ShapeError(f"CrossScaleEmbedding: input {H}x{W} is smaller than "
                             f"stride={self.stride}; H, W >= {self.stride} work")
        mods = self._modules
        # y = LN([conv_K1(x); conv_K2(x); ...])
        convs = list(mods["convs"]._modules.values())
        merged = self._merged(convs, x)
        ys = [call(c, x) for c in convs] if merged is None else [merged]  # (B, D_i, H/s, W/s) each
        norm = mods["norm"]
        if (type(norm) is _ChannelLayerNorm and not torch.is_grad_enabled() and not listened(norm)
                and not torch.compiler.is_compiling() and "weight" in norm._parameters
                and "bias" in norm._parameters):
            # the concatenation written channels-last, so the LayerNorm over channels reads it as
            # it lies (the module path copies the permuted map first); the same output and strides
            y0 = ys[0]
            cat = y0.new_empty((y0.shape[0], y0.shape[2], y0.shape[3], self.dim_out))  # (B, H/s, W/s, D)
            torch.cat(ys, 1, out=cat.permute(0, 3, 1, 2))
            p = norm._parameters
            y = F.layer_norm(cat, norm.normalized_shape, p["weight"], p["bias"], norm.eps)  # (B, H/s, W/s, D)
            return y.permute(0, 3, 1, 2)  # (B, D, H/s, W/s)
        return call(norm, torch.cat(ys, dim=1))  # (B, D, H/s, W/s)

    def _merged(self, convs: list[nn.Module], x: torch.Tensor) -> torch.Tensor | None:
        """All the convolutions as one, each smaller kernel zero-padded to the largest (they share
        stride and centres), for small inputs where a convolution's fixed cost outweighs the
        padded kernels' extra products (at most MERGE_EXTRA_MACS); eval without autograd on
        stock unhooked convolutions only, the padded weight kept until a weight changes."""
        if len(convs) < 2 or torch.is_grad_enabled() or torch.compiler.is_compiling() or any(
                type(c) is not nn.Conv2d or "weight" not in c._parameters or "bias" not in c._parameters
                or c.padding_mode != "zeros" for c in convs) or listened(*convs):
            return None
        k, s = self.kernel_sizes[-1], self.stride
        extra = sum(c.out_channels * (k * k - c.kernel_size[0] * c.kernel_size[1]) for c in convs)
        if x.shape[0] * (x.shape[2] // s) * (x.shape[3] // s) * extra * self.channels > MERGE_EXTRA_MACS:
            return None
        params = tuple(t for c in convs for t in (c._parameters["weight"], c._parameters["bias"]))
        wb = derived(self, "merged", tuple(t for t in params if t is not None),
                     lambda *_: padded_kernels(convs, k))
        if wb is None:
            return None
        return F.conv2d(x, wb[0], wb[1], s, (k - s) // 2)  # (B, D, H/s, W/s)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, dim_out={self.dim_out}, kernel_sizes={self.kernel_sizes}, "
                f"stride={self.stride}")


class DynamicPositionBias(nn.Module):
    r"""CrossFormer's DPB: an MLP from a relative offset (dy, dx) to one bias per head.

    Equation: B(dy, dx) = W_3 ReLU(LN(Linear(ReLU(LN(Linear((dy, dx)))))))  -> h values.
    Being a function of the offset (not a table), it serves groups of any size.

    The last map W_3 has no bias (CrossFormer's has one): its bias would add one number
    per head to every entry of that head's bias, the same for all keys, which the
    attention softmax cancels, so it could never change the output.

    The authors' release has one more LayerNorm-ReLU-Linear round (four linear maps) at
    width C / 16; this one has three linear maps at width ``hidden``.

    Args:
        num_heads: h, outputs per offset.
        hidden: the MLP's width.

    Shape:
        - ``bias(gh, gw)``: (h, gh*gw, gh*gw) for a gh x gw group of tokens.
    """

    def __init__(self, num_heads: int, hidden: int, **fk: Any) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(2, hidden, **fk), nn.LayerNorm(hidden, **fk), nn.ReLU(),
            nn.Linear(hidden, hidden, **fk), nn.LayerNorm(hidden, **fk), nn.ReLU(),
            nn.Linear(hidden, num_heads, bias=False, **fk),  # the softmax cancels a per-head bias
        )

    def forward(self, gh: int, gw: int) -> torch.Tensor:
        p = next(self.parameters())
        dy = torch.arange(1 - gh, gh, device=p.device, dtype=p.dtype)
        dx = torch.arange(1 - gw, gw, device=p.device, dtype=p.dtype)
        table = self.mlp(torch.stack(torch.meshgrid(dy, dx, indexing="ij"), -1))  # (2gh-1, 2gw-1, h)
        ih, iw = torch.arange(gh, device=p.device), torch.arange(gw, device=p.device)
        rh = ih[:, None] - ih[None, :] + gh - 1  # (gh, gh)
        rw = iw[:, None] - iw[None, :] + gw - 1  # (gw, gw)
        bias = table[rh[:, None, :, None], rw[None, :, None, :]]  # (gh, gw, gh, gw, h)
        return bias.reshape(gh * gw, gh * gw, -1).permute(2, 0, 1)  # (h, M, M)


def _position_bias(dpb: nn.Module | None, gh: int, gw: int) -> torch.Tensor | None:
    """``dpb(gh, gw)``; without autograd, kept per group size until a DPB parameter changes (a
    function of its parameters and two integers), unless a hook listens to the DPB or its MLP."""
    if dpb is None:
        return None
    if type(dpb) is DynamicPositionBias and not listened(*dpb.modules()):
        bias = derived(dpb, (gh, gw), tuple(dpb.parameters()), lambda *_: dpb.forward(gh, gw))
        if bias is not None:
            return bias
    return dpb(gh, gw)


class _GroupAttention(nn.Module):
    """Multi-head self-attention within groups of tokens, with DPB; the grouping is the subclass's."""

    long: bool
    name: str

    def __init__(self, channels: int, size: int | tuple[int, int], num_heads: int, qkv_bias: bool,
                 pos_bias: bool, what: str, device: Any, dtype: Any) -> None:
        super().__init__()
        head_dim = require_divides(self.name, "num_heads", num_heads, "channels", channels)
        self.size = pair(size, what, self.name)
        self.channels, self.num_heads, self.head_dim = channels, num_heads, head_dim
        fk = dict(device=device, dtype=dtype)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=qkv_bias, **fk)
        self.proj = nn.Conv2d(channels, channels, 1, **fk)
        self.dpb = DynamicPositionBias(num_heads, max(channels // 4, 4), **fk) if pos_bias else None
        self.attn_map = AttentionMap("weights")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = check_shape(x, "B C H W", name=self.name, C=self.channels)
        B, H, W = dims["B"], dims["H"], dims["W"]
        h, d = self.num_heads, self.head_dim
        # a side larger than the image shrinks to it (no group is then all padding)
        sh, sw = min(self.size[0], H), min(self.size[1], W)
        # the grouping commutes with the 1x1 projection: unless the projection is hooked (or a
        # map recorded), group the C input channels (one copy of C, not of 3C), then project
        # each group's tokens (padded pixels project to the bias: masked keys, cropped queries)
        fast = type(self.qkv) is nn.Conv2d and not self.attn_map.active and not listened(self.qkv)
        src, _, _ = pad_to_multiple(x if fast else self.qkv(x), sh, sw)  # (B, C or 3C, Hp, Wp)
        Hp, Wp = src.shape[-2:]
        a, b = Hp // sh, Wp // sw
        # SDA: groups (a, b) of sh x sw adjacent pixels; LDA: groups (sh, sw) of a x b pixels I apart
        gh, gw = (a, b) if self.long else (sh, sw)
        n = Hp * Wp // (gh * gw)
        if fast:
            xperm = (0, 3, 5, 2, 4, 1) if self.long else (0, 2, 4, 3, 5, 1)
            g = src.view(B, self.channels, a, sh, b, sw).permute(*xperm)  # (B, groups, members, C)
            g = g.reshape(B, n, gh * gw, self.channels)  # (B, n, M, C)
            w = self.qkv.weight
            qkv = F.linear(g, w.view(w.shape[0], w.shape[1]), self.qkv.bias)  # (B, n, M, 3C)
            q, k, v = qkv.view(B, n, gh * gw, 3, h, d).permute(3, 0, 1, 4, 2, 5)  # (B, n, h, M, d) each
        else:
            qkv = src.view(B, 3, h, d, a, sh, b, sw)
            perm = (1, 0, 5, 7, 2, 4, 6, 3) if self.long else (1, 0, 4, 6, 2, 5, 7, 3)
            q, k, v = qkv.permute(*perm).reshape(3, B, n, h, gh * gw, d)  # (B, n, h, M, d) each
        bias = _position_bias(self.dpb, gh, gw)  # (h, M, M) or None
        if Hp != H or Wp != W:
            valid = torch.zeros(Hp, Wp, dtype=torch.bool, device=x.device)
            valid[:H, :W] = True
            vp = (1, 3, 0, 2) if self.long else (0, 2, 1, 3)
            valid = valid.view(a, sh, b, sw).permute(*vp).reshape(n, 1, 1, gh * gw)  # (n, 1, 1, M)
            mask = key_mask(valid, x.dtype)
            bias = mask if bias is None else bias + mask
        # y = softmax(q k^T / sqrt(d) + DPB) v, within each group
        y = attend(q, k, v, self.attn_map, bias=bias, scale=1.0 / math.sqrt(d))  # (B, n, h, M, d)
        if self.long:
            y = y.view(B, sh, sw, h, a, b, d).permute(0, 3, 6, 4, 1, 5, 2)  # (B, h, d, a, sh, b, sw)
        else:
            y = y.view(B, a, b, h, sh, sw, d).permute(0, 3, 6, 1, 4, 2, 5)  # (B, h, d, a, sh, b, sw)
        y = y.reshape(B, self.channels, Hp, Wp)[:, :, :H, :W]  # (B, C, H, W)
        return call(self.proj, y)


_SDA_EXAMPLE = Example(config=dict(channels=16, group_size=4, num_heads=2), inputs=images(),
                       size=(8, 8), out_shape="same", tiny=dict(channels=4, group_size=2, num_heads=1))
_LDA_EXAMPLE = Example(config=dict(channels=16, interval=4, num_heads=2), inputs=images(),
                       size=(8, 8), out_shape="same", tiny=dict(channels=4, interval=2, num_heads=1))
_FACTS = dict(family="attention", year=2021, input="image", arxiv="2108.00154",
              paper="CrossFormer: A Versatile Vision Transformer Hinging on Cross-scale Attention")


@register(name="crossformer_sda", example=_SDA_EXAMPLE, **_FACTS)
class ShortDistanceAttention(_GroupAttention):
    r"""CrossFormer short-distance attention (SDA): self-attention within G x G groups of adjacent pixels.

    Wang et al., "CrossFormer", arXiv 2108.00154, Sec. 3.2.

    Equation, for a group g of G x G adjacent pixels, per head::

        q, k, v = W_qkv x                                         (1x1 conv)
        y_i     = W_o sum_{j in g} softmax_j(q_i . k_j / sqrt(d) + DPB(i - j)) v_j

    DPB (``DynamicPositionBias``) maps the offset i - j, in pixels, to a bias per head.

    Args:
        channels: C, input and output channels.
        group_size: G (int or (G_h, G_w)), the group side (paper: 7).
        num_heads: h, attention heads.
        qkv_bias: whether the q/k/v projection has a bias.
        pos_bias: whether to add the dynamic position bias.

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W: zero-padded at the bottom/right
          to multiples of G, padded keys masked, output cropped; a G larger than the
          image shrinks to the image's side.
        - Output: (B, C, H, W).

    Deviations:
        - The block is the attention sublayer only (no norm, residual or MLP around it).
        - DPB's last linear map has no bias (CrossFormer's has one): one number per head
          for every key alike, the softmax cancels it (see ``DynamicPositionBias``).
        - DPB's depth and width differ from the authors' release (cheerss/CrossFormer,
          ``models/crossformer.py``: four linear maps with three LayerNorm-ReLU rounds, width
          C / 16); ours has three linear maps, width max(C / 4, 4). Release checkpoints do
          not load into it.

    Example:
        >>> sda = ShortDistanceAttention(32, group_size=4, num_heads=4)
        >>> sda(torch.randn(2, 32, 7, 9)).shape
        torch.Size([2, 32, 7, 9])
    """

    long = False
    name = "ShortDistanceAttention"

    def __init__(self, channels: int, *, group_size: int | tuple[int, int] = 7, num_heads: int = 1,
                 qkv_bias: bool = True, pos_bias: bool = True, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__(channels, group_size, num_heads, qkv_bias, pos_bias, "group_size", device, dtype)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, group_size={self.size}, num_heads={self.num_heads}"


@register(name="crossformer_lda", example=_LDA_EXAMPLE, **_FACTS)
class LongDistanceAttention(_GroupAttention):
    r"""CrossFormer long-distance attention (LDA): self-attention among pixels sampled every I pixels.

    Wang et al., "CrossFormer", arXiv 2108.00154, Sec. 3.2.

    Equation, for the group g of pixels (u, v) with u mod I = a, v mod I = b, per head::

        y_i = W_o sum_{j in g} softmax_j(q_i . k_j / sqrt(d) + DPB((i - j) / I)) v_j

    so every group spans the whole image at stride I; DPB sees offsets in units of I.

    Args:
        channels: C, input and output channels.
        interval: I (int or (I_h, I_w)), the sampling interval (paper: 8, 4, 2, 1 by stage).
        num_heads: h, attention heads.
        qkv_bias: whether the q/k/v projection has a bias.
        pos_bias: whether to add the dynamic position bias.

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W: zero-padded at the bottom/right
          to multiples of I, padded keys masked, output cropped; an I larger than the
          image shrinks to the image's side.
        - Output: (B, C, H, W).

    Deviations:
        - The block is the attention sublayer only (no norm, residual or MLP around it).
        - DPB's last linear map has no bias (CrossFormer's has one): one number per head
          for every key alike, the softmax cancels it (see ``DynamicPositionBias``).
        - DPB's depth and width differ from the authors' release (cheerss/CrossFormer,
          ``models/crossformer.py``: four linear maps with three LayerNorm-ReLU rounds, width
          C / 16); ours has three linear maps, width max(C / 4, 4). Release checkpoints do
          not load into it.

    Example:
        >>> lda = LongDistanceAttention(32, interval=4, num_heads=4)
        >>> lda(torch.randn(2, 32, 7, 9)).shape
        torch.Size([2, 32, 7, 9])
    """

    long = True
    name = "LongDistanceAttention"

    def __init__(self, channels: int, *, interval: int | tuple[int, int] = 8, num_heads: int = 1,
                 qkv_bias: bool = True, pos_bias: bool = True, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__(channels, interval, num_heads, qkv_bias, pos_bias, "interval", device, dtype)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, interval={self.size}, num_heads={self.num_heads}"
