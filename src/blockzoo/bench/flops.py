"""Parameter and FLOP counts.

FLOPs come from PyTorch's own ``torch.utils.flop_counter.FlopCounterMode``,
which counts a multiply-accumulate as two FLOPs (so a Linear(in, out) on B rows
is ``2 * B * in * out``) and covers matmuls and convolutions; elementwise ops
(activations, norms, softmax, pooling, interpolation) are not counted.

Scaled dot-product attention: torch's table knows the CUDA kernels (flash,
memory-efficient, cuDNN) but not the ones SDPA dispatches to on CPU
(``aten._scaled_dot_product_flash_attention_for_cpu`` and its backward) or on
other backends (``aten._scaled_dot_product_fused_attention_overrideable``,
``aten._scaled_dot_product_attention_math_for_mps``), so on CPU it counted 0.
``FLOP_FORMULAS`` adds them, from the shapes alone, with the same maths as
torch's formulas for the CUDA kernels (letters: B batch, h query heads, N query
length, M key length, d query/key head dim, d_v value head dim):

    forward  = 2 B h N M d  (Q K^T)  +  2 B h N M d_v  (A V)
    backward = 2 B h N M (3 d + 2 d_v)   (recompute Q K^T; dA = dO V^T;
                                          dV = A^T dO; dQ = dS K; dK = dS^T Q)

(the backward of SDPA's math path, which CPU takes when the shapes rule the fused
kernel out, is counted from its own matmuls: autograd kept the weights, so no
recompute, 2 B h N M (2 d + 2 d_v)).
A mask, causal or not, does not change the count: like torch's flash-attention
formulas we count the full N x M product (a causal kernel may skip about half
of it; the math path that SDPA falls back to computes all of it).

``flop_report`` also names the ops that ran but have no formula and look
compute-heavy (matmul-like, attention, recurrent kernels, FFTs): the count
leaves them out, and ``blockzoo info`` says so instead of silently counting 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "FLOP_FORMULAS", "FlopReport", "count_flops", "count_params", "flop_counter", "flop_report",
    "sdpa_backward_flops", "sdpa_forward_flops",
]

aten = torch.ops.aten


def count_params(module: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# --------------------------------------------------------------------------- SDPA


def _sdpa_dims(q: Sequence[int], k: Sequence[int], v: Sequence[int]) -> tuple[int, int, int, int]:
    """(B h, N, M, d) from q (..., N, d), k (..., M, d), v (..., M, d_v); any leading dims."""
    *lead, n, d = q
    m = k[-2]
    if k[-1] != d or v[-2] != m:
        raise ValueError(f"SDPA shapes do not fit: q={tuple(q)}, k={tuple(k)}, v={tuple(v)}")
    bh = 1
    for s in lead:  # B and the query's heads (GQA: keys broadcast to them)
        bh *= s
    return bh, n, m, d


def sdpa_forward_flops(q: Sequence[int], k: Sequence[int], v: Sequence[int]) -> int:
    """``2 B h N M d + 2 B h N M d_v``: Q K^T, then the weights times V (mask or not)."""
    bh, n, m, d = _sdpa_dims(q, k, v)
    return 2 * bh * n * m * (d + v[-1])


def sdpa_backward_flops(q: Sequence[int], k: Sequence[int], v: Sequence[int]) -> int:
    """``2 B h N M (3 d + 2 d_v)``: Q K^T recomputed, dA = dO V^T, dV = A^T dO, dQ, dK."""
    bh, n, m, d = _sdpa_dims(q, k, v)
    return 2 * bh * n * m * (3 * d + 2 * v[-1])


def _sdpa_fwd(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kw: Any) -> int:
    return sdpa_forward_flops(query, key, value)


def _sdpa_bwd(grad_out: Any, query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None,
              **kw: Any) -> int:
    return sdpa_backward_flops(query, key, value)


def _candidates() -> dict[Any, Callable[..., int]]:
    names = {
        "_scaled_dot_product_flash_attention_for_cpu": _sdpa_fwd,
        "_scaled_dot_product_flash_attention_for_cpu_backward": _sdpa_bwd,
        "_scaled_dot_product_fused_attention_overrideable": _sdpa_fwd,
        "_scaled_dot_product_fused_attention_overrideable_backward": _sdpa_bwd,
        "_scaled_dot_product_attention_math_for_mps": _sdpa_fwd,
    }
    # only the ops this torch has and its own table lacks: torch's formula wins once it has one
    known = FlopCounterMode(display=False).flop_registry
    ops = {getattr(aten, n): f for n, f in names.items() if hasattr(aten, n)}
    return {op: f for op, f in ops.items() if op not in known}


#: Formulas (shapes -> FLOPs) for the ops torch's counter does not know, by op packet.
FLOP_FORMULAS: dict[Any, Callable[..., int]] = _candidates()


def flop_counter() -> FlopCounterMode:
    """torch's ``FlopCounterMode`` with ``FLOP_FORMULAS`` added (every FLOP count in blockzoo)."""
    return FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS)


# --------------------------------------------------------------------------- uncounted ops

# Words in an aten op's name that mark real arithmetic (matmul-like, attention, recurrent
# kernels, FFTs); an op that has them and no formula is reported as uncounted.
_HEAVY_WORDS = frozenset({
    "mm", "bmm", "addmm", "baddbmm", "addbmm", "matmul", "mv", "addmv", "dot", "vdot", "addr",
    "linear", "einsum", "tensordot", "attention", "rnn", "lstm", "gru", "fft", "r2c", "c2r", "c2c",
    "convolution", "conv", "conv1d", "conv2d", "conv3d", "depthwise2d", "depthwise3d",
})
# Elementwise gate arithmetic of a recurrent step (its matmuls run as separate, counted ops).
_LIGHT = frozenset({"_thnn_fused_lstm_cell", "_thnn_fused_gru_cell",
                    "_thnn_fused_lstm_cell_backward_impl", "_thnn_fused_gru_cell_backward"})


def _is_heavy(name: str) -> bool:
    return name not in _LIGHT and any(w in _HEAVY_WORDS for w in name.split("_"))


class _OpRecorder(TorchDispatchMode):
    """Records the packet of every aten op that reaches it."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[Any] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops.add(func._overloadpacket)
        return func(*args, **(kwargs or {}))


@dataclass(frozen=True)
class FlopReport:
    """FLOPs of one call, and the compute-heavy ops that ran without a formula (not counted)."""

    flops: int
    uncounted: tuple[str, ...]


def flop_report(module: nn.Module, inputs: Sequence[Any], *, backward: bool = False) -> FlopReport:
    """FLOPs of one forward (and backward, if asked) of ``module(*inputs)``, and its uncounted ops."""
    counter, recorder = flop_counter(), _OpRecorder()
    # the recorder sits under the counter, so it sees the ops the counter ran (after decomposing)
    with recorder, counter:
        if backward:
            out = module(*inputs)
            tensors = [t for t in torch.utils._pytree.tree_leaves(out) if t.requires_grad]
            torch.autograd.backward(tensors, [torch.ones_like(t) for t in tensors])
        else:
            with torch.no_grad():
                module(*inputs)
    names = {op.__name__ for op in recorder.ops
             if op not in counter.flop_registry and isinstance(op, torch._ops.OpOverloadPacket)}
    return FlopReport(int(counter.get_total_flops()), tuple(sorted(n for n in names if _is_heavy(n))))


def count_flops(module: nn.Module, inputs: Sequence[Any], *, backward: bool = False) -> int:
    """FLOPs of one forward (and backward, if asked) of ``module(*inputs)``."""
    return flop_report(module, inputs, backward=backward).flops
