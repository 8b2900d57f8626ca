"""Shared matplotlib set-up: the Agg backend unless a window is wanted."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot(show: bool = False) -> Any:
    """matplotlib.pyplot on the Agg backend (headless) unless ``show`` asks for a window."""
    import matplotlib

    if not show:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: str | Path, *, show: bool = False, dpi: int = 110) -> Path:
    """Save ``fig`` as a PNG at ``path`` (parents created), show it if asked, close it."""
    plt = pyplot(show)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    if show:
        plt.show()
    plt.close(fig)
    return path
