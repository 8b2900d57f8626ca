"""Reproductions of published tables: the paper's models, trained with the paper's recipe.

MNIST-1D (Greydanus & Kobak, "Scaling Down Deep Learning with MNIST-1D", arXiv
2011.14439, Table 1): logistic regression 32%, MLP 68%, CNN 94%, GRU 91% test
accuracy. ``reproduce_mnist1d`` trains the four registered ``mnist1d_paper_*``
models through ``blockzoo.train.fit`` with the recipe of the paper's code
(``notebooks/train.py`` and the classification notebook of
github.com/greydanus/mnist1d): Adam, learning rate 1e-2 held constant, no weight
decay, batches of 100, 6000 steps, all 4000 training signals, and the test
accuracy of the weights after the last step. The paper has no validation split:
its script watches the test set as it trains and selects nothing, so here the
"validation" split the engine reports every epoch is the test set, and the
weights tested are the last ones (``fit`` without a run folder keeps no
``best.pt``).

Deviations: the engine reshuffles the training signals every epoch; the paper's
loop walks them in their stored order (batch ``i`` is rows ``100 i mod 4000``
onwards). Seeds are 0..K-1 (the paper reports one run, seed 42).
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from blockzoo.bench.report import render
from blockzoo.checks import ConfigError
from blockzoo.data import load_data
from blockzoo.data.base import Data, TensorData
from blockzoo.data.bundled import load_mnist1d_arrays
from blockzoo.models.mnist1d import PAPER_MODELS
from blockzoo.registry import create
from blockzoo.train.loop import fit

__all__ = ["MNIST1D_RECIPE", "REPRODUCE_COLUMNS", "ReproduceResult", "plot_reproduction",
           "reproduce_mnist1d", "write_reproduction"]

log = logging.getLogger("blockzoo.reproduce")

# The paper's training recipe as TrainConfig options (notebooks/train.py, get_model_args;
# the classification notebook sets total_steps = 6000).
MNIST1D_RECIPE: dict[str, Any] = dict(optimizer="adam", lr=1e-2, weight_decay=0.0, batch_size=100,
                                      steps=6000, schedule="constant", warmup=0.0, device="cpu",
                                      quiet=True, plots=False)

REPRODUCE_COLUMNS = ["model", "paper_name", "paper", "ours", "diff", "peak", "seeds", "params", "train_s"]


@dataclass
class ReproduceResult:
    """Per model: its seeds' test accuracies (after the last step, and the highest the test
    set saw at the end of any epoch), the paper's figure, params and training times."""

    model: str
    paper_name: str
    paper_acc: float
    accs: list[float]
    params: int
    seconds: list[float]
    peaks: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accs)

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (0 for one seed)."""
        return statistics.stdev(self.accs) if len(self.accs) > 1 else 0.0

    def row(self) -> dict[str, Any]:
        """The table row: accuracies in percent, ``diff`` = ours - paper in points, ``peak`` the
        mean over seeds of the best end-of-epoch test accuracy (not a result: it shows how much
        choosing the stopping step on the test set could add)."""
        return dict(model=self.model, paper_name=self.paper_name, paper=f"{100 * self.paper_acc:.0f}%",
                    ours=f"{100 * self.mean:.1f} ± {100 * self.std:.1f}%",
                    diff=f"{100 * (self.mean - self.paper_acc):+.1f}",
                    peak=f"{100 * statistics.fmean(self.peaks):.1f}%", seeds=len(self.accs),
                    params=self.params, train_s=round(statistics.fmean(self.seconds), 1))


def _paper_data() -> Data:
    """MNIST-1D as the paper trains on it: all 4000 training signals; the test set as the
    split watched during training (the paper's script does the same, selecting nothing)."""
    a = load_mnist1d_arrays()
    data = load_data("mnist1d")
    train = TensorData(torch.from_numpy(a["x"]).unsqueeze(-1), torch.from_numpy(a["y"]))  # (4000, 40, 1)
    return replace(data, train=train, val=data.test)


def reproduce_mnist1d(
    seeds: int = 3,
    *,
    models: Sequence[str] | None = None,
    steps: int | None = None,
) -> list[ReproduceResult]:
    """Train each of the paper's MNIST-1D models with its recipe over ``seeds`` seeds.

    Args:
        seeds: K, runs per model (seeds 0..K-1).
        models: registered names (default: the four ``mnist1d_paper_*`` models).
        steps: override the recipe's 6000 steps (tests, smoke runs).

    Returns:
        One ``ReproduceResult`` per model, in the order given.
    """
    names = list(models or PAPER_MODELS)
    unknown = [n for n in names if n not in PAPER_MODELS]
    if unknown:
        raise ConfigError(f"reproduce mnist1d: {unknown} are not the paper's models; "
                          f"expected some of {sorted(PAPER_MODELS)}")
    if seeds < 1:
        raise ConfigError(f"reproduce mnist1d: seeds={seeds} must be >= 1")
    recipe = {**MNIST1D_RECIPE, **({"steps": steps} if steps is not None else {})}
    data = _paper_data()
    out, n_runs = [], 0
    for name in names:
        kind = "vector" if name in ("mnist1d_paper_logistic", "mnist1d_paper_mlp") else "sequence"
        view = data.view(kind)
        size = {"in_features": 40} if kind == "vector" else {"input_size": 1, "seq_len": 40}
        accs, secs, peaks, params = [], [], [], 0
        for seed in range(seeds):
            torch.manual_seed(seed)
            model = create(name, num_classes=10, **size)
            params = sum(p.numel() for p in model.parameters())
            t0 = time.perf_counter()
            result = fit(model, view, dict(recipe, seed=seed))
            secs.append(time.perf_counter() - t0)
            accs.append(float(result.test["acc"]))
            peaks.append(max((row["val_acc"] for row in result.history), default=accs[-1]))
            n_runs += 1
            log.info("[%d/%d] %s seed %d: test accuracy %.1f%% (%d steps, %.1f s)", n_runs,
                     len(names) * seeds, name, seed, 100 * accs[-1], result.steps, secs[-1])
        label, paper = PAPER_MODELS[name]
        out.append(ReproduceResult(name, label, paper, accs, params, secs, peaks))
    return out


def plot_reproduction(results: Sequence[ReproduceResult], path: str | Path) -> Path:
    """Bars of the paper's accuracy beside ours (mean, error bar ± std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    xs = range(len(results))
    ax.bar([x - 0.2 for x in xs], [100 * r.paper_acc for r in results], 0.4, label="paper (Table 1)",
           color="#bbbbbb")
    ax.bar([x + 0.2 for x in xs], [100 * r.mean for r in results], 0.4,
           yerr=[100 * r.std for r in results], capsize=4,
           label=f"blockzoo (mean ± std, {len(results[0].accs) if results else 0} seeds)", color="#3b75af")
    ax.set_xticks(list(xs), [r.paper_name for r in results])
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("MNIST-1D: the paper's baselines reproduced")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_reproduction(results: Sequence[ReproduceResult], out_dir: str | Path,
                       stem: str = "mnist1d") -> dict[str, Path]:
    """Write the table as ``<stem>.md``, ``.csv`` and ``.json`` (with every seed's accuracy) and
    the figure ``<stem>.png``; returns the paths by extension."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [r.row() for r in results]
    paths = {ext: out_dir / f"{stem}.{ext}" for ext in ("md", "csv", "json")}
    paths["md"].write_text(render(rows, "markdown", REPRODUCE_COLUMNS) + "\n")
    paths["csv"].write_text(render(rows, "csv", REPRODUCE_COLUMNS) + "\n")
    # the JSON keeps every seed's accuracy and time beside the row
    paths["json"].write_text(json.dumps([{**row, "accs": r.accs, "peaks": r.peaks, "seconds": r.seconds}
                                         for row, r in zip(rows, results, strict=True)], indent=2) + "\n")
    paths["png"] = plot_reproduction(results, out_dir / f"{stem}.png")
    return paths
