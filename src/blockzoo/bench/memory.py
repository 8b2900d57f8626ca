"""Peak memory of one call.

CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``,
minus what was allocated before the call.

CPU: PyTorch's profiler with ``profile_memory=True`` records every tensor
allocation and free made by PyTorch's CPU allocator, each with the running
total of bytes allocated since profiling began; the peak is the largest running
total during the call. This is the PyTorch profiler's memory tracking, not an
allocator hook: it sees tensor storage only (not Python objects or the
allocator's own caches), and tensors that were alive before the call are not
counted (the figure is the extra memory the call needed at its worst moment).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.profiler import ProfilerActivity, profile

__all__ = ["peak_memory_bytes"]


def _walk(nodes: list) -> Iterator:
    for n in nodes:
        yield n
        yield from _walk(n.children)


def _cpu_peak(fn: Callable[[], object]) -> int:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:  # the profiler's event tree: every allocation with its running total
        from torch._C._profiler import _EventType

        tree = prof.profiler.kineto_results.experimental_event_tree()
        totals = [
            n.extra_fields.total_allocated
            for n in _walk(tree)
            if n.tag == _EventType.Allocation and n.extra_fields.device.type == "cpu"
        ]
    except (ImportError, AttributeError):  # the same events, through the public trace export
        totals = _trace_totals(prof)
    return max([0, *totals])


def _trace_totals(prof: profile) -> list[int]:
    import json
    import os
    import tempfile

    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    finally:
        os.unlink(path)
    return [int(e["args"]["Total Allocated"]) for e in events
            if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type") == 0]


def _cuda_peak(fn: Callable[[], object], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - before)


def peak_memory_bytes(fn: Callable[[], object], device: torch.device | str = "cpu") -> int:
    """Bytes of tensor memory ``fn()`` needs at its peak, above what was allocated before."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return _cuda_peak(fn, dev)
    return _cpu_peak(fn)
