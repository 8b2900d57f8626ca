"""Per-call overhead of the two things every block runs on every forward: the shape check
and the attention-map hook (issue 19, goal 1: both together <= 2 us per call on CPU when
no map is being recorded).

Each row is a mean per call over ``--calls`` calls; the candidates run in turn within each
of ``--passes`` passes, so that all see the same machine load, and the table gives the
fastest pass, the median pass and the spread (max - min over passes) in microseconds.
"before" rows are the implementations this issue replaced, copied here verbatim as the
reference: ``check_shape`` parsing its pattern and building its message pieces on every
call, and ``AttentionMap`` as a plain ``nn.Module`` identity (the cost of ``nn.Identity``).
The floor rows are the cheapest Python can do: the same integer comparisons written inline,
and a bare function returning its argument.

    PYTHONPATH=src python benchmarks/overhead.py
    PYTHONPATH=src python benchmarks/overhead.py --format markdown
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from blockzoo.attention.maps import AttentionMap, record_attention
from blockzoo.bench.report import FORMATS, render
from blockzoo.checks import ShapeError, check_shape


def _format_before(letters: Sequence[str], fixed: dict[str, int]) -> str:
    parts = [f"{s}={fixed[s]}" if s in fixed else s for s in letters]
    return "(" + ", ".join(parts) + ")"


def check_shape_before(x: torch.Tensor, pattern: str, *, name: str, arg: str = "input",
                       **fixed: int | None) -> dict[str, int]:
    """``blockzoo.checks.check_shape`` before issue 19 (the reference row)."""
    letters = pattern.split()
    fixed_sizes = {k: v for k, v in fixed.items() if v is not None}
    unknown = set(fixed_sizes) - set(letters)
    if unknown:
        raise TypeError(f"check_shape: {sorted(unknown)} not in pattern {pattern!r}")
    star = bool(letters) and letters[0] == "*"
    named = letters[1:] if star else letters
    if not isinstance(x, torch.Tensor):
        raise ShapeError(f"{name}: expected {arg} tensor {_format_before(letters, fixed_sizes)}, "
                         f"got {type(x).__name__}")
    shape = tuple(x.shape)
    rank_ok = len(shape) >= len(named) if star else len(shape) == len(named)
    tail = shape[len(shape) - len(named):] if rank_ok else ()
    if rank_ok and all(fixed_sizes.get(s, n) == n for s, n in zip(named, tail, strict=True)):
        return dict(zip(named, tail, strict=True))
    raise ShapeError(f"{name}: expected {arg} {_format_before(letters, fixed_sizes)}, got {shape}")


def per_call_us(fns: dict[str, Callable[[], object]], calls: int, passes: int) -> dict[str, list[float]]:
    """Mean microseconds per call of each function, one value per pass, candidates alternated."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():  # warm-up
        for _ in range(calls // 10 + 1):
            f()
    for _ in range(passes):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                f()
            out[k].append((time.perf_counter() - t0) / calls * 1e6)
    return out


def candidates(channels: int) -> dict[str, Callable[[], object]]:
    x = torch.zeros(8, channels, 8, 8)
    amap, identity = AttentionMap("channel"), nn.Identity()

    def bare(t: torch.Tensor) -> torch.Tensor:
        return t

    return {
        "check_shape (B C H W, C fixed)": lambda: check_shape(x, "B C H W", name="SE", C=channels),
        "check_shape before": lambda: check_shape_before(x, "B C H W", name="SE", C=channels),
        "check_shape (* H W)": lambda: check_shape(x, "* H W", name="X", W=8),
        "check_shape (* H W) before": lambda: check_shape_before(x, "* H W", name="X", W=8),
        "floor: inline x.dim() == 4 and x.shape[1] == C": lambda: x.dim() == 4 and x.shape[1] == channels,
        "AttentionMap, not recording": lambda: amap(x),
        "AttentionMap before (= nn.Identity call)": lambda: identity(x),
        "floor: bare function": lambda: bare(x),
        "combined: check_shape + AttentionMap": lambda: (check_shape(x, "B C H W", name="SE", C=channels),
                                                          amap(x)),
        "combined before": lambda: (check_shape_before(x, "B C H W", name="SE", C=channels), identity(x)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--passes", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--format", choices=FORMATS, default="table")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.machine()} | python {platform.python_version()} | torch {torch.__version__} | "
          f"threads {torch.get_num_threads()} | input (8, {args.channels}, 8, 8) fp32 | "
          f"{args.calls} calls x {args.passes} passes, candidates alternated")
    # a recording must still see the map (the fast path does not lose it)
    holder = nn.Sequential(AttentionMap("channel"))
    with record_attention(holder) as maps:
        holder(torch.ones(1))
    assert "0" in maps, "AttentionMap lost its recording"

    times = per_call_us(candidates(args.channels), args.calls, args.passes)
    rows = [{"call": k, "us min": min(v), "us median": statistics.median(v), "us spread": max(v) - min(v)}
            for k, v in times.items()]
    print(render(rows, args.format, ["call", "us min", "us median", "us spread"]))


if __name__ == "__main__":
    main()
