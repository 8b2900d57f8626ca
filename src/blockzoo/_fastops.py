"""Faster equivalents of single ops on CPU, for eval paths without autograd (issue 19).

Each gives the op's values (exactly, or to the op's own rounding where stated) and falls back
to the op itself while compiling or tracing, so a traced graph is the one it always was.
``benchmarks/plain_reference.py`` rows name the blocks that use them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["grouped_conv", "max_pool_same", "scalar", "softmax_last_"]


# On CPU, softmax over a last axis shorter than this (one AVX-512 vector of float32) runs the
# kernel's slow tail path: 4-5x the time of max, subtract, exp, sum and divide done in place
# (320 rows of 10: ~45 us against ~15 us; from 16 on the kernel is faster).
_SHORT_SOFTMAX = 16


def softmax_last_(x: torch.Tensor) -> torch.Tensor:
    """``x.softmax(-1)`` for a fresh intermediate without autograd, which it may overwrite:
    in place as exp(x - max) / sum on a short CPU axis, otherwise the softmax kernel."""
    if (x.shape[-1] < _SHORT_SOFTMAX and x.device.type == "cpu" and not torch.compiler.is_compiling()
            and not torch.is_grad_enabled()):
        x = x.sub_(x.amax(-1, keepdim=True)).exp_()
        return x.div_(x.sum(-1, keepdim=True))
    return x.softmax(-1)
def max_pool_same(x: torch.Tensor, k: int) -> torch.Tensor:
    """``F.max_pool2d(x, k, stride=1, padding=k // 2)`` for an odd ``k`` on (B, C, H, W), as a
    separable maximum: k - 1 elementwise maxima along W, then along H, over a -inf border. The
    same values (a maximum is exact; NaN propagates in both), several times faster on CPU than
    the pooling kernel (3x3 on 8 x 16 x 8 x 8: 27 vs 121 us; 8 x 64 x 32 x 32: 0.3 vs 14 ms).
    Without autograd only: the gradient of ``torch.maximum`` splits ties, the pooling's does not."""
    p = k // 2
    x = F.pad(x, (p, p, p, p), value=float("-inf"))
    w = x.shape[-1] - 2 * p
    r = torch.maximum(x[..., 0:w], x[..., 1:w + 1])
    for i in range(2, k):
        torch.maximum(r, x[..., i:w + i], out=r)
    h = r.shape[-2] - 2 * p
    o = torch.maximum(r[..., 0:h, :], r[..., 1:h + 1, :])
    for i in range(2, k):
        torch.maximum(o, r[..., i:h + i, :], out=o)
    return o
# A Python number in a tensor op is wrapped into a tensor and converted on every call (~2-3 us
# on CPU at small sizes, more than the op); a 0-dim tensor of the operand's dtype and device
# gives the same result (the op computes in that dtype either way) for a lookup.
_SCALARS: dict[tuple, torch.Tensor] = {}


def scalar(value: float, like: torch.Tensor) -> torch.Tensor | float:
    """``value`` as a cached 0-dim tensor of ``like``'s dtype and device, for eval paths without
    autograd; the number itself while compiling or tracing (the graph stays as it was)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return value
    key = (value, like.dtype, like.device, torch.is_inference_mode_enabled())
    hit = _SCALARS.get(key)
    if hit is None:
        if len(_SCALARS) >= 256:
            _SCALARS.clear()
        hit = _SCALARS[key] = torch.tensor(value, dtype=like.dtype, device=like.device)
    return hit


# Below this many input elements a grouped (depthwise) conv of a (B, C, H, W)-contiguous map runs
# faster on CPU as a channels-last copy, the conv, and a copy back (the convolution call reorders
# a (B, C, H, W) map internally; at 8 x 8 x 6 x 6 it took 47 us against 35 us with both copies,
# benchmarks/plain_reference.py's conv_position_encoding and pit_pooling rows); above it, not.
_SMALL_GROUPED = 1 << 15


def grouped_conv(conv: nn.Module, x: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
    """``conv._conv_forward(x, weight, bias)`` for a grouped ``Conv2d``; on a small
    (B, C, H, W)-contiguous CPU map in eager mode without autograd, through a channels-last copy,
    the output copied back to (B, C, H, W)-contiguous (the same values and layout)."""
    if (conv.groups > 1 and not torch.is_grad_enabled() and x.device.type == "cpu"
            and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing() and x.numel() <= _SMALL_GROUPED and x.dim() == 4
            and x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)):
        y = conv._conv_forward(x.contiguous(memory_format=torch.channels_last), weight, bias)
        return y.contiguous()
    return conv._conv_forward(x, weight, bias)
