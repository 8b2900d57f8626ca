"""Shapes through a network: every layer's output shape, parameters and FLOPs.

``layer_table(model, inputs)`` runs one forward with a forward hook on every
module (input and output shapes, in call order) inside PyTorch's
``FlopCounterMode`` with blockzoo's extra formulas (``bench.flops.flop_counter``:
FLOPs per module, 2 per multiply-accumulate, SDPA on every backend). Each row is
one module that computes or owns something *itself*: every leaf module, plus any
container that owns parameters directly (a class token) or runs FLOP-counted ops
in its own forward (an SDPA call). A row's params are the module's own
(``recurse=False``), its FLOPs its own minus its children's, so the rows add up
exactly to ``count_params(model)`` and ``count_flops(model, inputs)`` — the
numbers ``blockzoo info`` prints. Conv and pool rows show the output-size
arithmetic ``floor((in + 2 p - d (k - 1) - 1) / s) + 1`` for each spatial dim.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from blockzoo.bench.flops import flop_counter

__all__ = ["LayerRow", "conv_arithmetic", "layer_table", "plot_shapes", "table_rows"]


@dataclass
class LayerRow:
    """One module's share of a forward."""

    name: str
    type: str
    in_shape: str
    out_shape: str
    params: int
    flops: int
    arithmetic: str = ""
    calls: int = 0


def _shape_str(obj: Any) -> str:
    shapes = [tuple(t.shape) for t in tree_leaves(obj) if isinstance(t, torch.Tensor)]
    return ", ".join("(" + ", ".join(map(str, s)) + ")" for s in shapes)


def _tuple(v: Any, n: int) -> tuple[Any, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_POOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)


def conv_arithmetic(module: nn.Module, in_shape: Sequence[int]) -> str:
    """The output-size formula of a conv/pool layer with its numbers, one per spatial dim.

    ``floor((in + 2 p - d (k - 1) - 1) / s) + 1`` (ceil for pools in ``ceil_mode``);
    '' for other modules.
    """
    if not isinstance(module, _CONV + _POOL):
        return ""
    nd = 1 if "1d" in type(module).__name__ else 3 if "3d" in type(module).__name__ else 2
    spatial = list(in_shape[-nd:])
    k = _tuple(module.kernel_size, nd)
    s = _tuple(module.stride if module.stride is not None else module.kernel_size, nd)
    d = _tuple(getattr(module, "dilation", 1), nd)
    pad = module.padding
    if isinstance(pad, str):
        if pad == "same":
            return "; ".join(f"{i}->{i} (padding='same')" for i in spatial)
        pad = 0
    p = _tuple(pad, nd)
    rnd = math.ceil if getattr(module, "ceil_mode", False) else math.floor
    fn = "ceil" if rnd is math.ceil else "floor"
    parts = []
    for i, kk, ss, dd, pp in zip(spatial, k, s, d, p, strict=True):
        o = rnd((i + 2 * pp - dd * (kk - 1) - 1) / ss) + 1
        span = f"{kk}" if dd == 1 else f"{dd}*({kk}-1)+1"
        parts.append(f"{fn}(({i}+2*{pp}-{span})/{ss})+1={o}")
    return "; ".join(parts)


def layer_table(model: nn.Module, inputs: Sequence[Any]) -> list[LayerRow]:
    """Rows (call order) whose params and FLOPs sum to the model's totals; see the module doc."""
    names = {m: n for n, m in model.named_modules()}
    seen: dict[str, LayerRow] = {}
    order: list[str] = []
    handles = []

    def hook(mod: nn.Module, args: Any, out: Any) -> None:
        name = names[mod]
        row = seen.get(name)
        if row is None:
            in_shape = _shape_str(args)
            first = next((a for a in tree_leaves(args) if isinstance(a, torch.Tensor)), None)
            arith = conv_arithmetic(mod, first.shape) if first is not None else ""
            row = LayerRow(name or "(root)", type(mod).__name__, in_shape, _shape_str(out), 0, 0, arith)
            seen[name] = row
        row.calls += 1

    def pre(mod: nn.Module, args: Any) -> None:
        name = names[mod]
        if name not in order:
            order.append(name)

    for m in names:
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(hook))
    counter = flop_counter()
    try:
        with torch.no_grad(), counter:
            model(*inputs)
    finally:
        for h in handles:
            h.remove()

    counts = counter.get_flop_counts()
    root = type(model).__name__

    def total(name: str) -> int:
        key = root if not name else f"{root}.{name}"
        return int(sum(counts.get(key, {}).values()))

    owned: set[int] = set()
    rows: list[LayerRow] = []
    for name, mod in model.named_modules():
        if name not in seen and name not in order:
            seen[name] = LayerRow(name or "(root)", type(mod).__name__, "", "(not called)", 0, 0)
            order.append(name)
    for name in order:
        mod = model.get_submodule(name)
        row = seen[name]
        own = [p for p in mod.parameters(recurse=False) if id(p) not in owned]
        owned.update(id(p) for p in own)
        row.params = sum(p.numel() for p in own)
        children = [f"{name}.{c}" if name else c for c, _ in mod.named_children()]
        row.flops = total(name) - sum(total(c) for c in children)
        leaf = not children
        if leaf or row.params or row.flops:
            rows.append(row)
    return rows


TABLE_COLUMNS = ["layer", "type", "output", "params", "flops", "arithmetic"]


def table_rows(rows: Sequence[LayerRow]) -> list[dict[str, Any]]:
    """Rows as dicts for ``blockzoo.bench.report.render``, with a TOTAL row last."""
    out = [
        dict(layer=r.name, type=r.type, output=r.out_shape, params=r.params, flops=r.flops,
             arithmetic=r.arithmetic)
        for r in rows
    ]
    out.append(dict(layer="TOTAL", type="", output="", params=sum(r.params for r in rows),
                    flops=sum(r.flops for r in rows), arithmetic=""))
    return out


def plot_shapes(rows: Sequence[LayerRow], path: str | Path = "shapes.png", *, title: str = "",
                show: bool = False) -> Path:
    """Bars of FLOPs and params per layer (call order, top to bottom); returns the PNG path.

    Layers with neither parameters nor counted FLOPs (activations, identities) are left out.
    """
    from blockzoo.viz._figure import pyplot, save

    plt = pyplot(show)
    rows = [r for r in rows if r.params or r.flops] or list(rows)
    labels = [f"{r.name} ({r.type})" for r in rows]
    y = list(range(len(rows)))
    fig, (a1, a2) = plt.subplots(1, 2, sharey=True, figsize=(12, max(3.0, 0.22 * len(rows) + 1.2)))
    a1.barh(y, [r.flops for r in rows], color="tab:blue")
    a1.set_xlabel(f"FLOPs per forward (total {sum(r.flops for r in rows):,})")
    a2.barh(y, [r.params for r in rows], color="tab:orange")
    a2.set_xlabel(f"parameters (total {sum(r.params for r in rows):,})")
    a1.set_yticks(y, labels, fontsize=7 if len(rows) < 60 else 5)
    a1.invert_yaxis()
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.97) if title else None)
    return save(fig, path, show=show)
