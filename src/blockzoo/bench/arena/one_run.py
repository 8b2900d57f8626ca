"""One arena run: the model for (kind, block), trained with the arena's budget, and timed.

The backbone arena's data rule: the image data are resized (bilinear, antialiased when
shrinking) to the model's registered example size (``candidates.input_size``), the size
its conformance tests run at; the model is built at its example config with the data's
channels and classes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from blockzoo.bench.arena.backbones import ArenaConvNet, ArenaTransformer
from blockzoo.bench.arena.block_config import block_config
from blockzoo.bench.arena.candidates import input_size
from blockzoo.bench.arena.settings import BACKBONE, BASELINE, ArenaSettings
from blockzoo.registry import spec

if TYPE_CHECKING:
    from blockzoo.data import Data

__all__ = ["arena_data", "build_arena_model", "measure_latency", "train_one"]


def _resized(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    return nn.functional.interpolate(x.float(), size=size, mode="bilinear", align_corners=False,
                                     antialias=True)


def arena_data(kind: str, block: str, settings: ArenaSettings, seed: int) -> Data:
    """The data of one run, in the model's input kind; for a backbone, every split resized to
    the model's example size (``digits`` 8x8 -> 32x32 for a model registered at 32x32)."""
    from dataclasses import replace

    from blockzoo.data import TensorData, load_data

    data = load_data(settings.data_for(kind), seed=seed, quick=settings.small_data,
                     data_dir=settings.data_dir)
    data = data.view("sequence" if kind == "tokens" else "image")
    if kind != BACKBONE:
        return data
    size = input_size(block)
    splits = {"train": data.train, "val": data.val, "test": data.test}
    return replace(data, **{k: TensorData(_resized(split.x, size), split.y) for k, split in splits.items()})


def build_arena_model(kind: str, block: str, in_chans: int, num_classes: int, settings: ArenaSettings,
                      example: torch.Tensor | None = None) -> nn.Module:
    """The backbone of ``kind`` with ``block`` in it (``none``: without attention); for the
    backbone arena (kind ``backbone``), the model ``block`` itself.

    The block gets its registered example config (minus the width, which the backbone
    sets); for tokens, maximum-length arguments are raised to the example's length. A
    backbone gets its example config with ``in_chans`` and ``num_classes`` of the data.
    """
    if kind == BACKBONE:
        s = spec(block)
        return s.build_example(**{s.width_arg: in_chans, "num_classes": num_classes})
    if kind == "image":
        net = ArenaConvNet(in_chans, num_classes, width=settings.width)
        if block != BASELINE:
            from blockzoo.attach import attach

            net, _ = attach(net, block, after=lambda name, _m: name in ("stage1", "stage2"),
                            example_input=example, **block_config(block))
        return net
    mixer = None
    if block != BASELINE:
        builder = spec(block).builder
        cfg = block_config(block, None if example is None else example.shape[1])

        def mixer(d: int) -> nn.Module:
            return builder(d, **cfg)

    return ArenaTransformer(in_chans, num_classes, mixer, dim=settings.dim, depth=settings.depth)


def train_one(kind: str, block: str, seed: int, settings: ArenaSettings) -> dict[str, Any]:
    """Train one (block, seed) with the arena's budget; returns its result row."""
    from blockzoo.bench.flops import count_flops, count_params
    from blockzoo.train.loop import fit

    data = arena_data(kind, block, settings, seed)
    example = data.train.x[:2].float()
    torch.manual_seed(seed)
    model = build_arena_model(kind, block, data.in_chans, data.num_classes, settings, example)
    output = spec(block).output if kind == BACKBONE else "logits"
    result = fit(model, data, dict(epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr,
                                   seed=seed, quiet=True, device="cpu", plots=False), output=output)
    model = result.model.eval()
    x = data.test.x[:1].float()
    return dict(test_acc=float(result.test[result.metric]), params=count_params(model),
                flops=count_flops(model, (x,)), train_s=float(result.seconds))


def measure_latency(kind: str, block: str, settings: ArenaSettings, *, warmup: int = 5,
                    repeats: int = 20) -> float:
    """Median eval-forward time (ms) of the arena model on one batch of test inputs.

    Measured in the calling process after training, one model at a time, so parallel
    training jobs do not disturb it; the weights do not matter for the time, so the
    model is freshly built.
    """
    from blockzoo.bench.timing import time_call

    data = arena_data(kind, block, settings, 0)
    x = data.test.x[: settings.batch_size].float()
    torch.manual_seed(0)
    model = build_arena_model(kind, block, data.in_chans, data.num_classes, settings, x[:2]).eval()

    def forward() -> None:
        with torch.no_grad():
            model(x)

    return time_call(forward, warmup=warmup, repeats=repeats).median_ms
