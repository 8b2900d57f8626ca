"""EMSA: efficient multi-head self-attention of ResT.

Paper: ResT: An Efficient Transformer for Visual Recognition (Zhang, arXiv
2105.13677, 2021).

Letters: B batch, N = H * W tokens, C model dim (= dim), h heads, d = C / h,
r spatial reduction (= sr_ratio), M the reduced number of keys.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo._fastcall import call, listened, own
from blockzoo._kept import derived
from blockzoo.act import LayerSpec, create_norm, without_bias
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import ShapeError, check_shape, require, require_divides
from blockzoo.registry import Example, register, tokens

__all__ = ["EMSA"]


def _scaled_mix(scale: float, weight: torch.Tensor) -> tuple[torch.Tensor]:
    """The (h, h, 1, 1) head-mixing conv weight times ``scale``, as an (h, h) matrix."""
    return (weight.flatten(1) * scale,)


@register(
    name="emsa",
    family="attention",
    paper="ResT: An Efficient Transformer for Visual Recognition",
    arxiv="2105.13677",
    year=2021,
    input="tokens",
    example=Example(config=dict(dim=16, num_heads=4, sr_ratio=2), inputs=tokens("dim"), size=(8,),
                    out_shape="same", tiny=dict(dim=4, num_heads=2)),
)
class EMSA(nn.Module):
    r"""Efficient multi-head self-attention: keys/values from a strided depthwise conv.

    Zhang & Yang, "ResT: An Efficient Transformer for Visual Recognition",
    arXiv 2105.13677, section 3.1, eq. (2).

    Equation::

        Q     = x W^Q                                           (B, h, N, d)
        x'    = Norm(DWConv_{(r+1)x(r+1), stride r}(x as (B, C, H, W)))    (B, M, C)
        K, V  = x' W^K, x' W^V                                  (B, h, M, d)
        A     = IN(softmax(Conv_1x1(Q K^T / sqrt(d))))           conv/IN over the h heads
        y     = Concat_heads(A V) W^O

    The 1 x 1 convolution mixes the h attention maps ("multi-head interaction") and
    instance normalisation (IN, no affine, eps 1e-5, as ``nn.InstanceNorm2d``) re-balances
    them; both only when h > 1, as in ResT. IN is computed as a layer norm over each head's
    N x M map (the same maths), so that a single-entry map (N = M = 1) gives 0 in training
    too (``nn.InstanceNorm2d`` raises there).

    Args:
        dim: C, the token width.
        num_heads: h; must divide C.
        sr_ratio: r, the spatial reduction of keys/values: 1 (none) or even, as in ResT
            (8, 4, 2, 1); an even r gives M = (H - 1) // r + 1 rows for any H >= 1.
        qkv_bias: a bias on W^Q, and on W^K, W^V when h = 1 (see Deviations).
        norm_layer: the normalisation after the reduction (LayerNorm).
        dropout: dropout on the attention weights.

    Shape:
        - Input: (B, N, C), C = dim; ``forward(x, hw=(H, W))`` treats the tokens as an
          H x W map (N = H * W, else ``ShapeError``). Without ``hw`` the tokens are a 1-D
          sequence (any N).
        - Output: (B, N, C).

    Deviations:
        Without ``hw`` the reduction is the 1-D version of the same conv: the central row
        of the (r+1) x (r+1) kernel, stride r along the sequence (so M = ceil-ish N / r).
        The paper only has images.

        Biases of the official code that cannot change the output (gradient exactly 0)
        are left out. The 1 x 1 conv's bias adds one number per head to all M logits of
        a row, which the softmax over M cancels. W^K's bias adds q_n . b_k to every key
        of row n alike (cancelled the same way, for any h). With h > 1 every row of IN's
        output sums to 0 (softmax rows sum to 1, so each head's N x M map has mean exactly
        1/M, which IN subtracts), so W^V's bias adds sum_m A[n, m] b_v = 0 as well: with
        h > 1, W^K and W^V have no bias, nor has the norm after the reduction, whose
        shift reaches K and V only as such constant vectors. (Attention dropout in
        training would turn them into zero-mean noise, no more.) With h = 1 there is no
        IN, the value bias matters and ``qkv_bias`` keeps the (fused) K, V bias.

    Example:
        >>> emsa = EMSA(64, num_heads=8, sr_ratio=2)
        >>> emsa(torch.randn(2, 7 * 9, 64), hw=(7, 9)).shape
        torch.Size([2, 63, 64])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        sr_ratio: int = 1,
        qkv_bias: bool = True,
        norm_layer: LayerSpec = "layernorm",
        dropout: float = 0.0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        head_dim = require_divides("EMSA", "num_heads", num_heads, "dim", dim)
        require(sr_ratio == 1 or (sr_ratio > 1 and sr_ratio % 2 == 0),
                f"EMSA: sr_ratio={sr_ratio} must be 1 or even (ResT uses 8, 4, 2, 1)")
        self.dim, self.num_heads, self.head_dim, self.sr_ratio = dim, num_heads, head_dim, sr_ratio
        self.dropout = dropout
        fk = dict(device=device, dtype=dtype)
        self.q = nn.Linear(dim, dim, bias=qkv_bias, **fk)
        # h > 1: IN makes A's rows sum to 0, cancelling any shift of V (or K) (Deviations)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias and num_heads == 1, **fk)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio + 1, stride=sr_ratio, padding=sr_ratio // 2,
                                groups=dim, **fk)
            self.sr_norm = create_norm(norm_layer, dim, **fk)
            if num_heads > 1:
                without_bias(self.sr_norm)
        if num_heads > 1:
            self.transform = nn.Conv2d(num_heads, num_heads, 1, bias=False, **fk)  # softmax cancels a bias
        self.proj = nn.Linear(dim, dim, **fk)
        self.attn_map = AttentionMap("weights")

    def _reduce(self, x: torch.Tensor, hw: tuple[int, int] | None) -> torch.Tensor:
        b, _, c = x.shape
        r = self.sr_ratio
        if hw is None and not (torch.is_grad_enabled() or torch.compiler.is_compiling()):
            z = self._reduce_taps(x)
            if z is not None:
                return call(self._modules["sr_norm"], z)  # (B, M, C)
        if hw is None:
            row = self.sr.weight[:, :, r // 2 : r // 2 + 1]  # (C, 1, 1, r+1): the central row
            z = F.conv2d(x.transpose(1, 2)[:, :, None], row, self.sr.bias, stride=(1, r),
                         padding=(0, r // 2), groups=c)  # (B, C, 1, M)
        else:
            z = call(self.sr, x.transpose(1, 2).reshape(b, c, *hw))  # (B, C, H/r, W/r)
        return call(self.sr_norm, z.flatten(2).transpose(1, 2))  # (B, M, C)

    def _reduce_taps(self, x: torch.Tensor) -> torch.Tensor | None:
        """The central-row reduction of (B, N, C) tokens without autograd, on the token layout:
        one multiply-add per tap of the r + 1 wide row over strided views of the padded tokens
        (a depthwise conv call costs ~40 us of setup at small N; this also skips two transposes),
        (B, M, C); None for a hooked or non-stock ``sr``."""
        sr = self._modules["sr"]
        if type(sr) is not nn.Conv2d or listened(sr) or "weight" not in sr._parameters:
            return None
        r = self.sr_ratio
        p, taps = r // 2, r + 1
        wb = sr._parameters["weight"][:, 0, r // 2], sr._parameters["bias"]  # (C, r+1), (C,) or None
        n = x.shape[1]
        m = (n + 2 * p - taps) // r + 1
        if m < 1:
            return None
        xp = F.pad(x, (0, 0, p, p)) if p else x  # (B, N + 2p, C)
        # z_m = b + sum_t w_t x_{m r + t - p}
        z = None
        for t in range(taps):
            tap = xp[:, t : t + r * (m - 1) + 1 : r]  # (B, M, C)
            w = wb[0][:, t]
            if z is None:
                z = tap * w if wb[1] is None else torch.addcmul(wb[1], tap, w)
            else:
                z.addcmul_(tap, w)
        return z

    def forward(self, x: torch.Tensor, hw: tuple[int, int] | None = None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[2] != self.dim:
            check_shape(x, "B N C", name="EMSA", C=self.dim)  # raises, naming the misfit
        b, n, c = x.shape
        if hw is not None and hw[0] * hw[1] != n:
            raise ShapeError(f"EMSA: hw={tuple(hw)} does not match N={n} tokens")
        h, d = self.num_heads, self.head_dim
        q = call(self.q, x).view(b, n, h, d).transpose(1, 2)  # (B, h, N, d)
        kv_in = self._reduce(x, hw) if self.sr_ratio > 1 else x  # (B, M, C)
        k, v = call(self.kv, kv_in).view(b, -1, 2, h, d).permute(2, 0, 3, 1, 4)  # 2 x (B, h, M, d)
        a = q @ k.transpose(-1, -2)  # (B, h, N, M)
        if h > 1:
            # Conv_1x1(Q K^T / sqrt(d)), the 1/sqrt(d) folded into the h x h weight (one pass
            # over the map fewer), then the softmax
            transform = self._modules["transform"]
            mix = None
            if not (torch.is_grad_enabled() or torch.compiler.is_compiling() or listened(transform)):
                # without autograd: the scaled (h, h) weight kept (derived), the 1x1 conv as one
                # (h, h) @ (B, h, N M) matmul
                mix = derived(self, "transform", (own(transform, "weight"),),
                              functools.partial(_scaled_mix, 1.0 / math.sqrt(d)))
            if mix is not None:
                a = torch.matmul(mix[0], a.view(b, h, -1)).view(a.shape)
            elif listened(transform):
                a = transform(a / math.sqrt(d))
            else:
                a = F.conv2d(a, transform.weight / math.sqrt(d))
            a = a.softmax(dim=-1)  # (B, h, N, M)
            # IN: each head's map normalised over its N x M entries (no affine, eps 1e-5),
            # which is a layer norm over the last two axes (one fused op; 0 for N = M = 1)
            a = F.layer_norm(a, a.shape[-2:], eps=1e-5)
        else:
            a = (a / math.sqrt(d)).softmax(dim=-1)
        a = self.attn_map(a)
        a = F.dropout(a, self.dropout, self.training) if self.dropout > 0 else a
        return call(self.proj, (a @ v).transpose(1, 2).reshape(b, n, c))  # (B, N, C)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, sr_ratio={self.sr_ratio}"
