"""Tables that depend only on sizes, built once per (arguments, device, dtype) (issue 19).

Position grids, relative-position indices and shift masks are pure functions of a few
integers, a device and a dtype, yet blocks rebuilt them on every forward: tens of small
ops and several copies per call (``tests/test_copies.py``). :func:`memo_table` wraps such a
builder so that eager calls reuse the tensor built for the same arguments.

- The table is kept outside any module: nothing enters ``state_dict``, ``deepcopy`` or
  ``load_state_dict``, and a new input size simply adds an entry (at most ``maxsize`` per
  builder, oldest dropped first).
- While ``torch.compile`` / ``torch.export`` trace, or ``torch.jit.trace`` records, the
  builder runs as before, so the traced graph is the one it always was.
- A table built under ``torch.inference_mode`` is an inference tensor, which autograd may
  not save: the mode is part of the key.

The tables returned are shared between calls: callers must not modify them in place.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

__all__ = ["memo_table"]

T = TypeVar("T")


def memo_table(maxsize: int = 32) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorator: cache a pure size-to-tensor builder by its (hashable) arguments."""

    def deco(build: Callable[..., T]) -> Callable[..., T]:
        cache: dict[Any, T] = {}

        @functools.wraps(build)
        def wrapper(*args: Any, **kwargs: Any) -> T:
            if torch.compiler.is_compiling() or torch.jit.is_tracing():
                return build(*args, **kwargs)
            key = (args, tuple(sorted(kwargs.items())), torch.is_inference_mode_enabled())
            hit = cache.get(key)
            if hit is None:
                hit = build(*args, **kwargs)
                if len(cache) >= maxsize:
                    del cache[next(iter(cache))]
                cache[key] = hit
            return hit

        wrapper.cache = cache  # type: ignore[attr-defined]
        return wrapper

    return deco
