"""Train form vs deploy form of the re-param blocks: parameters, inference time, output difference.

    PYTHONPATH=src python benchmarks/reparam.py [--repeats 10] [--warmup 3] [--threads 1]

For RepVGG, ACNet, DBB and MobileOne (and RepMLP) at C=64, 56x56, batch 8, float32,
eval mode, no grad: the multi-branch training form (BatchNorm with randomised
running statistics, so the difference column is meaningful) and the same block after
``reparameterize()``, timed side by side in one run (median of ``--repeats`` after
``--warmup`` calls, forms interleaved so machine noise hits both alike; the
speed-up is printed from the medians and, less sensitive to a busy machine, from
the minima). "FLOP ratio" counts only convs and matmuls (torch's flop counter):
where the speed-up exceeds it, the rest is the memory traffic of the BatchNorms,
branch sums and pooling that the deploy form no longer has.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch
from torch import nn

from blockzoo.bench.flops import count_flops
from blockzoo.mlp import RepMLPBlock
from blockzoo.rep import ACBlock, DiverseBranchBlock, MobileOneBlock, RepVGGBlock


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                if m.bias is not None:  # (DBB's 1x1-avg branch has a BatchNorm without a bias)
                    m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--size", type=int, default=56)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", nargs="*", help="restrict to blocks whose name starts with these words")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    c = args.channels
    blocks = {
        "RepVGG 3x3": lambda: RepVGGBlock(c),
        "ACNet 3x3": lambda: ACBlock(c),
        "DBB 3x3": lambda: DiverseBranchBlock(c),
        "MobileOne dw 3x3 n=4": lambda: MobileOneBlock(c, groups=c, num_branches=4),
        "MobileOne pw 1x1 n=4": lambda: MobileOneBlock(c, kernel_size=1, num_branches=4),
        # the authors' RepMLP-Res50 blocks (DingXiaoH/RepMLP, repmlp_resnet.py: h = w = 7,
        # fc3_groups 4 (Light), reparam_conv_k (1, 3, 5)); RepMLPNet (2112.11081) uses (1, 3)
        "RepMLP 7x7 g=4 k=1,3,5": lambda: RepMLPBlock(c, 7, groups=4, kernel_sizes=(1, 3, 5)),
        "RepMLP 7x7 g=4 k=1,3": lambda: RepMLPBlock(c, 7, groups=4, kernel_sizes=(1, 3)),
    }
    x = torch.randn(args.batch, c, args.size, args.size)
    print(f"machine: {_cpu_name()}; torch {torch.__version__}; threads {torch.get_num_threads()}")
    print(f"input (B, C, H, W) = {tuple(x.shape)} float32, eval, no_grad; "
          f"warm-up {args.warmup}, median of {args.repeats} repeats, forms interleaved")
    header = (f"{'block':<22} {'params train':>12} {'params deploy':>13} {'t train ms':>10} "
              f"{'t deploy ms':>11} {'speed-up':>8} {'(min)':>6} {'FLOP ratio':>10} {'max|diff|':>10}")
    print(header)
    print("-" * len(header))
    for name, make in blocks.items():
        if args.only and not any(name.startswith(w) for w in args.only):
            continue
        train = randomise_bn(make()).eval()
        deploy = copy.deepcopy(train).reparameterize()
        with torch.no_grad():
            y_t, y_d = train(x), deploy(x)
            diff = (y_t - y_d).abs().max().item()
            for _ in range(args.warmup):
                train(x)
                deploy(x)
            tt, td = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                train(x)
                t1 = time.perf_counter()
                deploy(x)
                t2 = time.perf_counter()
                tt.append(t1 - t0)
                td.append(t2 - t1)
        p_t = sum(p.numel() for p in train.parameters())
        p_d = sum(p.numel() for p in deploy.parameters())
        mt, md = statistics.median(tt) * 1e3, statistics.median(td) * 1e3
        best = min(tt) / min(td)
        flop_ratio = count_flops(train, (x,)) / count_flops(deploy, (x,))
        print(f"{name:<22} {p_t:>12,} {p_d:>13,} {mt:>10.2f} {md:>11.2f} {mt / md:>7.2f}x {best:>5.2f}x "
              f"{flop_ratio:>9.2f}x {diff:>10.2e}")


if __name__ == "__main__":
    main()
