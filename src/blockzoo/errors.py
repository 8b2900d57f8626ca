"""The errors a user's input can cause, importable without torch.

Every one derives from ``BlockzooError`` and is also a ``ValueError``: a tensor
(``ShapeError``), an option or argument (``ConfigError``), a data set or input file
(``DataError``), a file that is not what it claims to be (``FileFormatError``), a name
that is not registered (``UnknownNameError``, also a ``KeyError``). The CLI prints
exactly these as one line; anything else is a bug and keeps its traceback.

This module imports no torch (nor numpy): the command line's parser and ``main``
catch these errors, and ``blockzoo --help`` must answer without loading torch.
``checks`` and ``registry`` re-export them, where blocks and tools import them from.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

__all__ = [
    "BlockzooError", "ConfigError", "DataError", "FileFormatError", "ShapeError", "UnknownNameError",
    "unknown_name",
]


class BlockzooError(Exception):
    """Base of the errors caused by a user's input, never by a bug in blockzoo."""


class ShapeError(BlockzooError, ValueError):
    """A tensor had the wrong rank, size or dtype for the block it was given to."""


class ConfigError(BlockzooError, ValueError):
    """An option or constructor argument out of range, of the wrong type, or not fitting the data."""


class DataError(BlockzooError, ValueError):
    """A data set or input file whose contents cannot be used (bad cells, labels, shapes)."""


class FileFormatError(BlockzooError, ValueError):
    """A checkpoint, weights or input file that is truncated, corrupted, hostile or for another model."""


class UnknownNameError(BlockzooError, KeyError, ValueError):
    """A name (block, model, data set, optimizer, ...) that is not registered.

    Both a ``KeyError`` (lookup failed) and a ``ValueError`` (bad argument), with a
    plain message that lists the closest registered names.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def unknown_name(kind: str, name: str, known: Sequence[str]) -> UnknownNameError:
    """Build the error for an unknown ``name`` among ``known``, naming close matches."""
    close = difflib.get_close_matches(name, list(known), n=5, cutoff=0.5)
    if not close:
        close = [k for k in known if name.lower() in k.lower()][:5]
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return UnknownNameError(f"unknown {kind} {name!r}{hint} (known: {len(known)})")
