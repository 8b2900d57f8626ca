"""What every ``blockzoo`` subcommand shares: the CLI's own error and argument types."""

from __future__ import annotations

import argparse

__all__ = ["DEFAULT_THREADS", "CliError", "nonneg_int", "positive_int"]

# One intra-op thread by default: small models on a few shared cores run fastest so
# (measured in docs/benchmarks.md, "Threads").
DEFAULT_THREADS = 1


class CliError(Exception):
    """A user error found by the CLI itself (printed as one line, exit code 2)."""


def _int_at_least(text: str, low: int) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
    if n < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {n}")
    return n


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def nonneg_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    return _int_at_least(text, 0)
