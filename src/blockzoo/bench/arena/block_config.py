"""How the arena configures a block under test: its registered example config, and a guess.

The guess: ``_LENGTH_KEYS`` names the constructor arguments that are taken to fix a
token block's largest sequence length. The registry does not record that yet, so the
arena guesses from the argument's name; this module is the only place that does, so
the convention can move into the registry without a hunt.
"""

from __future__ import annotations

from typing import Any

from blockzoo.registry import spec

__all__ = ["block_config"]

# Constructor arguments taken to fix a token block's largest sequence length (a guess by name).
_LENGTH_KEYS = ("max_len", "seq_len", "max_seq_len", "num_tokens")


def block_config(block: str, length: int | None = None) -> dict[str, Any]:
    """The block's registered example config without its input-width argument (the
    backbone sets it), and any maximum-length argument raised to at least ``length``:
    the same small settings ``bench`` uses."""
    s = spec(block)
    cfg = {k: v for k, v in s.example.config.items() if k != s.example.inputs.features}
    if length is not None:
        cfg.update({k: max(length, int(cfg[k])) for k in _LENGTH_KEYS if k in cfg})
    return cfg
