"""The tutorials' three-conv CNN, trained with the engine on the bundled digits.

    python examples/cnn_images.py            # digits (8x8), ~1 minute on one CPU thread
    python examples/cnn_images.py --quick    # a few hundred images, one epoch (tests)
    python examples/cnn_images.py --data cifar10 --data-dir data   # when the files are there

The network is ``cifar_cnn`` (conv5x5-ReLU-pool x 3, flatten, two linear layers: the
CIFAR-10 tutorial network). Beside it the same data trains a pixel MLP and LeNet-5 where
the images are large enough, so the printed table shows what convolutions buy. CIFAR-10
is used only when its files are already under ``--data-dir`` (nothing is downloaded).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

import blockzoo
from blockzoo import data as datasets
from blockzoo import train as engine
from blockzoo.bench.flops import count_params


def cifar_present(data_dir: Path) -> bool:
    root = data_dir / "cifar10"
    return (root / "cifar-10-batches-py").is_dir() or (root / "cifar-10-python.tar.gz").is_file()


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="digits", help="digits (bundled) or cifar10 (if present)")
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--out", type=Path, default=Path("runs/cnn_images"))
    p.add_argument("--quick", action="store_true", default=os.environ.get("BLOCKZOO_QUICK") == "1")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    if args.data == "cifar10" and not cifar_present(args.data_dir):
        print(f"CIFAR-10 files not found under {args.data_dir / 'cifar10'}; using the bundled digits")
        args.data = "digits"
    data = datasets.load_data(args.data, data_dir=args.data_dir, quick=args.quick)
    epochs = 1 if args.quick else args.epochs
    c, h, w = data.shape
    models = {
        "cifar_cnn": dict(),
        "mlp_classifier": dict(img_size=(h, w), hidden_features=(128,)),
    }
    if min(h, w) >= 9:
        models["lenet5"] = dict()

    results = {}
    print(f"data {data.name}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test, "
          f"images {data.shape}, {data.num_classes} classes")
    for name, kw in models.items():
        torch.manual_seed(0)
        model = blockzoo.create_model(name, num_classes=data.num_classes, in_chans=c, **kw)
        res = engine.fit(model, data, epochs=epochs, batch_size=64, lr=3e-3, quiet=True,
                  run_dir=args.out / name, output=blockzoo.spec(name).output, overwrite=True)
        results[name] = res.test["acc"]
        print(f"{name:15s} params {count_params(model):8,d}   test acc {res.test['acc']:.3f}   "
              f"({res.seconds:.1f} s, curves in {args.out / name})")
    return results


if __name__ == "__main__":
    main()
