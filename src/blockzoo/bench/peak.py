"""This machine's dense matrix-multiply throughput, the yardstick for achieved GFLOP/s.

``matmul_peak`` times a square ``n x n @ n x n`` product (2 n^3 FLOPs) at the
requested dtype on the requested device, with the same thread setting as the
blocks it is compared with, and reports the best of its runs in GFLOP/s: a
measured ceiling, not a vendor's datasheet number.
"""

from __future__ import annotations

import torch

from blockzoo.bench.timing import time_call

__all__ = ["matmul_peak"]


def matmul_peak(
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    n: int | None = None,
    warmup: int = 2,
    repeats: int = 5,
) -> float:
    """Measured dense matmul GFLOP/s (best of ``repeats``) for ``n x n`` operands.

    ``n`` defaults to 512 on CPU and 4096 on CUDA: large enough to reach the
    machine's compute bound, small enough to measure in well under a second.
    """
    dev = torch.device(device)
    n = n or (4096 if dev.type == "cuda" else 512)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dev, dtype)
    b = torch.randn(n, n, generator=g).to(dev, dtype)
    t = time_call(lambda: torch.mm(a, b), warmup=warmup, repeats=repeats, device=dev)
    return 2 * n**3 / (t.min_ms * 1e-3) / 1e9
