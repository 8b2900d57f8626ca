"""``blockzoo reproduce``: a paper's table, trained here with the paper's models and recipe.

Top-level imports stay torch-free (the parser is built without torch); the handler
imports the training code.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from blockzoo.cli.common import positive_int

__all__ = ["add_reproduce"]

TASKS = ("mnist1d",)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from blockzoo.bench.report import render
    from blockzoo.bench.reproduce import REPRODUCE_COLUMNS, reproduce_mnist1d, write_reproduction

    models = [m for m in (args.models or "").split(",") if m] or None
    # progress: one log line per finished run (stderr)
    results = reproduce_mnist1d(args.seeds, models=models, steps=args.steps)
    paths = write_reproduction(results, args.out)
    steps = args.steps or 6000
    print(f"# MNIST-1D, Greydanus & Kobak (arXiv 2011.14439), Table 1: 'paper' is the paper's figure, "
          f"'ours' was measured here (test accuracy, mean ± std over {args.seeds} seed(s), {steps} steps "
          "of Adam lr 1e-2, batch 100); diff: ours - paper in points")
    print(render([r.row() for r in results], "table", REPRODUCE_COLUMNS))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def add_reproduce(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="train a paper's models with its recipe; ours beside its table")
    p.add_argument("task", choices=TASKS, help="mnist1d: the four baselines of the MNIST-1D paper")
    p.add_argument("--seeds", type=positive_int, default=3, help="runs per model, seeds 0..K-1 (default 3)")
    p.add_argument("--steps", type=positive_int, help="optimisation steps (default: the paper's 6000)")
    p.add_argument("--models", help="comma-separated subset of mnist1d_paper_logistic, mnist1d_paper_mlp, "
                   "mnist1d_paper_cnn, mnist1d_paper_gru (default all four)")
    p.add_argument("--out", type=Path, default=Path("reproduce"),
                   help="folder for mnist1d.md/.csv/.json and mnist1d.png (default reproduce/)")
    p.set_defaults(func=cmd_reproduce)
