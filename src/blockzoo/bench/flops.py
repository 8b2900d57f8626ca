"""Parameter and FLOP counts.

FLOPs come from PyTorch's own ``torch.utils.flop_counter.FlopCounterMode``,
which counts a multiply-accumulate as two FLOPs (so a Linear(in, out) on B rows
is ``2 * B * in * out``) and covers matmuls, convolutions and SDPA; elementwise
ops are not counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_flops", "count_params"]


def count_params(module: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def count_flops(module: nn.Module, inputs: Sequence[Any], *, backward: bool = False) -> int:
    """FLOPs of one forward (and backward, if asked) of ``module(*inputs)``."""
    counter = FlopCounterMode(display=False)
    with counter:
        if backward:
            out = module(*inputs)
            tensors = [t for t in torch.utils._pytree.tree_leaves(out) if t.requires_grad]
            torch.autograd.backward(tensors, [torch.ones_like(t) for t in tensors])
        else:
            with torch.no_grad():
                module(*inputs)
    return int(counter.get_total_flops())
