"""The closing summary of ``blockzoo train``: the run's numbers beside published baselines.

Rows measured in this run and rows quoted from a paper are labelled as such; the
paper is the data set's registered ``reference``.
"""

from __future__ import annotations

from blockzoo.bench.report import render
from blockzoo.data.base import dataset_entry, list_datasets
from blockzoo.train.loop import FitResult

__all__ = ["train_report"]


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def train_report(result: FitResult, model: str) -> str:
    """The run's model, data, epochs, best validation and test numbers, time and folder;
    then, where the data set has published baselines, this run beside them."""
    metric = result.metric
    test = result.test.get("acc" if metric == "acc" else "loss", float("nan"))
    fmt = _pct if metric == "acc" else (lambda v: f"{v:.4g}")
    label = {"acc": "accuracy", "mse": "MSE"}.get(metric, "loss")
    best = result.best_val if result.best_val is not None else float("nan")
    if metric == "loss" and result.best_epoch:
        best = result.history[result.best_epoch - 1]["val_loss"]
    rows = [
        dict(item="model", value=model),
        dict(item="data", value=result.data_name),
        dict(item="epochs / steps", value=f"{len(result.history)} / {result.steps}"),
        dict(item=f"best val {label}", value=f"{fmt(best)} (epoch {result.best_epoch})"),
        dict(item=f"test {label}", value=fmt(test)),
        dict(item="training time", value=f"{result.seconds:.1f} s"),
        dict(item="run directory", value=str(result.run_dir)),
    ]
    lines = [render(rows, "table", ["item", "value"])]
    if result.baselines:
        col = f"test {label}"
        ref = [dict(model=f"{model} (this run)", source="measured here", **{col: fmt(test)})]
        ref += [dict(model=k, source="paper", **{col: fmt(v)}) for k, v in result.baselines.items()]
        cite = (dataset_entry(result.data_name).reference if result.data_name in list_datasets()
                else "") or "reference values of the data set"
        lines += ["", f"compared with published baselines ({cite}):",
                  render(ref, "table", ["model", col, "source"])]
    return "\n".join(lines)
