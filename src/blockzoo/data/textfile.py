"""Reading a delimited text file (CSV, TSV) as rows of cells: shared by the table loader
(``tabular.py``) and ``predict``'s encoding of new rows (``table_rows.py``).

Rows come with their 1-based line numbers in the file, so every error names the row a
user sees in an editor; a cell is a number, a missing value or a word.
"""

from __future__ import annotations

import csv
import gc
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import compress
from pathlib import Path

import numpy as np

from blockzoo.checks import DataError

__all__ = ["F32_MAX", "MISSING", "cell_kind", "cell_what", "no_gc", "read_rows"]

# Cells that mean "no value" (pandas' usual spellings), compared stripped and lower-case.
MISSING = frozenset({"", "na", "n/a", "nan", "-nan", "null", "none", "?", "<na>", "#n/a"})
F32_MAX = float(np.finfo(np.float32).max)


@contextmanager
def no_gc() -> Iterator[None]:
    """The collector off while a million small lists are made (it would rescan them all: 2-3x slower)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def read_rows(path: Path, delimiter: str, source: str) -> tuple[list[list[str]], np.ndarray]:
    """The file's rows that are not blank, and their 1-based line numbers in the file."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f, no_gc():
            reader = csv.reader(f, delimiter=delimiter)
            rows = list(reader)
            one_line_each = reader.line_num == len(rows)
        if one_line_each:
            lines = np.arange(1, len(rows) + 1)
        else:  # a quoted cell spans lines: count them row by row
            with open(path, newline="", encoding="utf-8-sig") as f, no_gc():
                reader = csv.reader(f, delimiter=delimiter)
                lines = np.array([reader.line_num for _ in reader], dtype=np.int64)
    except UnicodeDecodeError as e:
        raise DataError(f"{source} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    except csv.Error as e:
        raise DataError(f"{source}: not a readable table ({e})") from None
    keep = np.fromiter(map(any, rows), bool, len(rows))  # blank lines and lines of empty cells
    return list(compress(rows, keep)), lines[keep]


def cell_kind(cell: str) -> int:
    """0: a number (numpy's parser, as ``np.asarray``'s), 1: missing, 2: a word."""
    c = cell.strip()
    if c.lower() in MISSING:
        return 1
    try:
        np.float64(c)
    except ValueError:
        return 2
    return 0


def cell_what(cell: str) -> str:
    c = cell.strip()
    return "is empty" if not c else f"holds {c!r}"
