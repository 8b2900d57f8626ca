"""Tabular data from a CSV file: ``--data csv:PATH`` (last column is the label).

Like the Pima Indians diabetes file of the tutorials (Smith et al., "Using the
ADAP Learning Algorithm to Forecast the Onset of Diabetes Mellitus", 1988): rows
of numeric features and a label. A header line is detected and skipped. The task
is inferred from the labels: two distinct integer values -> binary, 3 to 50 ->
classification, anything else -> regression. Classes are the sorted label values
(labels {0, 1, 2, 100000000} are 4 classes; -1 is a class like any other).
Features are standardised with the training split's mean and std only.

Letters: B batch, F features.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from blockzoo.checks import DataError
from blockzoo.data.base import Data, TensorData, register_file_loader, split_train_val, standardize

__all__ = ["load_csv"]

_MAX_CLASSES = 50


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _column(j: int, header: list[str] | None) -> str:
    """``column 3 ('age')``: 1-based, with its header name when there is one."""
    return f"column {j + 1}" + (f" ({header[j].strip()!r})" if header else "")


@register_file_loader("csv")
def load_csv(path: str | Path, *, seed: int = 0, val_fraction: float = 0.1,
             test_fraction: float = 0.2) -> Data:
    """Load a numeric CSV; the last column is the label.

    Rows are shuffled with ``seed`` (fixed seed for the test split, so the test rows
    do not change with the run's seed), ``test_fraction`` held out as test and
    ``val_fraction`` of the rest as validation.

    Labels: 2 to 50 distinct integer values (negative ones too) are classes, mapped in
    sorted order to 0..K-1 and named in ``classes`` by their values in the file; two
    values are a binary task. Anything else is regression. Every cell must be a finite
    number; errors give the row as the file's line number (the header is line 1).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"csv data: no such file {str(path)!r}")
    with open(path, newline="") as f:
        reader = csv.reader(f)
        # (line number, cells) of the rows that are not blank
        lines = [(reader.line_num, r) for r in reader if r and any(c.strip() for c in r)]
    header = None
    if lines and any(c.strip() and not _is_number(c) for c in lines[0][1]):
        header = lines.pop(0)[1]  # a first row with a word in it is a header
    rows = [r for _, r in lines]
    if len(rows) < 4:
        raise DataError(f"csv data {path}: needs at least 4 numeric rows, got {len(rows)}")
    widths = {len(r) for r in rows}
    if len(widths) != 1 or widths.pop() < 2:
        raise DataError(f"csv data {path}: rows must all have the same number (>= 2) of columns")
    if header is not None and len(header) != len(rows[0]):
        header = None  # its names do not line up with the columns: errors give numbers only
    table = _parse(path, rows, [n for n, _ in lines], header)
    feats = torch.from_numpy(table[:, :-1].astype(np.float32))
    labels = table[:, -1]
    values, index = np.unique(labels, return_inverse=True)  # classes by value, not max + 1
    integral = bool(np.all(values == np.round(values)))
    if len(values) == 1:
        name = repr(header[-1].strip()) if header else f"column {table.shape[1]}"
        why = "a classifier needs at least two" if integral else "there is nothing to learn"
        raise DataError(f"csv data {path}: the label column (last, {name}) holds one value "
                         f"({_label_name(values[0])}) for every row; {why}")
    if integral and len(values) == 2:
        task, k = "binary", 1
        y = torch.from_numpy(index.astype(np.float32))[:, None]
    elif integral and len(values) <= _MAX_CLASSES:
        task, k = "classification", len(values)
        y = torch.from_numpy(index.astype(np.int64))
    else:
        task, k = "regression", 1
        y = torch.from_numpy(labels.astype(np.float32))[:, None]
    perm = torch.randperm(len(feats), generator=torch.Generator().manual_seed(len(feats)))
    n_test = max(1, round(len(feats) * test_fraction))
    te, rest = perm[:n_test], perm[n_test:]
    train, val = split_train_val(feats[rest], y[rest], val_fraction, seed)
    data = Data(f"csv:{path}", train, val, TensorData(feats[te], y[te]), input="vector", task=task,
                num_classes=k, in_chans=feats.shape[1],
                classes=tuple(_label_name(v) for v in values) if task != "regression" else None)
    return standardize(data)


def _label_name(v: float) -> str:
    """A label value as the file spells it: ``3``, ``-1``, ``100000000``, ``0.5``."""
    return str(int(v)) if v == round(v) else f"{v:.9g}"


def _is_finite(cell: str) -> bool:
    try:
        return bool(np.isfinite(np.float64(cell)))  # numpy's parser, as np.asarray's
    except ValueError:
        return False


def _parse(path: Path, rows: list[list[str]], line_nums: list[int], header: list[str] | None) -> np.ndarray:
    """The cells as float64, or a DataError naming the first cell that is not a finite number."""
    try:
        table = np.asarray(rows, dtype=np.float64)
    except ValueError:  # some cell is no number at all: only now look cell by cell
        i, j = next((i, j) for i, r in enumerate(rows) for j, c in enumerate(r) if not _is_finite(c))
    else:
        bad = np.argwhere(~np.isfinite(table))  # nan, inf (row-major: the first row first)
        if not len(bad):
            return table
        i, j = bad[0].tolist()
    cell = rows[i][j].strip()
    what = "is empty" if not cell else f"holds {cell!r}"
    raise DataError(f"csv data {path}: row {line_nums[i]}, {_column(j, header)} {what}; "
                     "every cell must be a finite number")
