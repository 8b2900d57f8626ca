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
        if result.data_name == "mnist1d":
            lines.append("(the paper's rows are its Table 1 figures, not run here; `blockzoo reproduce "
                         "mnist1d` trains those four models with the paper's recipe)")
    return "\n".join(lines)
