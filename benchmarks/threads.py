"""Intra-op threads: training-step time of small registered models with 1 thread vs N.

Why the CLI's ``--threads`` defaults to 1 and the tests pin one thread. Each row
times one forward + backward + AdamW step of a model at its example size x 8 with 1
thread and with N threads, alternating the two repeat by repeat in one process, and
prints the medians and their ratio (N threads / 1 thread; above 1 means N is slower).

    python benchmarks/threads.py               # N = every core of this machine
    python benchmarks/threads.py --threads 2 --repeats 30
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from blockzoo.bench.report import render
from blockzoo.registry import spec

MODELS = ("mnist1d_cnn", "mlp_classifier", "lenet5", "gru_classifier", "vit_tiny", "resnet18")


def step_time(name: str, threads: int, model: torch.nn.Module, opt: torch.optim.Optimizer,
              x: tuple[torch.Tensor, ...]) -> float:
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    out = model(*x)
    out = out[0] if isinstance(out, tuple) else out
    out.float().square().mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="N (default: all cores)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args()
    rows = []
    for name in MODELS:
        s = spec(name)
        torch.manual_seed(0)
        model = s.build_example().train()
        opt = torch.optim.AdamW(model.parameters())
        x = s.make_input(batch=8 * 2)
        for _ in range(args.warmup):
            step_time(name, 1, model, opt, x)
            step_time(name, args.threads, model, opt, x)
        one, many = [], []
        for _ in range(args.repeats):
            one.append(step_time(name, 1, model, opt, x))
            many.append(step_time(name, args.threads, model, opt, x))
        m1, mn = statistics.median(one), statistics.median(many)
        rows.append({"model": name, "1 thread ms": round(1e3 * m1, 3),
                     f"{args.threads} threads ms": round(1e3 * mn, 3), "ratio": round(mn / m1, 2)})
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}; "
          f"batch 16 at each example size; {args.warmup} warm-up, {args.repeats} repeats, medians")
    print(render(rows, "markdown"))


if __name__ == "__main__":
    main()
