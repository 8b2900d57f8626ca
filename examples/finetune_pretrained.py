"""Fine-tune a pretrained ResNet-18 with CBAM attached, on a folder of images.

    python examples/finetune_pretrained.py            # 2 x 40 images at 64x64, 4 epochs
    python examples/finetune_pretrained.py --quick    # 2 x 10 images, one epoch (tests)

What a user does with torchvision's ``resnet18-f37072fd.pth`` or timm's
``resnet18.a1_in1k`` ``model.safetensors`` (README, "Pretrained weights"); the same run
from the command line::

    blockzoo train --model resnet18 --data folder:shapes --weights resnet18.pth \\
        --freeze 'conv1.*,bn1.*,layer1.*' --attention cbam --head-lr 1e-2 --lr 1e-3

No download happens here: a randomly initialised ResNet-18, saved in torchvision's
layout (``downsample.0`` / ``downsample.1`` where blockzoo says ``shortcut.conv`` /
``shortcut.bn``), stands in for the pretrained file. ``weights=`` loads it (the
1000-class head is left fresh for the folder's 2 classes), ``freeze`` keeps the stem
and the first stage fixed, ``attention="cbam"`` puts a CBAM block (Woo et al., arXiv
1807.06521) on every residual branch, and the new parameters (head, CBAM) train at
``head_lr``. The script checks that the frozen weights come out unchanged.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import blockzoo
from blockzoo import train as engine
from blockzoo.attach import Attached


def stand_in_checkpoint(path: Path) -> Path:
    """A random ResNet-18 state dict with torchvision's names, as ``torch.save`` writes it."""
    torch.manual_seed(0)
    state = blockzoo.create_model("resnet18").state_dict()
    renamed = {re.sub(r"shortcut\.conv\.", "downsample.0.", re.sub(r"shortcut\.bn\.", "downsample.1.", k)): v
               for k, v in state.items()}
    torch.save(renamed, path)
    return path


def image_folder(root: Path, per_class: int, size: int = 64) -> Path:
    """root/disc/*.png and root/bar/*.png: bright shapes at random places on a noisy ground."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size] / size
    for kind in ("disc", "bar"):
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            cy, cx = rng.uniform(0.3, 0.7, 2)
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < 0.03 if kind == "disc" else abs(yy - cy) < 0.08
            img = rng.uniform(0, 80, (size, size, 3)) + mask[..., None] * rng.uniform(120, 255, 3)
            Image.fromarray(img.clip(0, 255).astype(np.uint8), "RGB").save(root / kind / f"{i:03d}.png")
    return root


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--out", type=Path, default=Path("runs/finetune_pretrained"))
    p.add_argument("--quick", action="store_true", default=os.environ.get("BLOCKZOO_QUICK") == "1")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    weights = stand_in_checkpoint(args.out / "resnet18.pth")
    folder = image_folder(args.out / "shapes", 10 if args.quick else 40)
    before = torch.load(weights, weights_only=True)
    res = engine.train(dict(
        model="resnet18", data=f"folder:{folder}", weights=str(weights),
        freeze="conv1.*,bn1.*,layer1.*", attention="cbam", head_lr=1e-2, lr=1e-3, optimizer="adamw",
        epochs=1 if args.quick else args.epochs, batch_size=None if args.quick else 16, seed=0,
        runs_dir=str(args.out / "runs"), name="resnet18_cbam", overwrite=True, quiet=True, plots=False))
    after = dict(res.model.named_parameters())
    frozen = after["layer1.0.bn2.module.weight"].detach().cpu()
    assert torch.equal(frozen, before["layer1.0.bn2.weight"]), "a frozen parameter moved"
    trained = sum(p.numel() for p in after.values() if p.requires_grad)
    blocks = [n for n, m in res.model.named_modules() if isinstance(m, Attached)]
    print(f"CBAM after {len(blocks)} modules ({blocks[0]}, ...); trainable {trained:,} of "
          f"{sum(p.numel() for p in after.values()):,} parameters")
    print(f"test accuracy {res.test['acc']:.3f} after {res.steps} steps; run in {res.run_dir}")
    return res.test


if __name__ == "__main__":
    main()
