"""Wall-clock timing: the median and spread of repeated runs after warm-up.

On CPU each run is timed with ``time.perf_counter``; on CUDA with a pair of
``torch.cuda.Event`` per run and one synchronisation before reading them, so
kernel launches are not mistaken for kernel time. The spread is the
interquartile range (75th minus 25th percentile), robust to the odd slow run a
shared machine produces.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from blockzoo.checks import ConfigError

__all__ = ["Timing", "time_call"]


@dataclass(frozen=True)
class Timing:
    """Times of ``repeats`` runs in milliseconds, after ``warmup`` untimed runs."""

    times_ms: tuple[float, ...]
    warmup: int

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def spread_ms(self) -> float:
        """Interquartile range (p75 - p25); 0 for fewer than two runs."""
        if len(self.times_ms) < 2:
            return 0.0
        q = statistics.quantiles(self.times_ms, n=4, method="inclusive")
        return q[2] - q[0]

    @property
    def min_ms(self) -> float:
        return min(self.times_ms)


def _is_cuda(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda"


def time_call(
    fn: Callable[[], object], *, warmup: int = 3, repeats: int = 10, device: torch.device | str = "cpu"
) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then time ``repeats`` runs of it.

    Raises ``ValueError`` for ``repeats < 1`` or ``warmup < 0``.
    """
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"time_call: repeats={repeats} must be >= 1 and warmup={warmup} >= 0")
    for _ in range(warmup):
        fn()
    if _is_cuda(device):
        torch.cuda.synchronize(device)
        pairs = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            pairs.append((start, end))
        torch.cuda.synchronize(device)
        times = tuple(float(s.elapsed_time(e)) for s, e in pairs)
    else:
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        times = tuple(ts)
    return Timing(times, warmup)
