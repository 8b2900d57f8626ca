"""The arena's report: latencies, one summary row per block, the scatter plot, the markdown."""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from blockzoo.bench.arena.candidates import backbone_skips
from blockzoo.bench.arena.one_run import measure_latency
from blockzoo.bench.arena.results import read_results, results_for
from blockzoo.bench.arena.settings import BACKBONE, BASELINE, KINDS, ArenaSettings

__all__ = ["SUMMARY_COLUMNS", "arena_latencies", "arena_markdown", "plot_arena", "summarize"]

log = logging.getLogger("blockzoo.arena")

SUMMARY_COLUMNS = ["kind", "block", "data", "seeds", "acc", "params", "flops", "train_s", "latency_ms"]


def arena_latencies(
    rows: Iterable[Mapping[str, Any]],
    settings: ArenaSettings,
    measure: Callable[[str, str, ArenaSettings], float] = measure_latency,
) -> dict[tuple[str, str], float]:
    """``{(kind, block): latency ms}`` for every block with a finished run, measured now."""
    out: dict[tuple[str, str], float] = {}
    for r in rows:
        key = (r["kind"], r["block"])
        if r["status"] == "ok" and key not in out:
            try:
                out[key] = measure(r["kind"], r["block"], settings)
            except Exception as e:  # trained fine but cannot be timed: leave the cell empty
                log.warning("arena: latency of %s failed: %s", r["block"], e)
    return out


def _fmt_pm(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def summarize(rows: Iterable[Mapping[str, Any]],
              latency: Mapping[tuple[str, str], float] | None = None) -> list[dict[str, Any]]:
    """One row per (kind, block): accuracy mean ± std over seeds, params, FLOPs, times, failures.

    ``latency`` (from ``arena_latencies``) fills the ``latency_ms`` column.
    """
    latency = latency or {}
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["kind"], r["block"]), []).append(r)
    out = []
    for (kind, block), rs in groups.items():
        ok = [r for r in rs if r["status"] == "ok"]
        failed = [r for r in rs if r["status"] != "ok"]
        row: dict[str, Any] = dict(kind=kind, block=block, data=rs[0]["data"], seeds=len(ok))
        if ok:
            mean, std = _fmt_pm([100 * r["test_acc"] for r in ok])
            row.update(acc=f"{mean:.1f} ± {std:.1f}", acc_mean=mean, acc_std=std,
                       params=ok[0]["params"], flops=ok[0]["flops"],
                       train_s=statistics.fmean(r["train_s"] for r in ok),
                       latency_ms=latency.get((kind, block)))
        if failed:
            row["error"] = failed[-1]["error"]
        out.append(row)
    return sorted(out, key=lambda r: (r["kind"], r["block"] != BASELINE, -r.get("acc_mean", -math.inf)))


def plot_arena(summary: Sequence[Mapping[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Accuracy (mean ± std over seeds) against inference latency, one panel per row kind
    (``image``, ``tokens`` attention; ``backbone`` models)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in summary if "acc_mean" in r and r.get("latency_ms") is not None]
    kinds = [k for k in (*KINDS, BACKBONE) if any(r["kind"] == k for r in ok)] or ["image"]
    wide = BACKBONE in kinds  # one point per model: a larger panel keeps the names apart
    fig, axes = plt.subplots(1, len(kinds), figsize=(sum(11 if k == BACKBONE else 6.5 for k in kinds),
                                                     7 if wide else 4.8), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        rs = [r for r in ok if r["kind"] == kind]
        for r in rs:
            base = r["block"] == BASELINE
            if base:
                ax.axhline(r["acc_mean"], color="black", lw=0.8, ls="--", label="backbone without attention")
            ax.errorbar(r["latency_ms"], r["acc_mean"], yerr=r["acc_std"], fmt="s" if base else "o",
                        color="black" if base else None, capsize=3)
            ax.annotate(r["block"], (r["latency_ms"], r["acc_mean"]), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")
        ax.set_xlabel("inference latency of one batch (ms, median)")
        ax.set_xscale("log")
        ax.set_ylabel("test accuracy (%), mean ± std over seeds")
        data = rs[0]["data"].split("@")[0] if rs else "-"
        ax.set_title(f"image classifiers trained on {data}, each at its example size" if kind == BACKBONE
                     else f"{kind} attention on {data}")
        ax.grid(alpha=0.3)
        if any(r["block"] == BASELINE for r in rs):
            ax.legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def arena_markdown(csv_path: str | Path, out_dir: str | Path, settings: ArenaSettings,
                   measure: Callable[[str, str, ArenaSettings], float] = measure_latency, *,
                   png_name: str = "arena.png") -> str:
    """The arena table (markdown) and plot (``png_name`` in ``out_dir``) from a results CSV.

    Latencies are measured now (``measure``), one block at a time. The backbone arena's
    models it does not train (``backbone_skips``) are listed with the reason.
    """
    from blockzoo.bench.report import render

    rows = results_for(read_results(csv_path), settings)
    summary = summarize(rows, arena_latencies(rows, settings, measure))
    png = plot_arena(summary, Path(out_dir) / png_name)
    lines = [render(summary, "markdown", SUMMARY_COLUMNS)]
    fails = [r for r in summary if r.get("error")]
    if fails:
        lines.append("\nFailed runs:\n" + "\n".join(f"- {r['block']}: {r['error']}" for r in fails))
    skips = backbone_skips(settings, list(settings.blocks) or None) if settings.arena == "backbones" else {}
    if skips:
        lines.append("\nNot trained here:\n" + "\n".join(f"- {m}: {why}" for m, why in skips.items()))
    lines.append(f"\n![accuracy vs latency]({png.name})")
    return "\n".join(lines)
