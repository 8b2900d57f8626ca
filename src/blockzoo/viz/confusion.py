"""The confusion matrix of a classifier: which classes it mistakes for which.

Rows are the true classes, columns the predicted ones, each cell a count of
samples. The colour is the row's fraction (the cell's count over the class's
samples, so the diagonal reads as each class's recall), so a rare class's errors
are as visible as a common one's; the count is written in the cell.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from blockzoo.checks import ConfigError

__all__ = ["plot_confusion", "row_fractions"]

# Past this many classes the counts no longer fit in their cells: colour only.
_MAX_LABELLED = 30


def row_fractions(matrix: Sequence[Sequence[int]]) -> np.ndarray:
    """Each row divided by its sum (a class with no samples: a row of zeros)."""
    m = np.asarray(matrix, dtype=np.float64)
    total = m.sum(1, keepdims=True)
    return np.divide(m, total, out=np.zeros_like(m), where=total > 0)


def plot_confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str],
                   path: str | Path = "confusion.png", *, title: str = "", show: bool = False) -> Path:
    """Draw ``matrix`` (rows: true class, columns: predicted) with ``classes`` on both axes."""
    from blockzoo.viz._figure import pyplot, save

    m = np.asarray(matrix)
    k = len(classes)
    if m.shape != (k, k):
        raise ConfigError(f"confusion matrix: expected ({k}, {k}) for {k} classes, got {m.shape}")
    plt = pyplot(show)
    side = min(20.0, max(4.0, 0.45 * k + 2.5))
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    frac = row_fractions(m)
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ticks = range(k)
    ax.set_xticks(ticks, list(classes), rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_yticks(ticks, list(classes))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if k <= _MAX_LABELLED:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(int(m[i, j])), ha="center", va="center", fontsize=8 if k > 10 else 10,
                        color="white" if frac[i, j] > 0.5 else "black")
    if title:
        ax.set_title(title)
    return save(fig, path, show=show)
