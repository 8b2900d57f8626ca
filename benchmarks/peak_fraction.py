"""Large attention blocks against this machine's measured matmul peak (issue 19, goal 6).

Multi-head attention and a ViT (pre-norm) encoder block at N=1024 tokens, dim 512, 8 heads
(MLP ratio 4), eval under ``no_grad``, fp32: achieved GFLOP/s = FLOPs of one forward
(``blockzoo.bench.count_flops``: matmuls, convs and SDPA counted, 2 per multiply-add;
elementwise ops not counted) / its median time, divided by the dense matmul GFLOP/s
measured in the same run with the same thread count (``blockzoo.bench.peak.matmul_peak``,
before and after the blocks, the better of the two). Two yardsticks, because on a shared
CPU they differ by up to 5x: the n=512 square product (``blockzoo bench``'s peak: 1 MiB
operands that stay in cache) and the n=1024 one (4 MiB operands, the working set of the
blocks' own products, which then stream from memory). The issue's target is >= 0.5.

Each block's row also splits its time: the same forward's linear layers alone (their
matmuls) and the SDPA core alone, so a low fraction can be traced to its part.

    PYTHONPATH=src python benchmarks/peak_fraction.py                 # 1 thread
    PYTHONPATH=src python benchmarks/peak_fraction.py --threads 2 --batch 2
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from blockzoo.bench import count_flops
from blockzoo.bench.peak import matmul_peak
from blockzoo.bench.report import FORMATS, render
from blockzoo.registry import spec


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


def peaks() -> tuple[float, float]:
    return matmul_peak("cpu", n=512, repeats=7), matmul_peak("cpu", n=1024, repeats=3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--format", choices=FORMATS, default="table")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    B, N, C, h = args.batch, args.tokens, args.dim, args.heads
    d = C // h
    x = torch.randn(B, N, C)
    blocks = {
        "multi_head_attention": spec("multi_head_attention").build(dim=C, num_heads=h).eval(),
        "transformer_encoder_block (ViT, pre-norm)": spec("transformer_encoder_block").build(
            dim=C, num_heads=h, mlp_ratio=4.0, norm_first=True).eval(),
    }
    before = peaks()
    rows = []
    with torch.no_grad():
        q = torch.randn(B, h, N, d)
        k, v = torch.randn_like(q), torch.randn_like(q)
        sdpa_ms = median_ms(lambda: F.scaled_dot_product_attention(q, k, v), args.repeats)
        sdpa_flops = 4 * B * h * N * N * d
        for name, block in blocks.items():
            flops = count_flops(block, (x,))
            ms = median_ms(lambda block=block: block(x), args.repeats)
            lin = [m for m in block.modules() if isinstance(m, torch.nn.Linear)]
            ins = {m: torch.randn(B * N, m.in_features) for m in lin}
            lin_ms = median_ms(lambda lin=lin, ins=ins: [F.linear(ins[m], m.weight, m.bias) for m in lin],
                               args.repeats)
            rows.append({"block": name, "GFLOP": flops / 1e9, "ms": ms, "GFLOP/s": flops / ms / 1e6,
                         "linears ms": lin_ms, "SDPA ms": sdpa_ms,
                         "other ms": ms - lin_ms - sdpa_ms})
        rows.append({"block": "SDPA core alone (B, h, N, d)", "GFLOP": sdpa_flops / 1e9, "ms": sdpa_ms,
                     "GFLOP/s": sdpa_flops / sdpa_ms / 1e6})
    after = peaks()
    p512, p1024 = max(before[0], after[0]), max(before[1], after[1])
    for r in rows:
        r["of n=512 peak"] = r["GFLOP/s"] / p512
        r["of n=1024 peak"] = r["GFLOP/s"] / p1024
    print(f"machine: {platform.machine()} ({platform.processor() or '?'}) | torch {torch.__version__} | "
          f"threads {torch.get_num_threads()} | B={B} N={N} dim={C} heads={h} | eval, no_grad, fp32 | "
          f"median of {args.repeats}")
    print(f"matmul peak GFLOP/s, n=512: {before[0]:.1f} before, {after[0]:.1f} after; "
          f"n=1024: {before[1]:.1f} before, {after[1]:.1f} after")
    print(render(rows, args.format, ["block", "GFLOP", "ms", "GFLOP/s", "of n=512 peak", "of n=1024 peak",
                                     "linears ms",
                                     "SDPA ms", "other ms"]))


if __name__ == "__main__":
    main()
