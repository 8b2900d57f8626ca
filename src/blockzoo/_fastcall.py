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

:func:`conv_bn` goes one step further for a stock ``Conv2d`` followed by a stock
``BatchNorm2d`` in eval without autograd: one convolution with the norm folded in, kept per
norm by :func:`derived`, the one cache of tensors computed from parameters
(``tests/test_conv_bn_fold.py``). What blocks keep through it lives in ``blockzoo._kept``, CPU
stand-ins for single ops in ``blockzoo._fastops``; :func:`module_path` turns every one of them
off.
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

__all__ = ["call", "conv_bn", "direct", "folded_conv_bn", "invoke", "listened", "module_path", "own",
           "sequential"]


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


# ---------------------------------------------------------------------------- derived tensors

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


# ---------------------------------------------------------------------------- conv + BN folding

# Folds of at most this many weight elements are kept (1 MiB in float32 each, so the extra
# memory is bounded by the small convolutions, where a fold per call would cost more than the
# norm it saves); larger weights are folded per call when the output is at least 8x the weight.
_KEEP_ELEMENTS = 1 << 18


def conv_bn(conv: nn.Module, bn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``bn(conv(x))``; for a stock ``Conv2d`` and an eval-mode ``BatchNorm2d`` that nobody
    hooks, with autograd off, one convolution with the norm folded into it::

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
            or torch.is_grad_enabled() or torch.compiler.is_compiling() or torch.jit.is_tracing()
            or torch._C._are_functorch_transforms_active() or listened(conv, bn)):
        return None
    cp, bp, bb = conv._parameters, bn._parameters, bn._buffers
    if not ("weight" in cp and "bias" in cp and "weight" in bp and "bias" in bp):
        return None  # a parametrized tensor (computed through the attribute): the module path
    mean, var = bb["running_mean"], bb["running_var"]
    tensors = (cp["weight"], cp["bias"], bp["weight"], bp["bias"], mean, var)
    w, eps = tensors[0], bn.eps
    if mean is None or bn.num_features != w.shape[0]:
        return None
    if w.numel() <= _KEEP_ELEMENTS:  # kept per norm by derived(), refolded on any change
        return derived(bn, "conv_bn", tensors, lambda *t: _folded(*t, eps), extra=(eps,))
    if x.numel() // max(1, x.shape[1]) * w.shape[0] < 8 * w.numel():
        return None  # a large weight on a small input: folding per call costs more than the norm
    with torch.no_grad():
        return _folded(*tensors, eps)


def _folded(w: torch.Tensor, b: torch.Tensor | None, gamma: torch.Tensor | None, beta: torch.Tensor | None,
            mean: torch.Tensor, var: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(W', b') of the conv with the eval norm folded in (see :func:`conv_bn`)."""
    scale = torch.rsqrt(var + eps)
    if gamma is not None:
        scale = scale * gamma
    bias = -mean * scale if b is None else (b - mean) * scale
    if beta is not None:
        bias = bias + beta
    return w * scale.view(-1, 1, 1, 1), bias


def folded_conv_bn(conv: nn.Module, bn: nn.Module,
                   x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The (weight, bias) of ``bn(conv(x))`` folded into one convolution, exactly those
    :func:`conv_bn` convolves with (cached, refolded on any change), for a caller that applies
    the folded map with another kernel (a 1 x 1 convolution as a matrix product); None wherever
    :func:`conv_bn` takes the module path."""
    return _fold(conv, bn, x)
