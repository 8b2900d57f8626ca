"""Tabular data from a CSV file: ``--data csv:PATH`` (last column is the label).

Like the Pima Indians diabetes file of the tutorials (Smith et al., "Using the
ADAP Learning Algorithm to Forecast the Onset of Diabetes Mellitus", 1988): rows
of numeric features and a label. A header line is detected and skipped. The task
is inferred from the labels: two integer values -> binary, a few integer values
-> classification, anything else -> regression. Features are standardised with
the training split's mean and std only.

Letters: B batch, F features.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from blockzoo.data.base import Data, TensorData, split_train_val, standardize

__all__ = ["load_csv"]

_MAX_CLASSES = 50


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def load_csv(path: str | Path, *, seed: int = 0, val_fraction: float = 0.1,
             test_fraction: float = 0.2) -> Data:
    """Load a numeric CSV; the last column is the label.

    Rows are shuffled with ``seed`` (fixed seed for the test split, so the test rows
    do not change with the run's seed), ``test_fraction`` held out as test and
    ``val_fraction`` of the rest as validation.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"csv data: no such file {str(path)!r}")
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if rows and not all(_is_number(c) for c in rows[0]):
        rows = rows[1:]  # header
    if len(rows) < 4:
        raise ValueError(f"csv data {path}: needs at least 4 numeric rows, got {len(rows)}")
    widths = {len(r) for r in rows}
    if len(widths) != 1 or widths.pop() < 2:
        raise ValueError(f"csv data {path}: rows must all have the same number (>= 2) of columns")
    try:
        table = np.asarray(rows, dtype=np.float64)
    except ValueError as e:
        raise ValueError(f"csv data {path}: non-numeric value ({e})") from None
    feats = torch.from_numpy(table[:, :-1].astype(np.float32))
    labels = table[:, -1]
    values = np.unique(labels)
    integral = bool(np.all(labels == np.round(labels)))
    if integral and len(values) == 2:
        task, k = "binary", 1
        y = torch.from_numpy((labels == values[1]).astype(np.float32))[:, None]
    elif integral and len(values) <= _MAX_CLASSES and values.min() >= 0:
        task, k = "classification", int(values.max()) + 1
        y = torch.from_numpy(labels.astype(np.int64))
    else:
        task, k = "regression", 1
        y = torch.from_numpy(labels.astype(np.float32))[:, None]
    perm = torch.randperm(len(feats), generator=torch.Generator().manual_seed(len(feats)))
    n_test = max(1, round(len(feats) * test_fraction))
    te, rest = perm[:n_test], perm[n_test:]
    train, val = split_train_val(feats[rest], y[rest], val_fraction, seed)
    data = Data(f"csv:{path}", train, val, TensorData(feats[te], y[te]), input="vector", task=task,
                num_classes=k, in_chans=feats.shape[1],
                classes=tuple(str(v) for v in values) if task != "regression" else None)
    return standardize(data)
