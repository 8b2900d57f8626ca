"""Measurement: parameter counts, FLOPs, timing and memory of blocks."""

from blockzoo.bench.flops import count_flops, count_params

__all__ = ["count_flops", "count_params"]
