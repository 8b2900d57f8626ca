"""Cost of every registered image attention block: parameters, FLOPs, forward+backward time.

Reads the registry (family "attention", input "image"), so blocks added later appear
with no edit here. Each block is built with its own defaults (the papers' settings) and
``channels`` = C, falling back to its registered example config where the defaults do
not fit C (column "config"), and with ``height``/``width`` set to the input size where its
constructor takes them (size-bound layers such as GFNet's global filter). Time is the
median of ``--repeats`` forward+backward passes in train mode after ``--warmup``
passes, with the input requiring grad (as inside a network), on one intra-op thread;
the last column is each block's time over SE's (the worked example) from the same run.

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

import torch

import blockzoo
from blockzoo.bench import count_flops, count_params
from blockzoo.bench.report import FORMATS, render


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
        return s.build(**over), "example"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fwd_bwd_ms(block: torch.nn.Module, x: torch.Tensor, warmup: int, repeats: int) -> float:
    def step() -> None:
        block.zero_grad(set_to_none=True)
        x.grad = None
        out = block(x)
        out.sum().backward()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


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
          f"train mode, forward+backward, warm-up {args.warmup}, median of {args.repeats}")
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
            row["fwd+bwd ms"] = fwd_bwd_ms(block, x.requires_grad_(), args.warmup, args.repeats)
        except Exception as e:  # report, don't hide: the row says what failed
            row["note"] = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
        rows.append(row)
    ref = next((r["fwd+bwd ms"] for r in rows if r["block"] == "se" and "fwd+bwd ms" in r), None)
    for r in rows:
        if ref and "fwd+bwd ms" in r:
            r["time / se"] = r["fwd+bwd ms"] / ref
    cols = ["block", "config", "params", "MFLOPs fwd", "fwd+bwd ms", "time / se", "note"]
    print(render(rows, args.format, cols))


if __name__ == "__main__":
    main()
