"""Measurement: parameter counts, FLOPs, timing, memory, the matmul yardstick, the runner."""

from blockzoo.bench.flops import count_flops, count_params
from blockzoo.bench.memory import peak_memory_bytes
from blockzoo.bench.peak import matmul_peak
from blockzoo.bench.runner import BenchResult, BenchSettings, bench_entry, run_bench
from blockzoo.bench.timing import Timing, time_call

__all__ = [
    "BenchResult",
    "BenchSettings",
    "Timing",
    "bench_entry",
    "count_flops",
    "count_params",
    "matmul_peak",
    "peak_memory_bytes",
    "run_bench",
    "time_call",
]
