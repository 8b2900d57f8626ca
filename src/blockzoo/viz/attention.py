"""Attention maps of registered blocks, read through the one documented hook.

Every attention block passes its weights or gates through an ``AttentionMap``
submodule; ``attention_maps`` runs one forward inside
``blockzoo.attention.maps.record_attention`` and returns what passed, with the
map's ``kind``. No block is known here by name: a new block that uses the hook
gets its figure for free.

How each kind is drawn:

- ``weights`` (B, h, N, M): one N x M heatmap per head (rows: queries, columns: keys);
  for image blocks whose queries and keys are the H*W pixels, also the centre pixel's
  row of head 0 as an H x W map over the image;
- ``spatial`` (B, 1 or C, H, W): the gate overlaid on the input image;
- ``channel`` (B, C, 1, 1) or (B, C): one bar per channel;
- anything else: the first sample's map, squeezed to 2-D where it can be.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo.attention.maps import AttentionMap, record_attention
from blockzoo.checks import ConfigError

__all__ = ["attention_maps", "plot_attention"]


def attention_maps(model: nn.Module, inputs: Sequence[Any]) -> dict[str, tuple[str, torch.Tensor]]:
    """``{qualified name: (kind, tensor)}`` for every ``AttentionMap`` in one eval forward."""
    kinds = {n: m.kind for n, m in model.named_modules() if isinstance(m, AttentionMap)}
    with torch.no_grad(), record_attention(model) as maps:
        model(*inputs)
    return {n: (kinds[n], t) for n, t in maps.items()}


def _image_panel(ax: Any, image: torch.Tensor | None, gate: torch.Tensor, title: str) -> None:
    g = gate.float()
    if g.dim() == 3:
        g = g.mean(0)  # (H, W): mean over gate channels
    if image is not None:
        base = image.float().mean(0)  # (H, W)
        if base.shape != g.shape:
            g = F.interpolate(g[None, None], size=base.shape, mode="nearest")[0, 0]
        ax.imshow(base.numpy(), cmap="gray")
        im = ax.imshow(g.numpy(), cmap="jet", alpha=0.45)
    else:
        im = ax.imshow(g.numpy(), cmap="viridis")
    ax.figure.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def plot_attention(
    model: nn.Module,
    inputs: Sequence[Any],
    path: str | Path = "attention.png",
    *,
    title: str = "",
    max_heads: int = 8,
    show: bool = False,
) -> Path:
    """Draw every attention map of ``model(*inputs)`` for the first sample; returns the PNG path."""
    from blockzoo.viz._figure import pyplot, save

    plt = pyplot(show)
    model = model.eval()
    maps = attention_maps(model, inputs)
    x0 = inputs[0][0] if isinstance(inputs[0], torch.Tensor) else None
    image = x0 if x0 is not None and x0.dim() == 3 else None
    panels: list[tuple[str, str, torch.Tensor]] = []
    if image is not None:
        panels.append(("input (mean over channels)", "input", image.float().mean(0)))
    for name, (kind, t) in maps.items():
        t0 = t[0].detach().float().cpu()
        if kind == "weights" and t0.dim() == 3:
            panels += [(f"{name} head {h}", "weights", t0[h]) for h in range(min(max_heads, t0.shape[0]))]
            if image is not None and t0.shape[-1] == t0.shape[-2] == image.shape[-2] * image.shape[-1]:
                hh, ww = image.shape[-2:]
                centre = (hh // 2) * ww + ww // 2
                row = t0[0, centre].reshape(hh, ww)  # (H, W): where the centre pixel looks
                panels.append((f"{name} head 0, query = centre pixel", "spatial", row))
        else:
            panels.append((name, kind, t0))
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.3 * rows), squeeze=False)
    for ax, (label, kind, t) in zip(axes.flat, panels, strict=False):
        squeezed = t.squeeze()
        if kind == "input":
            ax.imshow(t.numpy(), cmap="gray")
            ax.set_title(label, fontsize=8)
            ax.axis("off")
        elif kind == "weights" and t.dim() == 2:
            im = ax.imshow(t.numpy(), cmap="viridis", vmin=0)
            ax.set_xlabel("key")
            ax.set_ylabel("query")
            fig.colorbar(im, ax=ax, fraction=0.046)
            ax.set_title(label, fontsize=8)
        elif kind == "channel" or squeezed.dim() <= 1:
            v = squeezed.reshape(-1)
            ax.bar(range(v.numel()), v.numpy())
            ax.set_xlabel("channel")
            ax.set_ylabel("gate")
            ax.set_title(f"{label} ({kind})", fontsize=8)
        elif squeezed.dim() == 2 or (t.dim() == 3 and image is not None):
            _image_panel(ax, image, t if t.dim() == 3 else squeezed, f"{label} ({kind})")
        else:
            im = ax.imshow(t.reshape(-1, t.shape[-1]).numpy(), cmap="viridis")
            fig.colorbar(im, ax=ax, fraction=0.046)
            ax.set_title(f"{label} ({kind}) {tuple(t.shape)} flattened", fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save(fig, path, show=show)


def digit_input(s: Any, *, size: Sequence[int] | None = None, index: int = 0) -> tuple[torch.Tensor, ...]:
    """A handwritten digit from ``blockzoo.data``'s bundled digits as the input of image block ``s``.

    The grey image (1, 1, h, w) is resized to ``size`` (default: the block's example
    size), standardised and repeated over the block's input channels (so maps that
    compare channels with each other, such as DANet's channel affinity, come out uniform).
    """
    if s.input != "image":
        raise ConfigError(f"--input digits: {s.name} takes {s.input} input, not images")
    from blockzoo.data import load_data

    x = load_data("digits").test.x[index].float()
    x = x.reshape(1, 1, *x.shape[-2:])  # (1, 1, h, w)
    (example,) = s.make_input(batch=1, size=size)
    x = F.interpolate(x, size=tuple(example.shape[-2:]), mode="bilinear", align_corners=False)
    x = (x - x.mean()) / x.std().clamp_min(1e-6)
    return (x.expand(1, example.shape[1], -1, -1).contiguous(),)
