r"""CoaT's conv-attention: factorized attention with a convolutional relative position encoding,
and its convolutional position encoding.

Paper: Co-Scale Conv-Attentional Image Transformers (Xu et al., arXiv 2104.06399, 2021).

Letters: B batch, C channels (= dim), H W spatial, N = H W image tokens (plus ``prefix``
class tokens), h heads, d = C / h head dim.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo._fastcall import call, listened
from blockzoo._fastops import grouped_conv
from blockzoo._kept import MERGE_EXTRA_MACS, derived, padded_kernels, residual_depthwise
from blockzoo.checks import check_shape, require, require_divides
from blockzoo.registry import Example, images, register

__all__ = ["ConvPosEnc", "ConvRelPosEnc", "FactorizedAttention"]

# The released code's split of the heads over depthwise kernels: kernel size -> heads.
CRPE_WINDOW = {3: 2, 5: 3, 7: 3}


class ConvRelPosEnc(nn.Module):
    r"""CoaT's convolutional relative position encoding: EV = Q o DepthwiseConv(V).

    Xu et al., arXiv 2104.06399, Sec. 4.2, Eq. (6)-(7): the relative position term of a
    window of size M, restricted to the image tokens, is a depthwise M x M convolution of
    V; the heads are split over kernel sizes (released code: 2 heads 3 x 3, 3 heads 5 x 5,
    3 heads 7 x 7).

    Args:
        head_dim: d. num_heads: h.
        window: kernel size -> number of heads (the counts sum to h), or one kernel size
            for every head.

    Shape:
        - ``forward(q, v, size)``: q, v (B, h, N, d) image tokens in row-major order of an
          (H, W) map, N = H W -> (B, h, N, d).
    """

    def __init__(self, head_dim: int, num_heads: int, window: int | Mapping[int, int] = CRPE_WINDOW, *,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        window = {window: num_heads} if isinstance(window, int) else dict(window)
        require(sum(window.values()) == num_heads and all(k % 2 == 1 and k > 0 for k in window),
                f"ConvRelPosEnc: window={window} must give odd kernel sizes whose head counts sum to "
                f"num_heads={num_heads}")
        self.head_dim, self.num_heads = head_dim, num_heads
        self.splits = [n * head_dim for n in window.values()]
        self.conv_list = nn.ModuleList([
            nn.Conv2d(c, c, k, padding=k // 2, groups=c, device=device, dtype=dtype)
            for k, c in zip(window, self.splits, strict=True)
        ])

    def conv_v(self, v: torch.Tensor, size: tuple[int, int]) -> torch.Tensor | None:
        """DWConv(V) as (B, h, N, d) for eval without autograd, the kernels of all sizes run as one
        depthwise convolution with each zero-padded (centred) to the largest while that costs at
        most MERGE_EXTRA_MACS more (kept until a weight changes), else one per size; None: the
        caller uses ``forward``."""
        convs = list(self.conv_list)
        if (torch.is_grad_enabled() or torch.compiler.is_compiling() or listened(self, *convs) or any(
                type(c) is not nn.Conv2d or "weight" not in c._parameters or "bias" not in c._parameters
                or c.padding_mode != "zeros" for c in convs)):
            return None
        b, nh, n, d = v.shape
        h, w = size
        k = max(c.kernel_size[0] for c in convs)
        extra = sum(c.in_channels * (k * k - c.kernel_size[0] ** 2) for c in convs)
        img = v.transpose(-1, -2).reshape(b, nh * d, h, w)  # (B, h d, H, W): channel = head * d + c
        if len(convs) > 1 and b * n * extra > MERGE_EXTRA_MACS:  # one convolution per kernel size
            parts = img.split(self.splits, 1)
            conv = torch.cat([call(c, part) for c, part in zip(convs, parts, strict=True)], 1)
            return conv.reshape(b, nh, d, n).transpose(-1, -2)  # (B, h, N, d)
        params = tuple(t for c in convs for t in (c._parameters["weight"], c._parameters["bias"])
                       if t is not None)
        wb = derived(self, "merged", params, lambda *_: padded_kernels(convs, k))
        if wb is None:
            return None
        conv = F.conv2d(img, wb[0], wb[1], 1, k // 2, 1, nh * d)  # (B, h d, H, W)
        return conv.reshape(b, nh, d, n).transpose(-1, -2)  # (B, h, N, d)

    def forward(self, q: torch.Tensor, v: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        b, nh, n, d = v.shape
        h, w = size
        img = v.transpose(-1, -2).reshape(b, nh * d, h, w)  # (B, h d, H, W): channel = head * d + c
        conv = torch.cat([c(part) for c, part in zip(self.conv_list, img.split(self.splits, 1), strict=True)],
                         1)  # (B, h d, H, W)
        return q * conv.reshape(b, nh, d, n).transpose(-1, -2)  # Q o DWConv(V): (B, h, N, d)


@register(
    name="factorized_attention",
    family="attention",
    paper="Co-Scale Conv-Attentional Image Transformers",
    arxiv="2104.06399",
    year=2021,
    input="image",
    example=Example(config=dict(dim=16, num_heads=8), inputs=images("dim"), size=(6, 6), out_shape="same",
                    tiny=dict(dim=4, num_heads=2, crpe_window=3)),
)
class FactorizedAttention(nn.Module):
    r"""Factorized attention with convolutional relative position encoding (CoaT's conv-attention).

    Xu et al., "Co-Scale Conv-Attentional Image Transformers", arXiv 2104.06399, Sec. 4,
    Eq. (5)-(8).

    Equation, per head (Q, K, V = X W^Q, X W^K, X W^V, N tokens)::

        FactorAtt(X) = (Q / sqrt(d)) (softmax_N(K)^T V) + Q o DepthwiseConv(V)
        y = Concat(heads) W^O

    softmax_N normalises each key channel over the N tokens, so softmax(K)^T V is a
    d x d matrix: the cost is linear in N. The second term (``ConvRelPosEnc``) brings
    back the relative positions the factorization loses; class tokens get none (zero).

    Args:
        dim: C. num_heads: h (CoaT: 8).
        qkv_bias: biases of the q, k, v projection (CoaT: True).
        crpe_window: kernel size -> heads of the position encoding (default: the released
            code's {3: 2, 5: 3, 7: 3}), one kernel size for all heads, or ``None`` for no
            own encoding (CoaT shares one per stage and passes it to ``attend_tokens``).

    Shape:
        - Input: (B, C, H, W), C = dim, any H, W; output (B, C, H, W).
        - ``attend_tokens(x, size, crpe, prefix)``: (B, prefix + H W, C) -> same, the
          ``prefix`` leading tokens (class tokens) without position term.

    Deviations:
        None in the maths; no dropout (CoaT trains without it).

    Example:
        >>> attn = FactorizedAttention(64, num_heads=8)
        >>> attn(torch.randn(2, 64, 14, 10)).shape
        torch.Size([2, 64, 14, 10])
    """

    def __init__(self, dim: int, num_heads: int = 8, *, qkv_bias: bool = True,
                 crpe_window: int | Mapping[int, int] | None = CRPE_WINDOW,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.head_dim = require_divides("FactorizedAttention", "num_heads", num_heads, "dim", dim)
        self.dim, self.num_heads = dim, num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **fk)
        self.proj = nn.Linear(dim, dim, **fk)
        self.crpe = (None if crpe_window is None
                     else ConvRelPosEnc(self.head_dim, num_heads, crpe_window, **fk))

    def attend_tokens(self, x: torch.Tensor, size: tuple[int, int], crpe: nn.Module | None = None,
                      prefix: int = 0) -> torch.Tensor:
        """Conv-attention of (B, prefix + H W, C) tokens; ``crpe`` defaults to the block's own."""
        b, n, c = x.shape
        nh, d = self.num_heads, self.head_dim
        mods = self._modules
        q, k, v = call(mods["qkv"], x).view(b, n, 3, nh, d).permute(2, 0, 3, 1, 4)  # 3 x (B, h, N, d)
        crpe = self.crpe if crpe is None else crpe
        conv = (crpe.conv_v(v, size) if type(crpe) is ConvRelPosEnc and not prefix and not listened(crpe)
                else None)
        if conv is not None:  # eval without autograd: the scale on the (d, d) context, Q o conv in place
            context = (k.softmax(dim=2).transpose(-1, -2) @ v).mul_(d**-0.5)  # (B, h, d, d)
            out = torch.matmul(q, context).addcmul_(q, conv)  # (B, h, N, d)
            return call(mods["proj"], out.transpose(1, 2).reshape(b, n, c))  # (B, N, C)
        # (Q / sqrt(d)) (softmax_N(K)^T V)
        context = k.softmax(dim=2).transpose(-1, -2) @ v  # (B, h, d, d)
        out = (q @ context) * d**-0.5  # (B, h, N, d)
        if crpe is not None:
            # + Q o DepthwiseConv(V) on the image tokens; the class tokens get none
            pos = crpe(q[:, :, prefix:], v[:, :, prefix:], size)  # (B, h, H W, d)
            out = torch.cat([out[:, :, :prefix], out[:, :, prefix:] + pos], 2) if prefix else out + pos
        return call(mods["proj"], out.transpose(1, 2).reshape(b, n, c))  # (B, N, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.dim:
            check_shape(x, "B C H W", name="FactorizedAttention", C=self.dim)  # raises, naming the misfit
        b, c, h, w = x.shape
        y = self.attend_tokens(x.flatten(2).transpose(1, 2), (h, w))  # (B, H W, C)
        return y.transpose(1, 2).reshape(b, c, h, w)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}"


@register(
    name="conv_position_encoding",
    family="attention",
    # one operation under two names: CoaT's CPE and CPVT's PEG (arXiv 2102.10882, used by Twins-PCPVT)
    paper="Co-Scale Conv-Attentional Image Transformers; Conditional Positional Encodings for Vision "
          "Transformers (its PEG, 2102.10882)",
    arxiv="2104.06399",
    year=2021,
    input="image",
    example=Example(config=dict(dim=8), inputs=images("dim"), size=(6, 6), out_shape="same",
                    tiny=dict(dim=3)),
)
class ConvPosEnc(nn.Module):
    r"""CoaT's convolutional position encoding, CPVT's PEG: a residual depthwise convolution of the token map.

    Xu et al., arXiv 2104.06399, Sec. 4.2 and Fig. 3; the same operation is the position
    encoding generator (PEG) of Chu et al., "Conditional Positional Encodings for Vision
    Transformers", arXiv 2102.10882, Sec. 3.2 (its F a 3 x 3 depthwise conv, as Twins-PCPVT
    uses after the first block of each stage, ``pcpvt_small``)::

        y = x + DepthwiseConv_{k x k}(x)         padding k // 2, per channel, with bias

    Args:
        dim: C. kernel_size: k (CoaT and CPVT's PEG: 3).

    Shape:
        - Input: (B, C, H, W), C = dim, any H, W; output (B, C, H, W).
        - ``forward_tokens(x, size, prefix)``: (B, prefix + H W, C) -> same, the
          ``prefix`` leading (class) tokens passed through.
    """

    def __init__(self, dim: int, kernel_size: int = 3, *, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        require(kernel_size % 2 == 1, f"ConvPosEnc: kernel_size={kernel_size} must be odd")
        self.dim = dim
        self.proj = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, device=device,
                              dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if len(shape) != 4 or shape[1] != self.dim:  # (integer tests first; the message on failure)
            check_shape(x, "B C H W", name="ConvPosEnc", C=self.dim)
        if not torch.is_grad_enabled():
            folded = residual_depthwise(self.proj)
            if folded is not None:  # without autograd: the identity in the kernel's centre tap
                return grouped_conv(self.proj, x, *folded)
        return x + self.proj(x)

    def forward_tokens(self, x: torch.Tensor, size: tuple[int, int], prefix: int = 0) -> torch.Tensor:
        b, _, c = x.shape
        img = x[:, prefix:].transpose(1, 2).reshape(b, c, *size)  # (B, C, H, W)
        return torch.cat([x[:, :prefix], (img + self.proj(img)).flatten(2).transpose(1, 2)], 1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
