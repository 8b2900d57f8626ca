"""The arena's results CSV: its columns, reading it, appending one row, and which rows count.

A run is identified by (kind, block, seed, data, epochs, small_data) (a backbone's
``data`` also names the size it trains at, ``digits@32x32``); a later call
skips the runs already ``ok`` in the file, so an interrupted arena resumes where it
stopped and failed runs are re-tried.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from blockzoo.bench.arena.candidates import plan, run_data
from blockzoo.bench.arena.settings import ArenaSettings

__all__ = ["ARENA_COLUMNS", "append_row", "read_results", "results_for", "run_key"]

ARENA_COLUMNS = [
    "kind", "block", "seed", "data", "epochs", "small_data", "status", "test_acc", "params", "flops",
    "train_s", "error", "finished_at",
]


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Rows of an arena CSV, numbers parsed; [] when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["seed"], r["epochs"] = int(r["seed"]), int(r["epochs"])
        r["small_data"] = r["small_data"] == "True"
        for k in ("test_acc", "train_s"):
            r[k] = float(r[k]) if r.get(k) else None
        for k in ("params", "flops"):
            r[k] = int(r[k]) if r.get(k) else None
    return rows


def run_key(kind: str, block: str, seed: int, data: str, epochs: int, small_data: bool) -> tuple:
    """What identifies one run in the CSV."""
    return (kind, block, int(seed), data, int(epochs), bool(small_data))


def append_row(path: Path, row: Mapping[str, Any]) -> None:
    """Append one result row, writing the header first into a new or empty file."""
    new = not path.exists() or path.stat().st_size == 0
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ARENA_COLUMNS
    if not new:
        with path.open(newline="") as f:
            columns = next(csv.reader(f))  # keep an existing file's column order
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore", restval="")
        if new:
            w.writeheader()
        w.writerow(row)


def results_for(rows: Iterable[Mapping[str, Any]], settings: ArenaSettings) -> list[dict[str, Any]]:
    """The rows of ``settings``' plan (latest row per run)."""
    wanted = {run_key(k, b, s, run_data(settings, k, b), settings.epochs, settings.small_data)
              for k, b, s in plan(settings)}
    latest: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        key = run_key(r["kind"], r["block"], r["seed"], r["data"], r["epochs"], r["small_data"])
        if key in wanted and (key not in latest or latest[key]["status"] != "ok"):
            latest[key] = dict(r)
    return list(latest.values())
