"""The run directory: ``config.json``, ``metrics.csv``, ``curves.png``, ``grad_flow.png``.

Written by rank 0 only. Figures use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_curves", "plot_grad_flow", "write_config", "write_grad_stats", "write_metrics"]


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_config(run_dir: Path, config: Mapping[str, Any], extra: Mapping[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    _atomic_text(run_dir / "config.json", json.dumps({**config, **extra}, indent=2, default=str) + "\n")


def write_metrics(run_dir: Path, history: Sequence[Mapping[str, Any]]) -> None:
    if not history:
        return
    cols = list(history[0])
    tmp = run_dir / ".metrics.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for row in history:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    os.replace(tmp, run_dir / "metrics.csv")


def write_grad_stats(run_dir: Path, grad_history: Sequence[Mapping[str, float]]) -> None:
    if not grad_history:
        return
    names = list(grad_history[0])
    tmp = run_dir / ".grad_stats.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", *names])
        for e, row in enumerate(grad_history, 1):
            w.writerow([e, *(f"{row[n]:.6g}" for n in names)])
    os.replace(tmp, run_dir / "grad_stats.csv")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_curves(run_dir: Path, history: Sequence[Mapping[str, Any]], metric: str, title: str) -> Path:
    """Loss and the metric per epoch, train vs val."""
    plt = _pyplot()
    ep = [h["epoch"] for h in history]
    panels = [("loss", "loss")] + ([(metric, "accuracy")] if metric == "acc" else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        ax.plot(ep, [h[f"train_{key}"] for h in history], "o-", ms=3, label="train")
        ax.plot(ep, [h[f"val_{key}"] for h in history], "o-", ms=3, label="val")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        if key == "loss":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    out = run_dir / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_grad_flow(run_dir: Path, grad_history: Sequence[Mapping[str, float]], title: str) -> Path:
    """Mean gradient norm of each layer's parameters, one line per epoch (log scale)."""
    plt = _pyplot()
    names = list(grad_history[0])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(names) + 2), 4.2))
    cmap = plt.get_cmap("viridis")
    n = len(grad_history)
    for e, row in enumerate(grad_history):
        ax.plot(range(len(names)), [max(row[k], 1e-30) for k in names], "o-", ms=3,
                color=cmap(e / max(1, n - 1)), label=f"epoch {e + 1}" if e in (0, n - 1) else None)
    ax.set_xticks(range(len(names)), names, rotation=70, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("mean gradient norm")
    ax.set_xlabel("parameter (input side -> output side)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    out = run_dir / "grad_flow.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
