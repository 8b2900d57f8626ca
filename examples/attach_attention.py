"""Attach CBAM to a CNN you wrote yourself, train both, and compare.

    python examples/attach_attention.py              # digits, 3 seeds, ~1 minute
    python examples/attach_attention.py --quick      # small data, one epoch, one seed (tests)

``UserCNN`` below is plain PyTorch: no blockzoo inside. ``blockzoo.attach`` puts a CBAM
block (Woo et al., arXiv 1807.06521) after each of its BatchNorm layers, reading each
one's channel count from a dry run. The attached network starts from the same conv
weights as the plain one (checked bit for bit), so the comparison isolates the
attention. On 8x8 digits both networks are near their ceiling: treat a difference
smaller than the spread over seeds as no difference. (SE stands in when CBAM is not
registered in this install.)
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
from pathlib import Path

import torch
from torch import nn

import blockzoo
from blockzoo import data as datasets
from blockzoo import train as engine
from blockzoo.bench.flops import count_params


class UserCNN(nn.Module):
    """A small CNN as a user writes it: two conv stages, global pooling, a linear head."""

    def __init__(self, in_chans: int, num_classes: int, width: int = 32) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        )
        self.stage2 = nn.Sequential(
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage2(self.stage1(x)))


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--block", default="cbam", help="a registered image attention block")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("runs/attach_attention"))
    p.add_argument("--quick", action="store_true", default=os.environ.get("BLOCKZOO_QUICK") == "1")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    block = args.block
    if block not in blockzoo.list_blocks():
        print(f"{block!r} is not registered in this install; using 'se'")
        block = "se"
    epochs, seeds = (1, 1) if args.quick else (args.epochs, args.seeds)
    data = datasets.load_data("digits", quick=args.quick)
    acc: dict[str, list[float]] = {"plain": [], f"+{block}": []}
    for seed in range(seeds):
        torch.manual_seed(seed)
        plain = UserCNN(data.in_chans, data.num_classes)
        attached = copy.deepcopy(plain)
        before = {k: v.clone() for k, v in attached.named_parameters()}
        attached, where = blockzoo.attach(attached, block, after=nn.BatchNorm2d, reduction=8,
                                          example_input=data.train.x[:2].float())
        after = dict(attached.named_parameters())
        # the plain network's weights, now under "<name>.module.<param>", are untouched
        for name, value in before.items():
            mod, _, leaf = name.rpartition(".")
            key = f"{mod}.module.{leaf}" if mod in where else name
            assert torch.equal(after[key], value), name
        if seed == 0:
            print(f"attached {block} after {where}")
            print(f"params: plain {count_params(plain):,}, with {block} {count_params(attached):,}")
        for label, model in (("plain", plain), (f"+{block}", attached)):
            res = engine.fit(model, data, epochs=epochs, batch_size=64, lr=3e-3, seed=seed, quiet=True,
                      run_dir=args.out / f"{label.strip('+')}_seed{seed}", overwrite=True)
            acc[label].append(res.test["acc"])
    for label, values in acc.items():
        spread = f" +- {statistics.stdev(values):.3f}" if len(values) > 1 else ""
        print(f"{label:10s} test acc {statistics.mean(values):.3f}{spread}  over {len(values)} seed(s)")
    return acc


if __name__ == "__main__":
    main()
