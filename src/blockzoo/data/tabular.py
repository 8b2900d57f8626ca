"""Tables from a CSV or TSV file: ``--data csv:PATH`` / ``--data tsv:PATH``.

Like the Pima Indians diabetes file of the tutorials (Smith et al., "Using the
ADAP Learning Algorithm to Forecast the Onset of Diabetes Mellitus", 1988) or
scikit-learn's iris, wine and breast-cancer tables saved as CSV: rows of features
and a target. A header line is detected and skipped (a first row with a word over
a column of numbers, or a row of words none of which recurs below it).

- Target: ``target`` (a header name or a 0-based index; default the last column).
  Its task: text, or 2 to 50 distinct integers (negative ones too) -> classes,
  named as the file spells them and sorted (two classes are a binary task);
  anything else -> regression; ``task`` overrides.
- Features: ``features`` (names or indices), default every other column. A column
  of numbers is standardised with the training split's mean and std; a column of
  text is one-hot encoded with the categories of the training split (a category
  the training split never saw encodes as all zeros).
- Missing cells (empty, NA, NaN, null, ?): an error naming the row and column, or
  ``fill_missing``: ``mean`` / ``median`` of the training split (the most frequent
  category for a text column), or ``drop`` the row.

The file is read once with the ``csv`` module; each column then becomes one numpy
array (no Python work per cell unless a column holds text, and then per distinct
text). What the encoding needs at ``predict`` time is ``Data.stats["table"]``,
plain data (lists, strings, numbers) stored in the run's checkpoint; ``table_rows.py``
encodes new rows with it.

Letters: B batch, F features.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blockzoo.checks import DataError
from blockzoo.data.base import Data, TensorData, register_file_loader, split_indices
from blockzoo.data.textfile import F32_MAX, cell_kind, cell_what, no_gc, read_rows

__all__ = ["FILL_MISSING", "TABLE_TASKS", "load_csv", "load_table"]

log = logging.getLogger("blockzoo.data")

_MAX_CLASSES = 50
FILL_MISSING = ("mean", "median", "drop")
TABLE_TASKS = ("classification", "regression")
_FILL_HINT = "fill it in, or pass --fill-missing mean, median or drop"


def _check_widths(rows: list[list[str]], lines: np.ndarray, source: str) -> int:
    """The one number of cells every row has; a DataError naming the first row that differs."""
    widths = np.fromiter(map(len, rows), np.int64, len(rows))
    width = int(np.bincount(widths).argmax())
    odd = np.flatnonzero(widths != width)
    if len(odd):
        i = int(odd[0])
        raise DataError(f"{source}: rows must all have the same number of columns: row {lines[i]} has "
                        f"{widths[i]}, the others {width}")
    return width


def _has_header(rows: list[list[str]]) -> bool:
    """A first row with a word over a column of (mostly) numbers, or of words that never recur below."""
    kinds = [cell_kind(c) for c in rows[0]]
    sample = rows[1:1001]
    for j, k in enumerate(kinds):
        if k == 2 and sample:
            below = [cell_kind(r[j]) for r in sample]
            if below.count(0) > below.count(2):
                return True
    if len(rows) > 1 and all(k == 2 for k in kinds):
        return all(c not in map(itemgetter(j), rows[1:]) for j, c in enumerate(rows[0]))
    return False


def _column(j: int, header: Sequence[str] | None) -> str:
    """``column 3 ('age')``: 1-based, with its header name when there is one."""
    return f"column {j + 1}" + (f" ({header[j]!r})" if header else "")


class _Bad(Exception):
    """A cell that stops the load: (index of its row, its column, the message after the row and column)."""

    def __init__(self, i: int, j: int, text: str) -> None:
        super().__init__(text)
        self.i, self.j, self.text = i, j, text


@dataclass
class _Column:
    """One parsed column: numbers (float64, NaN where missing) or categories (codes into ``levels``, -1
    where missing)."""

    j: int
    kind: str  # "number" or "category"
    values: np.ndarray
    levels: list[str]
    missing: np.ndarray  # bool per row

    def take(self, keep: np.ndarray) -> _Column:
        return _Column(self.j, self.kind, self.values[keep], self.levels, self.missing[keep])


def _parse_column(cells: Sequence[str], j: int) -> _Column:
    """A column's cells as numbers or categories; ``_Bad`` for a non-finite number or a word among numbers."""
    n = len(cells)
    try:
        values = np.asarray(cells, dtype=np.float64)  # the usual case: one C loop
    except ValueError:
        pass
    else:
        return _numbers(values, np.isnan(values), cells, j)  # 'nan' spelled out is missing
    # Some cell is no number: classify each distinct text once, then map every cell to it.
    distinct = list(dict.fromkeys(cells))
    code = dict(zip(distinct, range(len(distinct)), strict=True))
    inverse = np.fromiter(map(code.__getitem__, cells), np.int64, n)
    kinds = np.array([cell_kind(c) for c in distinct], dtype=np.int64)
    per_cell = kinds[inverse]
    missing = per_cell == 1
    n_num, n_word = int((per_cell == 0).sum()), int((per_cell == 2).sum())
    if n_word == 0:
        as_num = np.array([float(np.float64(c)) if k == 0 else np.nan for c, k in zip(distinct, kinds,
                                                                                      strict=True)])
        return _numbers(as_num[inverse], missing, cells, j)
    if n_num > n_word:  # a column of numbers with a stray word: a typo, not a category
        i = int(np.argmax(per_cell == 2))
        raise _Bad(i, j, f"{cell_what(cells[i])}; every cell must be a finite number in a column of numbers")
    texts = [c.strip() for c in distinct]
    levels = sorted({t for t, k in zip(texts, kinds, strict=True) if k != 1})
    level = {t: i for i, t in enumerate(levels)}
    codes = np.array([level[t] if k != 1 else -1 for t, k in zip(texts, kinds, strict=True)], dtype=np.int64)
    return _Column(j, "category", codes[inverse], levels, missing)


def _numbers(values: np.ndarray, missing: np.ndarray, cells: Sequence[str], j: int) -> _Column:
    bad = ~missing & ~(np.abs(values) <= F32_MAX)  # inf, 1e400, beyond float32
    if bad.any():
        i = int(np.argmax(bad))
        raise _Bad(i, j, f"{cell_what(cells[i])}; every cell must be a finite number")
    return _Column(j, "number", values, [], missing)


def _missing_bad(col: _Column, cells: Sequence[str], target: bool) -> _Bad:
    i = int(np.argmax(col.missing))
    if target:
        return _Bad(i, col.j, f"{cell_what(cells[i])}: the target is missing, and a row without a target "
                              "cannot train; fill it in, or pass --fill-missing drop")
    if col.kind == "number":
        return _Bad(i, col.j, f"{cell_what(cells[i])}; every cell must be a finite number (a missing value: "
                              f"{_FILL_HINT})")
    return _Bad(i, col.j, f"{cell_what(cells[i])}, a missing value: {_FILL_HINT}")


def _resolve(spec: str | int, names: list[str] | None, width: int, option: str, source: str) -> int:
    """A column named by header name or 0-based index -> its index."""
    s = str(spec).strip()
    if names is not None and s in names:
        if names.count(s) > 1:
            raise DataError(f"{source}: {option} {s!r}: the header names {names.count(s)} columns {s!r}; "
                            "give the index instead")
        return names.index(s)
    if s.isdigit():
        if int(s) < width:
            return int(s)
        raise DataError(f"{source}: {option} {s}: the file has {width} columns (indices 0 to {width - 1})")
    if names is None:
        raise DataError(f"{source}: {option} {s!r} names a column, but the file has no header row (its first "
                        f"row holds data); give 0-based indices (0 to {width - 1})")
    close = difflib.get_close_matches(s, names, n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    raise DataError(f"{source}: {option} {s!r}: no such column{hint} (columns: {', '.join(names)})")


def _label_name(v: float) -> str:
    """A label value as the file spells it: ``3``, ``-1``, ``100000000``, ``0.5``."""
    return str(int(v)) if v == round(v) else f"{v:.9g}"


def _target(col: _Column, task: str | None, which: str, source: str
            ) -> tuple[str, int, torch.Tensor, tuple[str, ...] | None]:
    """(task, outputs, y, class names) from the target column."""
    if col.kind == "category":
        if task == "regression":
            raise DataError(f"{source}: --task regression needs numbers, but the target ({which}) holds "
                            f"text ({col.levels[0]!r})")
        used, index = np.unique(col.values, return_inverse=True)  # classes present in the rows kept
        names = tuple(col.levels[k] for k in used)
        integral = True
    else:
        values, index = np.unique(col.values, return_inverse=True)  # classes by value, not max + 1
        names = tuple(_label_name(v) for v in values)
        integral = bool(np.all(values == np.round(values)))
        if task is None:
            task = "classification" if integral and len(values) <= _MAX_CLASSES else "regression"
    if len(names) == 1:
        why = "a classifier needs at least two" if task != "regression" else "there is nothing to learn"
        raise DataError(f"{source}: the label column ({which}) holds one value ({names[0]}) for every row; "
                        f"{why}")
    if task == "regression":
        return "regression", 1, torch.from_numpy(col.values.astype(np.float32))[:, None], None
    if len(names) == 2:
        return "binary", 1, torch.from_numpy(index.astype(np.float32))[:, None], names
    return "classification", len(names), torch.from_numpy(index.astype(np.int64)), names


def _encode(col: _Column, tr: np.ndarray, fill_missing: str | None, name: str | None, source: str
            ) -> tuple[np.ndarray, dict[str, Any]]:
    """A feature column as (rows, width) float64 and what ``encode_rows`` needs to encode it again."""
    where = _column(col.j, None) + (f" ({name!r})" if name is not None else "")
    fill: Any = None
    if col.kind == "number":
        v = col.values
        if fill_missing in ("mean", "median"):
            known = v[tr][~col.missing[tr]]
            if not len(known):
                raise DataError(f"{source}: {where} is missing in every training row; nothing to fill it "
                                "with")
            fill = float(np.mean(known) if fill_missing == "mean" else np.median(known))
            v = np.where(col.missing, fill, v)
        return v[:, None], {"index": col.j, "name": name, "kind": "number", "fill": fill}
    codes = col.values
    seen = codes[tr][codes[tr] >= 0]
    if not len(seen):
        raise DataError(f"{source}: {where} is missing in every training row")
    if fill_missing in ("mean", "median"):
        mode = int(np.bincount(seen).argmax())
        fill = col.levels[mode]
        codes = np.where(col.missing, mode, codes)
    present = np.unique(seen)  # categories of the training split, sorted
    pos = np.full(len(col.levels), -1, dtype=np.int64)
    pos[present] = np.arange(len(present))
    p = np.where(codes >= 0, pos[np.clip(codes, 0, None)], -1)  # -1: missing, or unseen in training
    onehot = np.zeros((len(codes), len(present)))
    rows = np.flatnonzero(p >= 0)
    onehot[rows, p[rows]] = 1.0
    return onehot, {"index": col.j, "name": name, "kind": "category",
                    "categories": [col.levels[k] for k in present], "fill": fill}


def _names_list(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _columns_arg(features: str | Sequence[str | int] | None) -> list[str | int] | None:
    if features is None:
        return None
    items = features.split(",") if isinstance(features, str) else list(features)
    items = [s.strip() if isinstance(s, str) else s for s in items]
    if not items or any(s == "" for s in items):
        raise DataError(f"--features {features!r}: expected comma-separated column names or 0-based indices")
    return items


def load_table(path: str | Path, *, delimiter: str = ",", prefix: str = "csv", seed: int = 0,
               val_fraction: float = 0.1, test_fraction: float = 0.2, target: str | int | None = None,
               features: str | Sequence[str | int] | None = None, task: str | None = None,
               fill_missing: str | None = None) -> Data:
    """Load a table; ``load_csv`` has the options."""
    path = Path(path)
    source = f"{prefix} data {path}"
    if task not in (None, *TABLE_TASKS):
        raise DataError(f"task={task!r} must be classification or regression (or None: from the target)")
    if fill_missing not in (None, *FILL_MISSING):
        raise DataError(f"fill_missing={fill_missing!r} must be mean, median or drop (or None: an error)")
    if not path.is_file():
        raise FileNotFoundError(f"{prefix} data: no such file {str(path)!r}")
    rows, lines = read_rows(path, delimiter, source)
    if not rows:
        raise DataError(f"{source}: needs at least 4 data rows, got 0")
    width = _check_widths(rows, lines, source)
    if width < 2:
        raise DataError(f"{source}: rows must all have the same number (>= 2) of columns; they have 1 "
                        f"(is the delimiter {delimiter!r} right?)")
    header = [c.strip() for c in rows[0]] if _has_header(rows) else None
    if header is not None:
        rows, lines = rows[1:], lines[1:]
    if len(rows) < 4:
        raise DataError(f"{source}: needs at least 4 data rows, got {len(rows)}")

    t = width - 1 if target is None else _resolve(target, header, width, "--target", source)
    which = ("last, " if target is None else "") + (repr(header[t]) if header else f"column {t + 1}")
    wanted = _columns_arg(features)
    feats = [j for j in range(width) if j != t] if wanted is None else [
        _resolve(s, header, width, "--features", source) for s in wanted]
    if t in feats:
        raise DataError(f"{source}: --features names the target column ({which}); a feature cannot be "
                        "the target")
    if len(set(feats)) != len(feats):
        raise DataError(f"{source}: --features names a column twice")

    with no_gc():
        cells = list(zip(*rows, strict=True))  # one tuple of cells per column
    del rows
    cols: dict[int, _Column] = {}
    problems: list[_Bad] = []
    for j in [*feats, t]:
        try:
            cols[j] = col = _parse_column(cells[j], j)
        except _Bad as e:
            problems.append(e)
            continue
        if col.missing.any() and (fill_missing is None or (j == t and fill_missing != "drop")):
            problems.append(_missing_bad(col, cells[j], target=j == t))
    if problems:
        bad = min(problems, key=lambda b: (b.i, b.j))
        raise DataError(f"{source}: row {lines[bad.i]}, {_column(bad.j, header)} {bad.text}")
    dropped = 0
    if fill_missing == "drop":
        keep = ~np.any([c.missing for c in cols.values()], axis=0)
        dropped = int((~keep).sum())
        if dropped:
            cols = {j: c.take(keep) for j, c in cols.items()}
            if int(keep.sum()) < 4:
                raise DataError(f"{source}: needs at least 4 data rows, got {int(keep.sum())} after dropping "
                                f"{dropped} with missing cells")
    del cells

    task, k, y, classes = _target(cols[t], task, which, source)
    # a classifier's splits are stratified: each class in proportion in train, val and test
    labels = None if task == "regression" else y.view(len(y), -1)[:, 0].long()
    tr, va, te = split_indices(len(y), seed, val_fraction, test_fraction, labels)
    blocks, specs = zip(*(_encode(cols[j], tr.numpy(), fill_missing, header[j] if header else None, source)
                          for j in feats), strict=True)
    x = torch.from_numpy(np.concatenate(blocks, axis=1).astype(np.float32))  # (B, F)
    numeric = torch.tensor(np.concatenate([np.full(b.shape[1], s["kind"] == "number")
                                           for b, s in zip(blocks, specs, strict=True)]))
    mean = torch.where(numeric, x[tr].mean(0), 0.0)  # one-hot columns stay 0/1
    std = torch.where(numeric, x[tr].std(0).clamp_min(1e-8), 1.0)
    x = (x - mean) / std
    table = {"width": width, "header": header, "target": {"index": t, "name": header[t] if header else None},
             "features": list(specs), "fill_missing": fill_missing}
    _log_summary(source, len(y), which, task, k, classes, specs, x.shape[1], dropped)
    return Data(f"{prefix}:{path}", TensorData(x[tr], y[tr]), TensorData(x[va], y[va]),
                TensorData(x[te], y[te]), input="vector", task=task, num_classes=k, in_chans=x.shape[1],
                classes=classes, stats={"mean": mean, "std": std, "table": table})


def _log_summary(source: str, n: int, which: str, task: str, k: int, classes: tuple[str, ...] | None,
                 specs: Sequence[Mapping[str, Any]], width: int, dropped: int) -> None:
    """One line: which column is the target, its task, and the features."""
    what = {"regression": "regression", "binary": f"binary ({', '.join(classes or ())})",
            "classification": f"classification, {k} classes ({_names_list(list(classes or ()))})"}[task]

    def name(s: Mapping[str, Any]) -> str:
        return s["name"] if s["name"] is not None else f"column {s['index'] + 1}"

    nums = [name(s) for s in specs if s["kind"] == "number"]
    cats = [f"{name(s)}: {len(s['categories'])}" for s in specs if s["kind"] == "category"]
    parts = [f"{len(nums)} numeric ({_names_list(nums)}, standardised)"] if nums else []
    parts += [f"{len(cats)} categorical ({_names_list(cats)} categories, one-hot)"] if cats else []
    drop = f"; dropped {dropped} rows with missing cells" if dropped else ""
    log.info("%s: %d rows; target %s -> %s; features: %s -> %d inputs%s (--target, --features and --task "
             "choose others)", source, n, which, what, "; ".join(parts), width, drop)


@register_file_loader("csv")
def load_csv(path: str | Path, *, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2,
             target: str | int | None = None, features: str | Sequence[str | int] | None = None,
             task: str | None = None, fill_missing: str | None = None) -> Data:
    """Load a CSV table: features and a target column.

    Rows are shuffled with ``seed`` (fixed seed for the test split, so the test rows
    do not change with the run's seed), ``test_fraction`` held out as test and
    ``val_fraction`` of the rest as validation; for classes both splits are stratified
    (each class in proportion, one row at least of a class of 3 or more: ``split_indices``).

    Args:
        path: the file (comma-separated; a header row is detected).
        target: the target column: a header name or a 0-based index; default the last.
        features: the feature columns, comma-separated names or 0-based indices (or a
            list); default every column but the target.
        task: ``classification`` or ``regression``; default from the target: text or 2
            to 50 distinct integers are classes (sorted, named as the file spells them;
            two classes are a binary task), anything else is regression.
        fill_missing: ``mean``, ``median`` (of the training split; a text column's most
            frequent category) or ``drop`` for missing cells; default a ``DataError``.

    Errors name the file, the row as the file's line number (the header is line 1)
    and the column (1-based, with its header name).
    """
    return load_table(path, delimiter=",", prefix="csv", seed=seed, val_fraction=val_fraction,
                      test_fraction=test_fraction, target=target, features=features, task=task,
                      fill_missing=fill_missing)


@register_file_loader("tsv")
def _load_tsv(path: str | Path, **options: Any) -> Data:
    """``load_csv`` for a tab-separated file."""
    return load_table(path, delimiter="\t", prefix="tsv", **options)
