"""What every ``blockzoo`` subcommand shares: the CLI's own error and argument types."""

from __future__ import annotations

import argparse
import ast
import re
from typing import Any

__all__ = ["DEFAULT_THREADS", "CliError", "config_pairs", "nonneg_int", "positive_int"]

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


# A comma that starts the next KEY= (commas inside a tuple or list value stay with it).
_NEXT_PAIR = re.compile(r",\s*(?=[A-Za-z_]\w*\s*=)")


def config_pairs(text: str) -> dict[str, Any]:
    """An argparse type: ``KEY=VALUE,KEY=VALUE`` -> dict; each VALUE a Python literal
    (``dim=512``, ``window=(3, 1)``, ``qkv_bias=False``) or else a plain string
    (``act_layer=gelu``), read with ``ast.literal_eval`` (never evaluated as code)."""
    out: dict[str, Any] = {}
    for item in _NEXT_PAIR.split(text.strip()):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key.isidentifier():
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE[,KEY=VALUE...], got {text!r}")
        if key in out:
            raise argparse.ArgumentTypeError(f"{key} given twice in {text!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out
