"""An LSTM and a GRU solve the adding problem (Hochreiter & Schmidhuber 1997).

Each input is T = 50 steps of (value, marker); the target is the sum of the two
marked values. Always predicting 1 scores MSE 0.167; a network that remembers the
marked values across the sequence scores far below it. Training data are drawn
fresh every step (a new seed per batch); the test set is fixed.

    python examples/lstm_adding_problem.py             # T = 50, about a minute per model on one core
    python examples/lstm_adding_problem.py --quick     # a few seconds (also BLOCKZOO_QUICK=1)

A plain PyTorch loop: model, Adam, MSE, gradient clipping.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

import blockzoo
from blockzoo.data.sequence_tasks import adding_problem, adding_problem_baseline


def train(cell: str, args: argparse.Namespace) -> float:
    """Train one model and return its test MSE."""
    torch.manual_seed(args.seed)
    model = blockzoo.create_model(f"{cell}_classifier", num_classes=1, in_chans=2,
                                  hidden_size=args.hidden, num_layers=1, bidirectional=False)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    x_test, y_test = adding_problem(args.n_test, args.T, seed=10**6 + args.seed)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        x, y = adding_problem(args.batch, args.T, seed=args.seed * 10**5 + step)
        loss = F.mse_loss(model(x).squeeze(-1), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % args.log_every == 0 or step == args.steps:
            took = time.perf_counter() - start
            print(f"  {cell} step {step:5d}  train MSE {loss.item():.4f}  ({took:.0f} s)")
    model.eval()
    with torch.no_grad():
        return F.mse_loss(model(x_test).squeeze(-1), y_test).item()


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--T", type=int, default=50, help="sequence length")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=250)
    p.add_argument("--quick", action="store_true", help="a few steps on short sequences (for tests)")
    args = p.parse_args(argv)
    if args.quick or os.environ.get("BLOCKZOO_QUICK") == "1":
        args.T, args.steps, args.batch, args.hidden, args.n_test, args.log_every = 20, 40, 32, 16, 200, 20
    torch.set_num_threads(args.threads)
    base = adding_problem_baseline()
    print(f"adding problem, T={args.T}: trivial baseline (predict 1) MSE {base:.3f}")
    results = {}
    for cell in ("lstm", "gru"):
        results[cell] = train(cell, args)
        print(f"{cell}: test MSE {results[cell]:.4f}  ({results[cell] / base:.1%} of the baseline)")
    return results


if __name__ == "__main__":
    main()
