"""Which blocks the arena trains, and the list of (kind, block, seed) runs that makes."""

from __future__ import annotations

import torch

from blockzoo.bench.arena.settings import BASELINE, KINDS, ArenaSettings
from blockzoo.checks import ConfigError
from blockzoo.registry import list_blocks, spec

__all__ = ["arena_candidates", "kind_of", "plan"]


def _mixes_tokens(name: str) -> bool:
    """True when changing token 0 changes the block's output at some other token."""
    s = spec(name)
    try:
        torch.manual_seed(0)
        block = s.build_example().eval()
        (x,) = s.make_input(batch=1, size=(8,))
        y = x.clone()
        y[:, 0] += 1.0
        with torch.no_grad():
            return not torch.allclose(block(x)[:, 1:], block(y)[:, 1:])
    except Exception:  # a block that cannot run here is still a candidate: its run reports why
        return True


def arena_candidates(kind: str) -> list[str]:
    """Attention entries for the ``image`` or ``tokens`` arena.

    Image: every shape-keeping (``out_shape="same"``) image entry of family attention.
    Tokens: every shape-keeping tokens entry that mixes tokens (changing token 0 changes
    another token's output), which leaves out positional encodings (RoPE, sinusoidal,
    learned) that only add or rotate per position.
    """
    if kind not in KINDS:
        raise ConfigError(f"arena kind {kind!r} not in {KINDS}")
    names = [n for n in list_blocks(family="attention")
             if spec(n).input == kind and spec(n).example.out_shape == "same"]
    return names if kind == "image" else [n for n in names if _mixes_tokens(n)]


def kind_of(block: str) -> str:
    """The arena kind (the registered input kind) of a block."""
    return spec(block).input


def plan(settings: ArenaSettings) -> list[tuple[str, str, int]]:
    """All (kind, block, seed) runs of these settings, baselines first."""
    if settings.blocks:
        for b in settings.blocks:
            if b != BASELINE:
                spec(b)
        blocks = list(settings.blocks)
    else:
        blocks = [b for k in KINDS for b in arena_candidates(k)]
    kinds_used = sorted({kind_of(b) for b in blocks if b != BASELINE} or set(KINDS))
    bad = [b for b in blocks if b != BASELINE and kind_of(b) not in KINDS]
    if bad:
        raise ConfigError(f"arena: {bad} take neither image nor tokens input")
    runs = [(k, BASELINE, s) for k in kinds_used for s in range(settings.seeds)]
    runs += [(kind_of(b), b, s) for b in blocks if b != BASELINE for s in range(settings.seeds)]
    return runs
