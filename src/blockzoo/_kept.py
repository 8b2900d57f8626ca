"""Tensors computed from parameters alone, kept between eval calls without autograd (issue 19).

Merged weights (several 1x1 convs stacked, conv branches summed into one kernel), scales
folded into a projection, a position bias's exponential: a block's eval forward may use such
a tensor in place of the parameters it comes from, provided it is rebuilt whenever they
change. ``_fastcall.derived`` (re-exported here) keeps each one per (owner module, key) with
weak references to its source tensors and each one's address and version, so an optimiser
step, ``load_state_dict``, ``.data =``, ``.to()`` or a new parameter rebuilds it; nothing
enters ``state_dict``, ``deepcopy`` or pickling. No kept tensor stands in while autograd is
on, while ``torch.compile`` / ``jit.trace`` trace, under ``torch.func`` transforms, for tensor
subclasses or inference tensors, or (``param_fold``, the conv helpers) while a hook listens:
the caller then runs its module path, exactly as before. Each user tests its kept path
against that module path in float64 (``_fastcall.module_path``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo._fastcall import _DERIVED as _DERIVED  # (re-exported: the tests look into it)
from blockzoo._fastcall import _KEEP_ELEMENTS, derived, listened

__all__ = ["conv1d_band", "derived", "padded_kernels", "param_fold", "pointwise_params", "residual_depthwise",
           "scaled_projection", "stacked_pointwise"]

def param_fold(owner: nn.Module, key: str, mods: tuple[nn.Module, ...],
               tensors: tuple[torch.Tensor | None, ...],
               build: Callable[..., tuple[torch.Tensor, ...]],
               extra: tuple = ()) -> tuple[torch.Tensor, ...] | None:
    """Folds of several parameters into fewer tensors (a per-channel scale into the projection
    after it, a bias carried through a linear map): :func:`derived` over ``tensors``, also
    redone when one of ``mods`` is swapped or a plain value in ``extra`` changes, and None
    while a hook listens to one of ``mods`` (the caller then runs its module path)."""
    if listened(*mods):
        return None
    return derived(owner, key, tensors, build, mods=mods, extra=extra)


def scaled_projection(owner: nn.Module, key: str, weight: torch.Tensor, bias: torch.Tensor | None,
                      scale: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """``(scale * weight, scale * bias)``, ``scale`` a number or a tensor of ``weight.shape[0]``
    elements (one per output), so that ``proj(x; W', b') = scale * proj(x; W, b)`` for any linear
    map ``proj`` with output channels first in its weight (``F.linear``, ``F.conv2d``): the
    multiplication by ``scale`` costs no pass over the output. Kept per ``(owner, key)`` and redone
    when any source tensor or the scale changes.

    None (the caller then multiplies as before) while autograd would record (grad mode on), while
    compiling, tracing or under a functorch transform, for an inference tensor (no version counter),
    or for weights above ``_KEEP_ELEMENTS`` elements (see :func:`derived`).
    """
    if weight.numel() > _KEEP_ELEMENTS:
        return None
    is_tensor = isinstance(scale, torch.Tensor)

    def build() -> tuple[torch.Tensor, torch.Tensor | None] | None:
        with torch.no_grad():
            if is_tensor:
                if scale.numel() != weight.shape[0]:
                    return None
                s = scale.reshape((-1,) + (1,) * (weight.dim() - 1))
                return weight * s, None if bias is None else bias * scale.reshape(-1)
            return weight * scale, None if bias is None else bias * scale

    return derived(owner, key, (weight, bias) + ((scale,) if is_tensor else ()), lambda *_: build(),
                   extra=(None if is_tensor else float(scale),))


def residual_depthwise(conv: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """For a stock depthwise ``Conv2d`` (one input channel per group, as many outputs as inputs,
    stride 1, odd kernel, padding k // 2, zero padding), the (weight, bias) with the identity added
    to the kernel's centre tap, so that ``conv(x; W', b) = x + conv(x)``: the residual sum costs
    no pass. Kept per conv and redone when the kernel changes; None where that does not hold or
    as :func:`_kept` says (the caller then adds as before)."""
    if type(conv) is not nn.Conv2d or listened(conv):
        return None
    params = conv._parameters
    weight = params.get("weight")
    kh, kw = conv.kernel_size
    if (weight is None or "bias" not in params or conv.groups != conv.in_channels
            or conv.out_channels != conv.in_channels or conv.stride != (1, 1) or conv.dilation != (1, 1)
            or conv.padding != (kh // 2, kw // 2) or kh % 2 == 0 or kw % 2 == 0
            or conv.padding_mode != "zeros" or weight.numel() > _KEEP_ELEMENTS):
        return None
    bias = params["bias"]

    def build() -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.no_grad():
            w = weight.clone()
            w[:, 0, kh // 2, kw // 2] += 1
        return w, bias

    return derived(conv, "residual_depthwise", (weight, bias), lambda *_: build())


def conv1d_band(conv: nn.Module, length: int, divisor: int = 1) -> torch.Tensor | None:
    """For a stock one-channel ``Conv1d`` (stride 1, zero padding, one group, no bias) nobody
    hooks, the banded matrix M (L, L_out) with ``conv(z.unsqueeze(1)).squeeze(1) == z @ M /
    divisor`` for z of shape (N, L): the conv over a length-L signal as one matrix product (a
    one-channel Conv1d on CPU goes through a ~50 us convolution call at any size). Kept per
    (conv, L, divisor) by :func:`derived`; None (use the conv) where that says so, or for any
    other conv."""
    if (type(conv) is not nn.Conv1d or conv.in_channels != 1 or conv.out_channels != 1
            or conv.stride != (1,) or conv.groups != 1 or conv.padding_mode != "zeros"
            or isinstance(conv.padding, str) or listened(conv)):
        return None
    params = conv._parameters
    weight = params.get("weight")
    if weight is None or params.get("bias", 0) is not None or length > 4096:
        return None  # a parametrized weight, a bias, or a matrix too large to keep
    (k,), (pad,), (dil,) = conv.kernel_size, conv.padding, conv.dilation
    out_len = length + 2 * pad - dil * (k - 1)
    if out_len < 1:
        return None

    def build(weight: torch.Tensor) -> torch.Tensor:
        taps = weight.reshape(k) / divisor
        band = weight.new_zeros(length, out_len)
        o = torch.arange(out_len, device=weight.device)
        for j in range(k):  # y[o] = sum_j w[j] z[o + j dil - pad]
            i = o + j * dil - pad
            ok = (i >= 0) & (i < length)
            band[i[ok], o[ok]] += taps[j]
        return band

    return derived(conv, ("band", length, divisor), (weight,), build)


# ---------------------------------------------------------------------------- stacked 1x1 convs


def _pointwise(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.kernel_size == (1, 1) and m.stride == (1, 1)
            and m.padding == (0, 0) and m.dilation == (1, 1) and m.groups == 1
            and "weight" in m._parameters and "bias" in m._parameters)


def pointwise_params(convs: tuple[nn.Module, ...], x: torch.Tensor) -> tuple[torch.Tensor | None, ...] | None:
    """The (weight, bias) pairs of stock 1x1 ``Conv2d``'s (stride 1, no padding, dilation 1,
    one group, plain parameters) that nobody hooks, for an input ``x`` that autograd does not
    record; None otherwise (the caller then runs the modules)."""
    if (type(x) is not torch.Tensor or x.dim() != 4 or (x.requires_grad and torch.is_grad_enabled())
            or listened(*convs) or not all(_pointwise(c) for c in convs)):
        return None
    return tuple(t for c in convs for t in (c._parameters["weight"], c._parameters["bias"]))


def _stack(*tensors: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    ws, bs = tensors[0::2], tensors[1::2]
    bias = None
    if any(b is not None for b in bs):
        bias = torch.cat([w.new_zeros(w.shape[0]) if b is None else b for w, b in zip(ws, bs, strict=True)])
    return torch.cat(ws, 0), bias


def stacked_pointwise(owner: nn.Module, convs: tuple[nn.Module, ...], x: torch.Tensor) -> torch.Tensor | None:
    """``torch.cat([conv(x) for conv in convs], 1)`` as one convolution over the stacked
    weights (one pass over ``x``, one call), when :func:`pointwise_params` and :func:`derived`
    apply (the stack kept per ``owner``); None otherwise: the caller runs the convs."""
    params = pointwise_params(convs, x)
    wb = None if params is None else derived(owner, "stacked_pointwise", params, _stack)
    return None if wb is None else F.conv2d(x, wb[0], wb[1])


# Kernels of several convolutions run as one, each zero-padded to the largest, while this costs at
# most this many extra multiply-adds (about the fixed cost of one small convolution on one CPU
# core): CoaT's CRPE, CrossFormer's CEL.
MERGE_EXTRA_MACS = 1 << 20


def padded_kernels(convs: list[nn.Module], k: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The convolutions' weights zero-padded, centred, to k x k and stacked along the outputs;
    their biases stacked (zeros for a conv without one; None if none has one)."""
    ws, bs = [], []
    for c in convs:
        w, b = c._parameters["weight"], c._parameters["bias"]
        p = (k - w.shape[-1]) // 2
        ws.append(F.pad(w, (p, p, p, p)))
        bs.append(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device) if b is None else b)
    bias = None if all(c._parameters["bias"] is None for c in convs) else torch.cat(bs)
    return torch.cat(ws), bias
