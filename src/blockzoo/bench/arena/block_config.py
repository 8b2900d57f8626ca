"""How the arena configures a block under test: its registered example config.

The backbone sets the block's width (``Spec.width_arg``); a token block whose
registration declares a length argument (``Spec.size_arg``: ``max_len``, ``seq_len``,
``num_tokens``) gets it raised to at least the task's sequence length.
"""

from __future__ import annotations

from typing import Any

from blockzoo.registry import spec

__all__ = ["block_config"]


def block_config(block: str, length: int | None = None) -> dict[str, Any]:
    """The block's registered example config without its input-width argument (the
    backbone sets it), and its declared length argument raised to at least ``length``:
    the same small settings ``bench`` uses."""
    s = spec(block)
    cfg = {k: v for k, v in s.example.config.items() if k != s.width_arg}
    if length is not None and s.size_arg in cfg:
        cfg[s.size_arg] = max(length, int(cfg[s.size_arg]))
    return cfg
