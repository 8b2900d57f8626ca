"""New rows of a table, encoded as a run's training table was: ``predict`` on a table run.

The encoding is the run's ``Data.stats["table"]`` (written by ``tabular.py``, read back
from the checkpoint as plain data, so it is checked here before use): the feature
columns with their kind, the categories of text columns and the fill values.

Letters: B batch, F features.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import compress
from pathlib import Path
from typing import Any

import numpy as np

from blockzoo.checks import DataError, FileFormatError
from blockzoo.data.textfile import F32_MAX, MISSING, cell_kind, cell_what, no_gc, read_rows

__all__ = ["encode_rows"]


def _check_table(table: Any, source: str) -> list[Mapping[str, Any]]:
    """The feature specs of a stored table encoding, checked (a checkpoint is data from a user)."""
    ok = isinstance(table, Mapping) and isinstance(table.get("width"), int) and isinstance(
        table.get("features"), list) and (table.get("header") is None or (
            isinstance(table["header"], list) and all(isinstance(h, str) for h in table["header"])))
    for s in table.get("features", []) if ok else []:
        ok = ok and isinstance(s, Mapping) and isinstance(s.get("index"), int) and (
            s.get("name") is None or isinstance(s["name"], str))
        if ok and s.get("kind") == "number":
            ok = s.get("fill") is None or isinstance(s["fill"], float | int)
        elif ok and s.get("kind") == "category":
            ok = isinstance(s.get("categories"), list) and all(isinstance(c, str) for c in s["categories"]) \
                and (s.get("fill") is None or isinstance(s["fill"], str))
        else:
            ok = False
    if not ok:
        raise FileFormatError(f"{source}: data_stats 'table' is not a table encoding blockzoo wrote")
    return table["features"]


def encode_rows(path: str | Path, table: Any, *, checkpoint: str = "checkpoint") -> np.ndarray:
    """Rows of a CSV/TSV (``.tsv``: tabs) encoded as the run's table was: (B, F) float32, not standardised.

    With a header, the feature columns are taken by name (the target, or any other
    column, may be there too); without one, a row holds the feature columns in order,
    or every column of the training file. Text is encoded with the stored categories
    (an unseen category is all zeros); a missing cell takes the stored fill value, or
    is an error when the run was trained without ``--fill-missing mean|median``.
    """
    path = Path(path)
    specs = _check_table(table, checkpoint)
    source = f"input file {path}"
    rows, lines = read_rows(path, "\t" if path.suffix == ".tsv" else ",", source)
    names = [s["name"] for s in specs]
    known = set(table["header"] or []) - {None}
    first = [c.strip() for c in rows[0]] if rows else []
    header = first if known and known & set(first) else None
    if header is not None:
        lacking = [n for n in names if n not in header]
        if lacking:
            raise DataError(f"{source}: its header has no column {', '.join(map(repr, lacking))} (the "
                            f"model's features: {', '.join(map(str, names))})")
        rows, lines = rows[1:], lines[1:]
    if not rows:
        raise DataError(f"{source} holds no data rows (one sample per row)")
    width = len(rows[0])
    widths = np.fromiter(map(len, rows), np.int64, len(rows))
    odd = np.flatnonzero(widths != width)
    if len(odd):
        i = int(odd[0])
        raise DataError(f"{source}, row {lines[i]}: {widths[i]} values, the first data row has {width}")
    if header is not None:
        where = [header.index(n) for n in names]
    elif width == len(specs):
        where = list(range(width))
    elif width == table["width"]:
        where = [s["index"] for s in specs]
    else:
        raise DataError(f"{source}: rows of {width} values; the model takes the {len(specs)} feature columns "
                        f"in order, or the training file's {table['width']} columns")
    if header is None and len(rows) > 1 and any(s["kind"] == "number" and cell_kind(rows[0][j]) == 2
                                                for s, j in zip(specs, where, strict=True)):
        rows, lines = rows[1:], lines[1:]  # a header of other names: a word over a column of numbers
    with no_gc():
        cells = list(zip(*rows, strict=True))
    blocks = []
    for s, j in zip(specs, where, strict=True):
        col = f"column {j + 1}" + (f" ({s['name']!r})" if s["name"] is not None else "")
        blocks.append(_encode_again(cells[j], s, lambda i, col=col: f"{source}, row {lines[i]}, {col}"))
    return np.concatenate(blocks, axis=1).astype(np.float32)


def _encode_again(cells: Sequence[str], spec: Mapping[str, Any], where: Callable[[int], str]) -> np.ndarray:
    """One column of new rows, encoded with a feature's stored spec."""
    stripped = list(map(str.strip, cells))
    missing = np.fromiter(map(MISSING.__contains__, map(str.lower, stripped)), bool, len(cells))
    if missing.any() and spec["fill"] is None:
        i = int(np.argmax(missing))
        raise DataError(f"{where(i)} {cell_what(cells[i])}: a missing value (the run was "
                        "trained without --fill-missing mean or median)")
    if spec["kind"] == "number":
        values = np.full(len(cells), float(spec["fill"] if spec["fill"] is not None else 0.0))
        try:
            values[~missing] = np.asarray(list(compress(stripped, ~missing)), dtype=np.float64)
        except ValueError:
            i = next(i for i, c in enumerate(stripped) if not missing[i] and cell_kind(c) != 0)
            raise DataError(f"{where(i)}: {cells[i]!r} is not a number") from None
        bad = ~(np.abs(values) <= F32_MAX)
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{where(i)}: {cells[i]!r} is not a finite float32 number")
        return values[:, None]
    cats = spec["categories"]
    pos = {c: i for i, c in enumerate(cats)}
    if missing.any():
        stripped = [spec["fill"] if m else c for c, m in zip(stripped, missing, strict=True)]
    p = np.fromiter(map(pos.get, stripped, [-1] * len(stripped)), np.int64, len(stripped))  # -1: unseen
    onehot = np.zeros((len(cells), len(cats)))
    rows = np.flatnonzero(p >= 0)
    onehot[rows, p[rows]] = 1.0
    return onehot
