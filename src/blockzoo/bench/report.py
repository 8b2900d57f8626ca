"""Render rows of results as a text table, markdown, CSV or JSON."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

from blockzoo.checks import ConfigError

__all__ = ["FORMATS", "render"]

FORMATS = ("table", "markdown", "csv", "json")


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def render(
    rows: Sequence[Mapping[str, Any]], fmt: str = "table", columns: Sequence[str] | None = None
) -> str:
    """Render ``rows`` (dicts sharing keys) in ``fmt``: table, markdown, csv or json."""
    if fmt not in FORMATS:
        raise ConfigError(f"format {fmt!r} not in {FORMATS}")
    cols = list(columns or (rows[0].keys() if rows else []))
    if fmt == "json":
        return json.dumps([{c: r.get(c) for c in cols} for r in rows], indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue().rstrip("\n")
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    if fmt == "markdown":
        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
        return "\n".join(lines)
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]

    def line(vals: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(vals, widths, strict=True)).rstrip()
    return "\n".join([line(cols), line(["-" * w for w in widths]), *map(line, cells)])
