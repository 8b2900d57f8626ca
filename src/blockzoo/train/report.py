"""The closing summary of ``blockzoo train``: the run's numbers beside published baselines.

Rows measured in this run and rows quoted from a paper are labelled as such; the
paper is the data set's registered ``reference``. The final metrics of the test
split (``metrics.py``) follow the headline number: macro-F1 and, for a binary task,
ROC AUC, then precision and recall class by class under the data's class names;
MAE and R² for a regression. ``blockzoo eval`` prints them with the same labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from blockzoo.bench.report import render
from blockzoo.data.base import dataset_entry, list_datasets
from blockzoo.train.loop import FitResult

__all__ = ["LABELS", "format_metric", "metric_rows", "per_class_table", "train_report"]

# A metric's key (metrics.json, FitResult.test) -> its name in a printed table.
LABELS = {"loss": "loss", "acc": "accuracy", "macro_f1": "macro-F1", "roc_auc": "ROC AUC", "mse": "MSE",
          "mae": "MAE", "r2": "R²"}
# Printed after the headline number, in this order, where the task has them.
_DETAILS = ("macro_f1", "roc_auc", "mae", "r2")


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def format_metric(key: str, value: Any) -> str:
    """Accuracy as a percentage, F1, AUC and R² to 3 decimals, the rest to 4 significant digits;
    None (undefined, e.g. the AUC of a split with one class) as ``undefined``."""
    if value is None:
        return "undefined"
    if key == "acc":
        return _pct(value)
    if key in ("macro_f1", "roc_auc", "r2"):
        return f"{value:.3f}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def metric_rows(metrics: Mapping[str, Any], prefix: str) -> list[dict[str, str]]:
    """``item``/``value`` rows of the detailed metrics present in ``metrics`` (``prefix``: "test")."""
    return [dict(item=f"{prefix} {LABELS[k]}", value=format_metric(k, metrics[k]))
            for k in _DETAILS if k in metrics]


def per_class_table(metrics: Mapping[str, Any]) -> str | None:
    """Precision, recall, F1 and support of each class, as a table; None without them."""
    per = metrics.get("per_class")
    if not per:
        return None
    rows = [{"class": c["class"], "precision": f"{c['precision']:.3f}", "recall": f"{c['recall']:.3f}",
             "F1": f"{c['f1']:.3f}", "support": c["support"]} for c in per]
    return render(rows, "table", ["class", "precision", "recall", "F1", "support"])


def train_report(result: FitResult, model: str) -> str:
    """The run's model, data, epochs, best validation and test numbers, time and folder;
    then, where the data set has published baselines, this run beside them; then the
    test split's precision, recall and F1 class by class (classification)."""
    metric = result.metric
    test = result.test.get("acc" if metric == "acc" else "loss", float("nan"))
    fmt = _pct if metric == "acc" else (lambda v: f"{v:.4g}")
    label = {"acc": "accuracy", "mse": "MSE"}.get(metric, "loss")
    best = "(no epoch finished)"
    if result.best_epoch:
        row = result.history[result.best_epoch - 1]
        parts = ([f"val accuracy {_pct(row['val_acc'])}"] if "val_acc" in row else [])
        best = f"epoch {result.best_epoch} by {result.monitor}: " + ", ".join(
            [*parts, f"val loss {row['val_loss']:.4g}"])
    rows = [
        dict(item="model", value=model),
        dict(item="data", value=result.data_name),
        dict(item="epochs / steps", value=f"{len(result.history)} / {result.steps}"),
        dict(item="best (tested)", value=best),
        dict(item=f"test {label}", value=fmt(test)),
        *metric_rows(result.test, "test"),
        dict(item="training time", value=f"{result.seconds:.1f} s"),
        dict(item="run directory", value=str(result.run_dir)),
    ]
    if result.run_dir is not None and (result.run_dir / "confusion.png").exists():
        rows.append(dict(item="confusion matrix", value=str(result.run_dir / "confusion.png")))
    lines = [render(rows, "table", ["item", "value"])]
    if result.baselines:
        col = f"test {label}"
        ref = [dict(model=f"{model} (this run)", source="measured here", **{col: fmt(test)})]
        ref += [dict(model=k, source="paper", **{col: fmt(v)}) for k, v in result.baselines.items()]
        cite = (dataset_entry(result.data_name).reference if result.data_name in list_datasets()
                else "") or "reference values of the data set"
        lines += ["", f"compared with published baselines ({cite}):",
                  render(ref, "table", ["model", col, "source"])]
        if result.data_name == "mnist1d":
            lines.append("(the paper's rows are its Table 1 figures, not run here; `blockzoo reproduce "
                         "mnist1d` trains those four models with the paper's recipe)")
    table = per_class_table(result.test)
    if table:
        lines += ["", "test split, per class:", table]
    return "\n".join(lines)
