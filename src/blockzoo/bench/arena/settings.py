"""The arena's budget and data, the same for every block, and its two fixed names."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["BASELINE", "KINDS", "QUICK_BLOCKS", "ArenaSettings", "settings_text"]

BASELINE = "none"  # the backbone without attention, trained alongside every kind
KINDS = ("image", "tokens")

# ``--quick``'s representative set, one block per kind of mechanism, chosen to keep a
# quick run to a few minutes on one busy core (``blockzoo arena --quick --threads 1``:
# docs/benchmarks.md). Images: channel gates from pooled statistics (se), channel +
# spatial gates (cbam), a parameter-free energy gate (simam), local self-attention in
# blocks (halo_attention). Tokens: softmax attention (multi_head_attention) and
# attention-free weighting (aft_simple).
QUICK_BLOCKS = ("se", "cbam", "simam", "halo_attention", "multi_head_attention", "aft_simple")


@dataclass(frozen=True)
class ArenaSettings:
    """The arena's budget and data: the same for every block.

    ``small_data`` uses each data set's small version (tests, smoke runs);
    ``quick_settings()`` is the ``--quick`` budget: ``QUICK_BLOCKS`` (unless blocks are
    named), 3 epochs, 2 seeds, full data: a preview, not a ranking.
    ``image_data="cluttered_digits"`` is the harder image task, about six times the cost
    per epoch (docs/benchmarks.md compares the two).
    """

    blocks: tuple[str, ...] = ()
    image_data: str = "digits"
    token_data: str = "mnist1d"
    epochs: int = 6
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
        blocks = kw.pop("blocks", ()) or QUICK_BLOCKS
        return cls(**{"epochs": 3, "seeds": 2, "blocks": tuple(blocks), **kw})

    def data_for(self, kind: str) -> str:
        return self.image_data if kind == "image" else self.token_data


def settings_text(settings: ArenaSettings) -> str:
    """The settings that decide a result, as ``key=value, ...`` (for table captions)."""
    return ", ".join(f"{k}={v}" for k, v in asdict(settings).items() if k not in ("blocks", "jobs"))
