"""Activations and their derivatives, the derivative taken by autograd.

The functions are the modules ``blockzoo.act.create_act`` returns — the same the
MLP and every block use — so the figure shows what training differentiates:
ReLU's derivative is 0 or 1, sigmoid's peaks at 0.25 at x = 0, tanh's at 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from blockzoo.act import create_act

__all__ = ["DEFAULT_ACTIVATIONS", "activation_curves", "plot_activations"]

DEFAULT_ACTIVATIONS = ("relu", "prelu", "sigmoid", "tanh", "gelu", "silu")


def activation_curves(
    names: Sequence[str] = DEFAULT_ACTIVATIONS, x: torch.Tensor | None = None
) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``{name: (x, f(x), f'(x))}`` with f from ``create_act`` and f' from autograd.

    ``x`` defaults to 801 points on [-8, 8] (so 0 is one of them). The derivative
    is ``d sum(f(x)) / dx``, exact for the elementwise activations of ``blockzoo.act``.
    At a kink (ReLU at 0) it is the value PyTorch's backward uses (0 for ReLU).
    """
    if x is None:
        x = torch.linspace(-8, 8, 801, dtype=torch.float64)
    out = {}
    for name in names:
        act = create_act(name).to(torch.float64)
        xs = x.detach().to(torch.float64).clone().requires_grad_(True)
        y = act(xs)
        (dy,) = torch.autograd.grad(y.sum(), xs)
        out[name] = (xs.detach(), y.detach(), dy.detach())
    return out


def plot_activations(
    names: Sequence[str] = DEFAULT_ACTIVATIONS, path: str | Path = "activations.png", *, show: bool = False
) -> Path:
    """One panel per activation: f(x) and f'(x) (autograd) over [-8, 8]; returns the PNG path."""
    from blockzoo.viz._figure import pyplot, save

    plt = pyplot(show)
    curves = activation_curves(names)
    cols = min(3, len(curves))
    rows = -(-len(curves) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (name, (x, y, dy)) in zip(axes.flat, curves.items(), strict=False):
        ax.plot(x, y, label="f(x)", lw=2)
        ax.plot(x, dy, label="f'(x) (autograd)", lw=1.5, ls="--")
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_title(name)
        ax.set_xlabel("x")
        ax.legend(fontsize=7, loc="upper left")
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    fig.suptitle("activations from blockzoo.act.create_act and their derivatives by autograd")
    fig.tight_layout()
    return save(fig, path, show=show)
