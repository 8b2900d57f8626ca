"""Calling a stock submodule without ``nn.Module.__call__`` when nobody listens (issue 19).

``nn.Module.__call__`` costs ~1-2 us per call on CPU (hook dictionaries, tracing state,
the ``forward`` lookup), and ``module.weight`` another ~0.3 us through
``nn.Module.__getattr__``. For a block at its example size that is 5-20 % of an eval
forward spent on modules such as ``nn.Linear`` or ``nn.ReLU`` whose ``forward`` is one
functional call. :func:`call` runs that functional call directly, on the module's own
parameters, and so gives the same result as ``module(x)`` (the same ATen op on the same
tensors), but only when this is provably the same computation:

- the module's type is *exactly* one of the stock types below (a subclass, a
  parametrized module -- ``torch.nn.utils.parametrize`` swaps in a subclass -- or any
  other module runs as a module);
- no hook listens: none of the module's own forward / backward (pre-)hooks and none of the
  global ``nn.modules.module.register_module_*`` hooks (old-style weight / spectral norm
  and pruning are forward pre-hooks, so they keep the module path too);
- for batch norm: eval mode with running statistics (training updates them: module path);
  for dropout: off (eval, or p = 0).

Anything else is ``module(x)``. ``tests/test_overhead.py`` checks, per block using this,
that the fast path equals the module path to 1e-12 in float64 and that hooks still fire.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.module import (
    _global_backward_hooks,
    _global_backward_pre_hooks,
    _global_forward_hooks,
    _global_forward_pre_hooks,
)

__all__ = ["call", "conv_bn", "derived", "direct", "invoke", "listened", "module_path", "own",
           "pointwise_params", "sequential", "stacked_pointwise"]


def listened(*mods: nn.Module) -> bool:
    """True when a global module hook, or a hook of one of ``mods``, is registered."""
    if (_global_forward_hooks or _global_forward_pre_hooks or _global_backward_hooks
            or _global_backward_pre_hooks):
        return True
    for m in mods:
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks:
            return True
    return False


@contextlib.contextmanager
def module_path() -> Iterator[None]:
    """While open, every block runs its plain module path: a global no-op forward hook makes
    :func:`listened` true everywhere, so no functional shortcut, fold or kept tensor stands in
    (the reference the fast paths are tested against, and a way to rule them out when
    debugging)."""
    from torch.nn.modules.module import register_module_forward_hook

    handle = register_module_forward_hook(lambda *_a: None)
    try:
        yield
    finally:
        handle.remove()


def own(m: nn.Module, name: str) -> torch.Tensor | None:
    """``m.<name>`` for a parameter of ``m`` itself, without ``nn.Module.__getattr__`` when it is
    a plain parameter; a parametrized one (``torch.nn.utils.parametrize`` moves it out of
    ``_parameters``) is computed through the attribute as usual."""
    params = m._parameters
    return params[name] if name in params else getattr(m, name)


def _linear(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    p = m._parameters
    return F.linear(x, p["weight"], p["bias"])


def _conv(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    p = m._parameters
    return m._conv_forward(x, p["weight"], p["bias"])


def _layer_norm(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    p = m._parameters
    return F.layer_norm(x, m.normalized_shape, p["weight"], p["bias"], m.eps)


def _batch_norm(m: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    b = m._buffers
    mean, var = b["running_mean"], b["running_var"]
    if m.training or mean is None or x.dim() != 4:  # stats to update or a shape error: the module
        return None
    p = m._parameters
    return torch.batch_norm(x, p["weight"], p["bias"], mean, var, False, 0.0, m.eps,
                            torch.backends.cudnn.enabled)


def _relu(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.relu_(x) if m.inplace else torch.relu(x)


def _silu(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.silu(x, m.inplace)


def _relu6(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.hardtanh(x, m.min_val, m.max_val, m.inplace)


def _hardswish(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.hardswish(x, m.inplace)


def _gelu(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate=m.approximate)


def _dropout(m: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    return x if (m.p == 0 or not m.training) else None


_DIRECT: dict[type, Callable[[nn.Module, torch.Tensor], torch.Tensor | None]] = {
    nn.Linear: _linear,
    nn.Conv1d: _conv,
    nn.Conv2d: _conv,
    nn.LayerNorm: _layer_norm,
    nn.BatchNorm2d: _batch_norm,
    nn.ReLU: _relu,
    nn.SiLU: _silu,
    nn.ReLU6: _relu6,
    nn.Hardswish: _hardswish,
    nn.GELU: _gelu,
    nn.Sigmoid: lambda _m, x: torch.sigmoid(x),
    nn.Tanh: lambda _m, x: torch.tanh(x),
    nn.Identity: lambda _m, x: x,
    nn.Dropout: _dropout,
}


def direct(cls: type[nn.Module]) -> Callable[[Callable[[nn.Module, torch.Tensor], torch.Tensor | None]],
                                              Callable[[nn.Module, torch.Tensor], torch.Tensor | None]]:
    """Decorator registering ``fn(module, x)`` as what :func:`call` runs for exactly ``cls``
    (a blockzoo module whose forward is a line of tensor maths); ``fn`` must compute what
    ``cls.forward`` computes, op for op, or return None to take the module path."""

    def deco(fn: Callable[[nn.Module, torch.Tensor], torch.Tensor | None]
             ) -> Callable[[nn.Module, torch.Tensor], torch.Tensor | None]:
        _DIRECT[cls] = fn
        return fn

    return deco


def call(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``m(x)``, run as its functional op when ``m`` is a stock module nobody hooks."""
    f = _DIRECT.get(type(m))
    if f is None or listened(m):
        return m(x)
    y = f(m, x)
    return m(x) if y is None else y


def invoke(m: nn.Module, *args: object, **kwargs: object) -> object:
    """``m(*args, **kwargs)``, as ``m.forward(...)`` when no hook listens to ``m``.

    For a block's own submodule that is a blockzoo block (whose forward then makes its
    own :func:`call` decisions): skips ``nn.Module.__call__`` and nothing else.
    """
    if listened(m):
        return m(*args, **kwargs)
    return m.forward(*args, **kwargs)


def sequential(seq: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``seq(x)`` for an ``nn.Sequential``: its layers one by one through :func:`call` (a
    ``Conv2d`` followed by a ``BatchNorm2d`` through :func:`conv_bn`), without the Sequential's
    own call, unless a hook listens to the Sequential itself."""
    if type(seq) is not nn.Sequential or listened(seq):
        return seq(x)
    mods = seq._modules
    pending = None  # a Conv2d waiting to see whether a BatchNorm2d follows
    for m in mods.values():
        if pending is not None:
            if type(m) is nn.BatchNorm2d:
                x, pending = conv_bn(pending, m, x), None
                continue
            x, pending = call(pending, x), None
        if type(m) is nn.Conv2d:
            pending = m
        else:
            x = call(m, x)
    return x if pending is None else call(pending, x)


# ---------------------------------------------------------------------------- conv + BN folding

# Folded (weight, bias) per BatchNorm2d, with weak references to the tensors they were
# computed from and each one's address and version: an in-place change (an optimiser step,
# load_state_dict's copy_, ``.data =``) changes a version or an address, and a ``.to()`` or a
# new parameter is another object, so the fold is redone.
_FOLDED: weakref.WeakKeyDictionary[nn.Module, tuple] = weakref.WeakKeyDictionary()
# Folds of at most this many weight elements are kept (1 MiB in float32 each, so the extra
# memory is bounded by the small convolutions, where a fold per call would cost more than the
# norm it saves); larger weights are folded per call when the output is at least 8x the weight.
_KEEP_ELEMENTS = 1 << 18


def conv_bn(conv: nn.Module, bn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``bn(conv(x))``; for a stock ``Conv2d`` and an eval-mode ``BatchNorm2d`` that nobody
    hooks, with autograd off or nothing requiring grad, one convolution with the norm folded
    into it::

        W' = W * gamma / sqrt(var + eps),    b' = (b - mean) * gamma / sqrt(var + eps) + beta

    the same affine map, one pass over the output fewer (the fold's rounding differs from the
    norm's by a few ulps). Training, autograd, hooks, ``torch.compile`` / ``torch.func``
    transforms, or any other module types take the module path, ``call(bn, call(conv, x))``.
    """
    folded = _fold(conv, bn, x)
    if folded is None:
        return call(bn, call(conv, x))
    return F.conv2d(x, folded[0], folded[1], conv.stride, conv.padding, conv.dilation, conv.groups)


def _fold(conv: nn.Module, bn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    if (type(conv) is not nn.Conv2d or type(bn) is not nn.BatchNorm2d or bn.training
            or type(x) is not torch.Tensor or x.dim() != 4 or conv.padding_mode != "zeros"
            or torch.compiler.is_compiling() or torch.jit.is_tracing()
            or torch._C._are_functorch_transforms_active() or listened(conv, bn)):
        return None
    cp, bp, bb = conv._parameters, bn._parameters, bn._buffers
    if not ("weight" in cp and "bias" in cp and "weight" in bp and "bias" in bp):
        return None  # a parametrized tensor (computed through the attribute): the module path
    mean, var = bb["running_mean"], bb["running_var"]
    tensors = (cp["weight"], cp["bias"], bp["weight"], bp["bias"], mean, var)
    if mean is None or bn.num_features != tensors[0].shape[0] or (torch.is_grad_enabled()
                        and (x.requires_grad or any(t is not None and t.requires_grad for t in tensors))):
        return None
    try:
        state = (*((None if t is None else (t.data_ptr(), t._version)) for t in tensors),
                 bn.eps, torch.is_inference_mode_enabled())
    except RuntimeError:  # an inference tensor has no version counter: nothing to key a fold on
        return None
    hit = _FOLDED.get(bn)
    # (equal states have their None tensors in the same places)
    if hit is not None and hit[1] == state and all(
            r is None or r() is t for r, t in zip(hit[0], tensors, strict=True)):
        return hit[2], hit[3]
    w = tensors[0]
    keep = w.numel() <= _KEEP_ELEMENTS
    if not keep and x.numel() // max(1, x.shape[1]) * w.shape[0] < 8 * w.numel():
        return None  # a large weight on a small input: folding per call costs more than the norm
    with torch.no_grad():
        scale = torch.rsqrt(var + bn.eps)
        if tensors[2] is not None:
            scale = scale * tensors[2]
        bias = -mean * scale if tensors[1] is None else (tensors[1] - mean) * scale
        if tensors[3] is not None:
            bias = bias + tensors[3]
        weight = w * scale.view(-1, 1, 1, 1)
    if keep:
        _FOLDED[bn] = (tuple(None if t is None else weakref.ref(t) for t in tensors), state, weight, bias)
    return weight, bias


# ---------------------------------------------------------------------------- derived tensors


def folded_conv_bn(conv: nn.Module, bn: nn.Module,
                   x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The (weight, bias) of ``bn(conv(x))`` folded into one convolution, exactly those
    :func:`conv_bn` convolves with (cached, refolded on any change), for a caller that applies
    the folded map with another kernel (a 1 x 1 convolution as a matrix product); None wherever
    :func:`conv_bn` takes the module path."""
    return _fold(conv, bn, x)


# Tensors computed from parameters alone (merged weights, a position bias's exponential), per
# owning module and key, with weak references to their sources and each one's address and
# version, as the folds above: an optimiser step, load_state_dict, ``.data =``, ``.to()`` or a
# new parameter rebuilds them.
_DERIVED: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


def derived(owner: nn.Module, key: object, sources: tuple[torch.Tensor | None, ...],
            build: Callable[..., Any], *, mods: tuple[nn.Module, ...] = (), extra: tuple = ()) -> Any:
    """``build(*sources)`` (run without autograd), kept per ``(owner, key)`` until a source
    changes, one of the submodules ``mods`` it reads is swapped for another, or one of the plain
    values ``extra`` (an eps) differs (at most 8 keys per owner: a few input sizes); None where
    no kept value may stand in for the computation: autograd on, ``torch.compile`` /
    ``jit.trace`` / ``torch.func``, tensor subclasses, inference tensors. The caller then
    computes in line as before."""
    if (torch.is_grad_enabled() or torch.compiler.is_compiling() or torch.jit.is_tracing()
            or torch._C._are_functorch_transforms_active()
            or any(t is not None and type(t) is not torch.Tensor and type(t) is not nn.Parameter
                   for t in sources)):
        return None
    try:
        state = (*((None if t is None else (t.data_ptr(), t._version)) for t in sources),
                 torch.is_inference_mode_enabled(), *extra)
    except RuntimeError:  # an inference tensor has no version counter: nothing to key on
        return None
    table = _DERIVED.get(owner)
    if table is None:
        table = _DERIVED[owner] = {}
    hit = table.get(key)
    # (equal states have their None sources in the same places)
    if (hit is not None and hit[2] == state and len(hit[0]) == len(mods)
            and all(r() is m for r, m in zip(hit[0], mods, strict=True))
            and all(r is None or r() is t for r, t in zip(hit[1], sources, strict=True))):
        return hit[3]
    with torch.no_grad():
        value = build(*sources)
    if len(table) >= 8:
        del table[next(iter(table))]
    table[key] = (tuple(weakref.ref(m) for m in mods),
                  tuple(None if t is None else weakref.ref(t) for t in sources), state, value)
    return value


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

