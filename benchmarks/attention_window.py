"""Fused vs explicit softmax in the window / transformer-style image attention blocks.

Each block here computes softmax attention through ``F.scaled_dot_product_attention``
and switches to an explicit softmax(QK^T + bias) V while ``record_attention`` is on
(so the weights can be read). This prints both paths' forward+backward time on the
same input, side by side in one run, and their ratio: what the fused path buys.
Blocks whose maths is not a q.k softmax (Outlook, criss-cross, ACmix's one-query
windows) always take their explicit path and show a ratio of about 1.

    PYTHONPATH=src python benchmarks/attention_window.py              # C=64, 32x32, batch 8
    PYTHONPATH=src python benchmarks/attention_window.py --format markdown
"""

from __future__ import annotations

import argparse
import inspect
import platform
import statistics
import time
from contextlib import nullcontext

import torch

import blockzoo
from blockzoo.attention.maps import record_attention
from blockzoo.bench.report import FORMATS, render

BLOCKS = ["halo_attention", "outlook_attention", "coatnet_relative_attention", "acmix",
          "deformable_attention", "crossformer_sda", "crossformer_lda", "moa_attention",
          "criss_cross_attention", "axial_attention", "mobilevit_block"]


def fwd_bwd_ms(block: torch.nn.Module, x: torch.Tensor, explicit: bool, warmup: int, repeats: int) -> float:
    def step() -> None:
        block.zero_grad(set_to_none=True)
        x.grad = None
        block(x).sum().backward()

    times = []
    with record_attention(block) if explicit else nullcontext():
        for _ in range(warmup):
            step()
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
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--format", choices=FORMATS, default="table")
    ap.add_argument("--only", nargs="*", help="restrict to these names")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()} | {platform.system()} | "
          f"torch {torch.__version__} | threads {torch.get_num_threads()}")
    print(f"input: (B, C, H, W) = ({args.batch}, {args.channels}, {args.size[0]}, {args.size[1]}) "
          f"float32, train mode, forward+backward, warm-up {args.warmup}, median of {args.repeats}; "
          "each block with its own defaults")
    rows = []
    for name in args.only or BLOCKS:
        s = blockzoo.spec(name)
        params = inspect.signature(s.builder).parameters
        required = {k: v for k, v in s.example.config.items()
                    if k in params and params[k].default is inspect.Parameter.empty}
        torch.manual_seed(0)
        block = s.builder(**{**required, "channels": args.channels}).train()
        x = torch.randn(args.batch, args.channels, *args.size, requires_grad=True)
        fused = fwd_bwd_ms(block, x, False, args.warmup, args.repeats)
        explicit = fwd_bwd_ms(block, x, True, args.warmup, args.repeats)
        rows.append({"block": name, "fused ms": fused, "explicit ms": explicit,
                     "explicit / fused": explicit / fused})
    print(render(rows, args.format, ["block", "fused ms", "explicit ms", "explicit / fused"]))


if __name__ == "__main__":
    main()
