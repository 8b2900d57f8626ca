"""Reports: rows of results as a text table, markdown, CSV or JSON; the catalogue, the
``info`` page of one entry and the ``bench`` report, as the CLI and the docs show them."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from blockzoo.checks import ConfigError
from blockzoo.registry import Spec, spec
from blockzoo.vocab import FORMATS

__all__ = [
    "CATALOGUE_COLUMNS", "FORMATS", "bench_text", "catalogue_markdown", "catalogue_rows", "entry_info",
    "render",
]


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


# --------------------------------------------------------------------------- catalogue

CATALOGUE_COLUMNS = ["name", "family", "paper", "year", "arxiv", "input", "params"]


def catalogue_rows(names: Sequence[str]) -> list[dict[str, Any]]:
    """One row per entry: name, family, paper, year, input kind, params at the example."""
    from blockzoo.bench.flops import count_params

    rows = []
    for name in names:
        s = spec(name)
        link = f"[{s.arxiv}]({s.url})" if s.url else s.arxiv
        rows.append(dict(name=s.name, family=s.family, paper=s.paper, year=s.year, arxiv=link,
                         input=s.input, params=count_params(s.build_example())))
    return rows


def catalogue_markdown(names: Sequence[str]) -> str:
    """The README catalogue: ``blockzoo list --format markdown``."""
    return render(catalogue_rows(names), "markdown", CATALOGUE_COLUMNS)


# --------------------------------------------------------------------------- one entry


def shapes_text(obj: Any) -> str:
    """The shapes of every tensor in ``obj`` (a tensor, tuple, dict, ...), comma-separated."""
    leaves = torch.utils._pytree.tree_leaves(obj)
    return ", ".join(str(tuple(t.shape)) for t in leaves if isinstance(t, torch.Tensor))


def entry_info(s: Spec, size: tuple[int, ...] | None = None, batch: int = 1) -> str:
    """The ``blockzoo info`` page of one entry, measured at ``size`` (default: the example's)."""
    from blockzoo.bench.flops import count_params, flop_report

    model = s.build_example().eval()
    inputs = s.make_input(batch=batch, size=size)
    with torch.no_grad():
        out = model(*inputs)
    report = flop_report(model, inputs)
    flops = report.flops
    cfg = ", ".join(f"{k}={v!r}" for k, v in s.example.config.items())
    lines = [
        f"{s.name}  ({s.family}, input: {s.input})",
        f"  paper:   {s.paper} ({s.year})",
        f"  {'arXiv:  ' if s.url else 'source: '} {s.url or s.arxiv}",
        f"  class:   {s.builder.__module__}.{s.builder.__qualname__}",
        f"  about:   {s.summary}",
        f"  example: {s.builder.__name__}({cfg})",
        f"  input:   {shapes_text(inputs)}",
        f"  output:  {shapes_text(out)}",
        f"  params:  {count_params(model):,}",
        f"  FLOPs:   {flops:,} per forward at batch {batch} (torch flop counter; 2 per MAC)"
        f" = {flops / 1e9:.3g} GFLOPs",
    ]
    if report.uncounted:
        lines.append("  uncounted ops: " + ", ".join(report.uncounted)
                     + " (no FLOP formula: the count above leaves them out)")
    if s.exempt:
        lines.append("  exempt:  " + "; ".join(f"{k}: {v}" for k, v in s.exempt.items()))
    return "\n".join(lines)


# --------------------------------------------------------------------------- bench


def bench_text(result: Any, fmt: str) -> str:
    """The ``blockzoo bench`` report: machine and settings, the table, then the failures."""
    from blockzoo.bench.runner import BENCH_COLUMNS, COMPILE_COLUMNS

    columns = BENCH_COLUMNS + COMPILE_COLUMNS if "compiled" in result.machine else BENCH_COLUMNS
    if fmt == "json":
        return json.dumps(dict(machine=result.machine, rows=result.rows, failures=result.failures), indent=2)
    if fmt == "csv":
        head = "\n".join(f"# {k}: {v}" for k, v in result.machine.items())
        body = render(result.rows, "csv", columns)
        fails = "\n".join(f"# FAILED {f['name']}: {f['error']}" for f in result.failures)
        return "\n".join(p for p in (head, body, fails) if p)
    bullet = "- " if fmt == "markdown" else ""
    head = "\n".join(f"{bullet}{k}: {v}" for k, v in result.machine.items())
    parts = [head, render(result.rows, fmt, columns) if result.rows else "(no block ran)"]
    if result.failures:
        title = "Failed:" if fmt == "table" else "**Failed:**"
        parts.append(title + "\n" + "\n".join(f"{bullet or '  '}{f['name']}: {f['error']}"
                                                for f in result.failures))
    return "\n\n".join(parts)
