"""Figures of benchmark rows: time per block (bars) and FLOPs against time (scatter).

Drawn with matplotlib's Agg backend, so they work without a display.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_bench"]


def plot_bench(rows: Sequence[Mapping[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Write a PNG with forward/train time per block and a FLOPs-vs-forward-time scatter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    rows = sorted(rows, key=lambda r: r["fwd_ms"])
    names = [r["name"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, max(3.5, 0.28 * len(rows) + 1.5)))
    y = range(len(rows))
    ax1.barh([i - 0.2 for i in y], [r["fwd_ms"] for r in rows], height=0.4,
             xerr=[r["fwd_iqr_ms"] / 2 for r in rows], label="forward (eval)")
    ax1.barh([i + 0.2 for i in y], [r["train_ms"] for r in rows], height=0.4,
             xerr=[r["train_iqr_ms"] / 2 for r in rows], label="forward + backward")
    ax1.set_yticks(list(y), names, fontsize=8)
    ax1.set_xscale("log")
    ax1.set_xlabel("median time per call (ms, log scale); whiskers: ± half the interquartile range")
    ax1.legend(fontsize=8)
    ax1.set_title("time per block")
    ax2.scatter([max(r["flops"], 1) for r in rows], [r["fwd_ms"] for r in rows])
    for r in rows:
        ax2.annotate(r["name"], (max(r["flops"], 1), r["fwd_ms"]), fontsize=7,
                     xytext=(3, 2), textcoords="offset points")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("FLOPs per forward (entries with 0 counted FLOPs drawn at 1)")
    ax2.set_ylabel("forward time (ms)")
    ax2.set_title("FLOPs vs time")
    if title:
        import textwrap

        fig.suptitle("\n".join(textwrap.wrap(title, 150)), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.97) if title else None)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
