"""Measurement: parameter counts, FLOPs, timing, memory, the matmul yardstick, the runner."""

from blockzoo.bench.flops import FlopReport, count_flops, count_params, flop_report
from blockzoo.bench.memory import peak_memory_bytes
from blockzoo.bench.peak import matmul_peak
from blockzoo.bench.runner import BenchResult, BenchSettings, bench_entry, run_bench
from blockzoo.bench.timing import Timing, time_call

__all__ = [
    "BenchResult",
    "BenchSettings",
    "FlopReport",
    "Timing",
    "bench_entry",
    "count_flops",
    "count_params",
    "flop_report",
    "matmul_peak",
    "peak_memory_bytes",
    "run_bench",
    "time_call",
]
