"""Input validation: every block checks its input here and raises ``ShapeError``.

A message always names the block, what it expected and what it got, e.g.
``"CBAM: expected input (B, C=64, H, W), got (8, 32, 7, 7)"``. Checks run before
any arithmetic, so a wrong tensor never surfaces as an opaque matmul error.

The errors a user's input can cause all derive from ``BlockzooError``: a tensor
(``ShapeError``), an option or argument (``ConfigError``), a file that is not what
it claims to be (``FileFormatError``), a data set (``DataError``). Each is also a
``ValueError``. They live in the torch-free ``errors`` module (the CLI's parser
needs them without torch) and are re-exported here, where blocks import them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

import torch

from blockzoo.errors import BlockzooError, ConfigError, DataError, FileFormatError, ShapeError

__all__ = [
    "BlockzooError", "ConfigError", "DataError", "FileFormatError", "ShapeError", "check_divisible",
    "check_shape", "require", "require_divides",
]


def _format(letters: Sequence[str], fixed: dict[str, int]) -> str:
    parts = [f"{s}={fixed[s]}" if s in fixed else s for s in letters]
    return "(" + ", ".join(parts) + ")"


_Parsed = tuple[tuple[str, ...], bool, int, dict[str, int]]
_PATTERNS: dict[str, _Parsed] = {}  # pattern -> parsed; the patterns are literals in the blocks


def _parse(pattern: str) -> _Parsed:
    """A pattern's named letters, whether it starts with ``*``, its named rank, each letter's index."""
    letters = tuple(pattern.split())
    star = bool(letters) and letters[0] == "*"
    named = letters[1:] if star else letters
    parsed = _PATTERNS[pattern] = (named, star, len(named), {s: i for i, s in enumerate(named)})
    return parsed


def check_shape(
    x: torch.Tensor,
    pattern: str,
    *,
    name: str,
    arg: str = "input",
    **fixed: int | None,
) -> dict[str, int]:
    """Check ``x`` against a letter pattern and return the named sizes.

    Args:
        x: the tensor to check.
        pattern: space-separated dimension letters, e.g. ``"B C H W"``. A leading
            ``"*"`` allows any number of extra leading dimensions (``"* F"``).
        name: the block's name, used as the message prefix.
        arg: which argument is checked (``"input"``, ``"key"``, ...).
        **fixed: sizes the named dimensions must have; ``None`` means free.

    Returns:
        A dict from each letter to its size in ``x`` (leading ``*`` dims omitted).

    Every block calls this on every forward, so a valid input costs only integer
    comparisons (the pattern is parsed once and cached); the message is built only
    when the check fails (``benchmarks/overhead.py`` measures it).

    Example:
        >>> dims = check_shape(torch.zeros(2, 3, 5, 7), "B C H W", name="SE", C=3)
        >>> dims["H"], dims["W"]
        (5, 7)
    """
    named, star, rank, index = _PATTERNS.get(pattern) or _parse(pattern)
    if isinstance(x, torch.Tensor):
        shape = x.shape
        off = len(shape) - rank
        if off == 0 or (star and off > 0):
            for letter, size in fixed.items():
                if size is None:
                    continue
                i = index.get(letter)
                if i is None or shape[off + i] != size:
                    break  # (a letter not in the pattern: the slow path says which)
            else:
                return dict(zip(named, shape[off:] if off else shape))  # noqa: B905 (same length)
    _fail(x, pattern, name, arg, fixed)


def _fail(x: object, pattern: str, name: str, arg: str, fixed: dict[str, int | None]) -> NoReturn:
    """Raise the error ``check_shape`` found, with its full message (only on failure)."""
    letters = pattern.split()
    fixed_sizes = {k: v for k, v in fixed.items() if v is not None}
    unknown = set(fixed_sizes) - set(letters)
    if unknown:
        raise TypeError(f"check_shape: {sorted(unknown)} not in pattern {pattern!r}")
    if not isinstance(x, torch.Tensor):
        raise ShapeError(
            f"{name}: expected {arg} tensor {_format(letters, fixed_sizes)}, "
            f"got {type(x).__name__}"
        )
    raise ShapeError(
        f"{name}: expected {arg} {_format(letters, fixed_sizes)}, got {tuple(x.shape)}"
    )


def check_divisible(size: int, by: int, *, name: str, what: str) -> None:
    """Raise ``ShapeError`` unless ``size`` is a multiple of ``by``."""
    if size % by:
        raise ShapeError(f"{name}: {what}={size} must be a multiple of {by}")


def require(condition: bool, message: str) -> None:
    """Raise ``ConfigError(message)`` (a ``ValueError``) unless ``condition`` holds (constructor args)."""
    if not condition:
        raise ConfigError(message)


def require_divides(name: str, what: str, value: int, of: str, total: int, *, hint: str = "") -> int:
    """Return ``total // value``; raise ``ConfigError`` unless ``value`` >= 1 divides ``total``.

    For constructor arguments such as the number of heads, whose quotient is the head
    width: ``require_divides("MultiHeadAttention", "num_heads", 6, "dim", 64)`` raises
    ``"MultiHeadAttention: num_heads=6 must divide dim=64"``; with 8 heads it returns 8.
    ``hint`` ends the message (``"(or give head_dim)"``).
    """
    if value < 1 or total % value:
        raise ConfigError(f"{name}: {what}={value} must divide {of}={total}" + (f" {hint}" if hint else ""))
    return total // value
