"""The arena's budget and data, the same for every block, and its two fixed names."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["BASELINE", "KINDS", "ArenaSettings", "settings_text"]

BASELINE = "none"  # the backbone without attention, trained alongside every kind
KINDS = ("image", "tokens")


@dataclass(frozen=True)
class ArenaSettings:
    """The arena's budget and data: the same for every block.

    ``small_data`` uses each data set's small version (tests, smoke runs);
    ``quick_settings()`` is the ``--quick`` budget: 5 epochs, 2 seeds, full data.
    """

    blocks: tuple[str, ...] = ()
    image_data: str = "digits"
    token_data: str = "mnist1d"
    epochs: int = 15
    seeds: int = 3
    jobs: int = 1
    small_data: bool = False
    batch_size: int = 64
    lr: float = 3e-3
    width: int = 16
    dim: int = 32
    depth: int = 2
    data_dir: str = "data"

    @classmethod
    def quick_settings(cls, **kw: Any) -> ArenaSettings:
        return cls(**{"epochs": 5, "seeds": 2, **kw})

    def data_for(self, kind: str) -> str:
        return self.image_data if kind == "image" else self.token_data


def settings_text(settings: ArenaSettings) -> str:
    """The settings that decide a result, as ``key=value, ...`` (for table captions)."""
    return ", ".join(f"{k}={v}" for k, v in asdict(settings).items() if k not in ("blocks", "jobs"))
