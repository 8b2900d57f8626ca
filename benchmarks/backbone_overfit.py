"""Can each backbone fit 64 images? A bug check for the backbone arena's low scores.

A model near chance in ``blockzoo arena --kind backbones`` is either under-trained by the
arena's small budget or broken. This trains the arena's model (registered example config,
the data resized to its example size, as the arena builds it) on the first 64 training
images, full batch, Adam at lr 3e-3 for ``--steps`` steps, and prints the training loss
before and after and the accuracy on those 64 images in eval mode (BatchNorm's running
statistics, so it can trail the training loss). A model that cannot drive its loss
towards 0 here has a defect; one that can is limited by the arena's budget. 1 thread.

    PYTHONPATH=src python benchmarks/backbone_overfit.py crossvit_tiny mobileone_s0 resmlp_tiny
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from blockzoo.bench.arena.one_run import arena_data, build_arena_model
from blockzoo.bench.arena.settings import BACKBONE, ArenaSettings
from blockzoo.registry import spec


def overfit(name: str, steps: int, settings: ArenaSettings) -> tuple[float, float, float, float]:
    """(first loss, last loss, eval accuracy on the 64 images, seconds) for one model."""
    data = arena_data(BACKBONE, name, settings, 0)
    x, y = data.train.x[:64].float(), data.train.y[:64]
    torch.manual_seed(0)
    model = build_arena_model(BACKBONE, name, data.in_chans, data.num_classes, settings, x[:2]).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    lossf = F.nll_loss if spec(name).output == "log_probs" else F.cross_entropy
    start, losses = time.perf_counter(), []
    for _ in range(steps):
        loss = lossf(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        acc = (model.eval()(x).argmax(1) == y).float().mean().item()
    return losses[0], losses[-1], acc, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="registered image classifiers")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = ArenaSettings.backbone_settings()
    print("| model | loss at step 1 | loss at last step | eval acc on the 64 | s |")
    print("|---|---:|---:|---:|---:|")
    for name in args.models:
        first, last, acc, secs = overfit(name, args.steps, settings)
        print(f"| {name} | {first:.3f} | {last:.4f} | {acc:.3f} | {secs:.0f} |", flush=True)


if __name__ == "__main__":
    main()
