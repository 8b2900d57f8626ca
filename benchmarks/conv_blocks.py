"""Convolution-block benchmark: ratios measured side by side in one run.

1. Dynamic Convolution and CondConv: the per-sample kernels applied as one grouped
   convolution (the batch folded into the groups, what the blocks do) vs a Python loop
   of one ``F.conv2d`` per sample (the naive way), same mixed kernels; ``nn.Conv2d`` of
   the same shape as the floor.
2. Inception (GoogLeNet 3a, C = 192): with the 1x1 reductions vs the naive block, FLOPs
   (torch's counter) and time.
3. Involution (K = 7, 16 channels per group) vs a 7x7 depthwise conv and a dense 3x3 conv
   of the same width: what generating a kernel per position costs.

Timing: the fastest of ``--repeat`` runs after ``--warmup`` runs, forward only (eval,
no_grad), the compared functions interleaved run by run so that noise hits both.

    python benchmarks/conv_blocks.py [--threads 1] [--repeat 10] [--warmup 3]
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo.attention.maps import record_attention
from blockzoo.bench.flops import count_flops
from blockzoo.conv import CondConv, DynamicConv, InceptionBlock, Involution


def timed(fns: dict[str, Callable[[], object]], warmup: int, repeat: int) -> dict[str, float]:
    """Fastest run of each function, in seconds, interleaved run by run."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    best = {k: float("inf") for k in fns}
    for _ in range(repeat):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def per_sample_loop(block: nn.Module, x: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    """One conv per sample with its mixed kernel: the naive reference."""
    w = torch.einsum("bk,koihw->boihw", mix, block.weight)
    b = mix @ block.bias
    return torch.cat([F.conv2d(x[i : i + 1], w[i], b[i], block.stride, block.padding, block.dilation,
                               block.groups) for i in range(x.shape[0])])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, warm-up {args.warmup}, repeat {args.repeat} (fastest run)")

    b = args.batch
    x = torch.randn(b, 64, 16, 16)
    print(f"\n1. per-sample kernels, x {tuple(x.shape)}, 64 -> 64 channels, 3x3, K = 4 kernels")
    head = ["ours ms", "loop ms", "conv ms", "loop/ours", "ours/conv"]
    widths = [9, 9, 9, 10, 10]
    print(f"{'block':12s} " + " ".join(f"{c:>{n}s}" for c, n in zip(head, widths, strict=True)))
    conv = nn.Conv2d(64, 64, 3, padding=1).eval()
    for name, block in (("dynamic_conv", DynamicConv(64, 64, 3, num_kernels=4)),
                        ("condconv", CondConv(64, 64, 3, num_experts=4))):
        block.eval()
        with torch.no_grad():
            with record_attention(block) as maps:
                ours = block(x)
            mix = maps["attn_map"]
            torch.testing.assert_close(per_sample_loop(block, x, mix), ours, rtol=1e-4, atol=1e-4)
            t = timed({"ours": lambda block=block: block(x),
                       "loop": lambda block=block, mix=mix: per_sample_loop(block, x, mix),
                       "conv": lambda: conv(x)}, args.warmup, args.repeat)
        print(f"{name:12s} {t['ours'] * 1e3:9.2f} {t['loop'] * 1e3:9.2f} {t['conv'] * 1e3:9.2f} "
              f"{t['loop'] / t['ours']:10.2f} {t['ours'] / t['conv']:10.2f}")

    x = torch.randn(max(1, b // 4), 192, 28, 28)
    print(f"\n2. Inception 3a, x {tuple(x.shape)}")
    reduced = InceptionBlock(192, 64, 96, 128, 16, 32, 32).eval()
    naive = InceptionBlock(192, 64, None, 128, None, 32, None).eval()
    fr, fn = count_flops(reduced, (x,)), count_flops(naive, (x,))
    with torch.no_grad():
        t = timed({"reduced": lambda: reduced(x), "naive": lambda: naive(x)}, args.warmup, args.repeat)
    print(f"GFLOPs reduced {fr / 1e9:.2f}, naive {fn / 1e9:.2f}, ratio {fr / fn:.2f}; "
          f"time reduced {t['reduced'] * 1e3:.1f} ms, naive {t['naive'] * 1e3:.1f} ms, "
          f"ratio {t['reduced'] / t['naive']:.2f}")

    x = torch.randn(max(1, b // 4), 64, 28, 28)
    print(f"\n3. Involution K = 7, x {tuple(x.shape)}")
    inv = Involution(64, 7, group_channels=16).eval()
    dw = nn.Conv2d(64, 64, 7, padding=3, groups=64).eval()
    dense = nn.Conv2d(64, 64, 3, padding=1).eval()
    with torch.no_grad():
        t = timed({"inv": lambda: inv(x), "dw": lambda: dw(x), "dense": lambda: dense(x)},
                  args.warmup, args.repeat)
    print(f"involution {t['inv'] * 1e3:.2f} ms, 7x7 depthwise {t['dw'] * 1e3:.2f} ms, 3x3 dense "
          f"{t['dense'] * 1e3:.2f} ms; involution / depthwise {t['inv'] / t['dw']:.2f}, "
          f"involution / dense {t['inv'] / t['dense']:.2f}")


if __name__ == "__main__":
    main()
