"""The degradation problem (He et al., arXiv 1512.03385, Fig. 1 and 4) on the bundled digits.

    python examples/degradation.py            # 9- and 33-layer nets, ~3 minutes on one CPU thread
    python examples/degradation.py --quick    # 3- and 5-layer nets, one epoch (tests)

A deeper plain stack of conv-BN-ReLU layers should fit the training set at least as
well as a shallower one (the extra layers could learn the identity), yet with plain
SGD it trains worse: that is the degradation problem, an optimisation difficulty, not
overfitting (the *training* loss is higher). The same depth with residual connections
(``resnet_basic`` blocks: y = relu(F(x) + x)) trains as well as or better than the
shallow net. The figure puts the three training-loss curves beside the per-layer
gradient norms of the two deep nets in the first epoch (``degradation.png`` in
``--out``). With batch norm the plain net's gradients do not vanish — as the paper
argues, degradation is not a vanishing-gradient problem; the deep plain net is just
harder to optimise, and the identity shortcuts make it easy.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from torch import nn

from blockzoo import data as datasets
from blockzoo import train as engine
from blockzoo.conv import BasicBlock, ConvBnAct


def plain_net(depth: int, width: int, in_chans: int, num_classes: int) -> nn.Module:
    """``depth`` conv-BN-ReLU layers, global pooling, a linear head."""
    convs = [ConvBnAct(in_chans, width, 3)] + [ConvBnAct(width, width, 3) for _ in range(depth - 1)]
    return nn.Sequential(*convs, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


def residual_net(depth: int, width: int, in_chans: int, num_classes: int) -> nn.Module:
    """The same ``depth`` conv layers: a stem conv and (depth - 1) / 2 basic residual blocks."""
    blocks = [BasicBlock(width) for _ in range((depth - 1) // 2)]
    return nn.Sequential(ConvBnAct(in_chans, width, 3), *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, num_classes))


def conv_grad_norms(grad_history: list[dict[str, float]], model: nn.Module) -> list[float]:
    """Each conv weight's gradient norm (input to output), averaged over the first epoch's steps.

    The first epoch, where all nets start from a similar loss: later epochs mostly
    show how far each net has got (a smaller loss gives smaller gradients).
    """
    names = [n for n, p in model.named_parameters() if p.dim() == 4]
    return [grad_history[0][n] for n in names]


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shallow", type=int, default=9, help="conv layers of the shallow plain net")
    p.add_argument("--deep", type=int, default=33, help="conv layers of the deep nets (odd)")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--out", type=Path, default=Path("runs/degradation"))
    p.add_argument("--quick", action="store_true", default=os.environ.get("BLOCKZOO_QUICK") == "1")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.quick:
        args.shallow, args.deep, args.epochs = 3, 5, 1
    if args.deep % 2 == 0:
        raise SystemExit(f"--deep={args.deep} must be odd (a stem conv plus two per residual block)")
    data = datasets.load_data("digits", quick=args.quick)
    nets = {
        f"plain-{args.shallow}": lambda: plain_net(args.shallow, args.width, data.in_chans, data.num_classes),
        f"plain-{args.deep}": lambda: plain_net(args.deep, args.width, data.in_chans, data.num_classes),
        f"residual-{args.deep}": lambda: residual_net(args.deep, args.width, data.in_chans,
                                                      data.num_classes),
    }
    runs = {}
    for label, make in nets.items():
        torch.manual_seed(0)
        model = make()
        res = engine.fit(model, data, epochs=args.epochs, batch_size=64, optimizer="sgd", lr=0.05,
                  momentum=0.9, weight_decay=1e-4, warmup=0.0, quiet=True, grad_stats=True,
                  run_dir=args.out / label, overwrite=True)
        runs[label] = (res, model)
        print(f"{label:12s} final train loss {res.history[-1]['train_loss']:.4f}   "
              f"train acc {res.history[-1]['train_acc']:.3f}   test acc {res.test['acc']:.3f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for label, (res, _) in runs.items():
        ax1.plot([h["epoch"] for h in res.history], [h["train_loss"] for h in res.history],
                 marker="o", label=label)
    ax1.set(xlabel="epoch", ylabel="training loss", title="training loss (the degradation problem)")
    ax1.legend()
    for label in list(runs)[1:]:
        res, model = runs[label]
        norms = conv_grad_norms(res.grad_history, model)
        ax2.semilogy(range(1, len(norms) + 1), norms, marker=".", label=label)
    ax2.set(xlabel="conv layer (input -> output)", ylabel="mean gradient norm",
            title="gradient flow, first epoch")
    ax2.legend()
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "degradation.png", dpi=120)
    print(f"figure: {args.out / 'degradation.png'}")
    return {label: res.history[-1]["train_loss"] for label, (res, _) in runs.items()}


if __name__ == "__main__":
    main()
