"""The arena's budget and data, the same for every entry, and its fixed names.

Two arenas share these settings: ``attention`` (blocks inside the arena's own small
backbones, row kinds ``image`` and ``tokens``) and ``backbones`` (registered image
classifiers trained whole, row kind ``backbone``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from blockzoo.errors import ConfigError

__all__ = ["ARENAS", "BACKBONE", "BASELINE", "KINDS", "QUICK_BLOCKS", "ArenaSettings", "settings_text"]

BASELINE = "none"  # the backbone without attention, trained alongside every kind
KINDS = ("image", "tokens")  # the attention arena's row kinds (the blocks' input kinds)
BACKBONE = "backbone"  # the backbone arena's row kind
ARENAS = ("attention", "backbones")

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

    ``arena="backbones"`` trains registered image classifiers whole (``blocks`` then names
    models); ``backbone_settings()`` is its default budget. ``max_mflops`` is its cost cap:
    a model whose forward pass of one image at its example size costs more is not trained
    (it is listed with its cost). ``width``, ``dim`` and ``depth`` size the attention
    arena's own backbones only.
    """

    blocks: tuple[str, ...] = ()
    arena: str = "attention"
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
    max_mflops: float = 100.0

    def __post_init__(self) -> None:
        if self.arena not in ARENAS:
            raise ConfigError(f"arena {self.arena!r}: expected one of {ARENAS}")
        if not self.max_mflops > 0:
            raise ConfigError(f"max_mflops={self.max_mflops!r}: expected a number > 0")

    @classmethod
    def backbone_settings(cls, **kw: Any) -> ArenaSettings:
        """The backbone arena's default budget: 3 epochs, 2 seeds, batch 32, lr 1e-3 (AdamW,
        warm-up and cosine decay, as every arena run): about 13 minutes of one free core for
        every model under the default cap (docs/benchmarks.md). On the digits, lr 1e-3 trained
        vit_tiny to 96% where 3e-3 gave 73%; the smallest transformers preferred 3e-3."""
        return cls(**{"arena": "backbones", "epochs": 3, "seeds": 2, "batch_size": 32, "lr": 1e-3, **kw})

    @classmethod
    def quick_settings(cls, **kw: Any) -> ArenaSettings:
        blocks = kw.pop("blocks", ()) or QUICK_BLOCKS
        return cls(**{"epochs": 3, "seeds": 2, "blocks": tuple(blocks), **kw})

    def data_for(self, kind: str) -> str:
        return self.token_data if kind == "tokens" else self.image_data


# Settings that mean nothing to the other arena, left out of its captions.
_ATTENTION_ONLY = ("token_data", "width", "dim", "depth")
_BACKBONES_ONLY = ("arena", "max_mflops")


def settings_text(settings: ArenaSettings) -> str:
    """The settings that decide a result, as ``key=value, ...`` (for table captions)."""
    hidden = {"blocks", "jobs", *(_ATTENTION_ONLY if settings.arena == "backbones" else _BACKBONES_ONLY)}
    return ", ".join(f"{k}={v}" for k, v in asdict(settings).items() if k not in hidden)
