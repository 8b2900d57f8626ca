"""Cost of every registered image attention block: parameters, FLOPs, forward+backward time.

Reads the registry (family "attention", input "image"), so blocks added later appear
with no edit here. Each block is built with its own defaults (the papers' settings) and
``channels`` = C, falling back to its registered example config where the defaults do
not fit C (column "config"), and with ``height``/``width`` set to the input size where its
constructor takes them (size-bound layers such as GFNet's global filter). Time is the
median of ``--repeats`` forward+backward passes in train mode after ``--warmup``
passes, with the input requiring grad (as inside a network), on one intra-op thread;
"ms min" is the fastest pass. The last column is each block's fastest pass over SE's
(the worked example), the two timed alternately pass by pass so that both see the same
load; on a shared, loaded machine the minimum is the steadier statistic.

    PYTHONPATH=src python benchmarks/attention_image.py                 # C=64, 32x32, batch 8
    PYTHONPATH=src python benchmarks/attention_image.py --format markdown

FLOPs come from ``blockzoo.bench.count_flops`` (torch's FlopCounterMode: matmuls,
convolutions, SDPA, 2 per multiply-accumulate; elementwise ops and FFTs uncounted).
"""

from __future__ import annotations

import argparse
import inspect
import platform
import statistics
import time
from collections.abc import Callable

import torch

import blockzoo
from blockzoo.bench import count_flops, count_params
from blockzoo.bench.report import FORMATS, render

# The ratio column's reference: SE, the worked plug-in example, timed alternately with
# each block so that both see the same load on a shared machine.
REFERENCE = "se"


def image_attention_blocks() -> list[str]:
    return [n for n in blockzoo.list_blocks("attention") if blockzoo.spec(n).input == "image"]


def build(name: str, channels: int, size: tuple[int, int]) -> tuple[torch.nn.Module, str]:
    """The block with its own defaults (the paper's settings) where they fit ``channels``.

    Arguments without a default (``num_classes``, ...) come from the example config. If
    the defaults do not fit (e.g. SA-Net's 64 groups need C >= 128) the whole example
    config is used instead; the returned label says which.
    """
    s = blockzoo.spec(name)
    params = inspect.signature(s.builder).parameters
    over: dict[str, object] = {"channels": channels}
    if "height" in params and "width" in params:
        over.update(height=size[0], width=size[1])
    required = {k: v for k, v in s.example.config.items()
                if k in params and params[k].default is inspect.Parameter.empty}
    try:
        return s.builder(**{**required, **over}), "defaults"
    except ValueError:
        return s.build_example(**over), "example"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_step(block: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        block.zero_grad(set_to_none=True)
        x.grad = None
        block(x).sum().backward()

    return step


def time_interleaved(step: Callable[[], None], ref: Callable[[], None] | None, warmup: int,
                     repeats: int) -> tuple[list[float], list[float]]:
    """Times (s) of ``step`` and of ``ref`` run alternately, so both see the same machine load."""
    for _ in range(warmup):
        step()
        if ref is not None:
            ref()
    times, ref_times = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        if ref is not None:
            t0 = time.perf_counter()
            ref()
            ref_times.append(time.perf_counter() - t0)
    return times, ref_times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--size", type=int, nargs=2, default=(32, 32), metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--format", choices=FORMATS, default="table")
    ap.add_argument("--only", nargs="*", help="restrict to these names")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    size = tuple(args.size)
    names = args.only or image_attention_blocks()
    print(f"machine: {cpu_name()} | {platform.system()} | "
          f"torch {torch.__version__} | threads {torch.get_num_threads()}")
    print(f"input: (B, C, H, W) = ({args.batch}, {args.channels}, {size[0]}, {size[1]}) float32, "
          f"train mode, forward+backward, warm-up {args.warmup}, {args.repeats} repeats, "
          f"each alternated with {REFERENCE!r}")
    x_ref = torch.randn(args.batch, args.channels, *size, requires_grad=True)
    ref_step = None
    if REFERENCE in blockzoo.list_blocks():
        torch.manual_seed(0)
        ref_step = make_step(build(REFERENCE, args.channels, size)[0].train(), x_ref)
    rows = []
    for name in names:
        row: dict[str, object] = {"block": name}
        try:
            torch.manual_seed(0)
            block, row["config"] = build(name, args.channels, size)
            x = torch.randn(args.batch, args.channels, *size)
            row["params"] = count_params(block)
            row["MFLOPs fwd"] = count_flops(block.eval(), (x,)) / 1e6
            block.train()
            times, ref_times = time_interleaved(make_step(block, x.requires_grad_()), ref_step,
                                                args.warmup, args.repeats)
            row["ms median"] = 1e3 * statistics.median(times)
            row["ms min"] = 1e3 * min(times)
            if ref_times:
                row[f"min / {REFERENCE} min"] = min(times) / min(ref_times)
        except Exception as e:  # report, don't hide: the row says what failed
            row["note"] = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
        rows.append(row)
    cols = ["block", "config", "params", "MFLOPs fwd", "ms median", "ms min",
            f"min / {REFERENCE} min", "note"]
    print(render(rows, args.format, cols))


if __name__ == "__main__":
    main()
