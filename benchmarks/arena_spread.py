"""Are the arena's differences larger than its seed-to-seed spread? Read an arena CSV and say.

Per input kind: the median over blocks of the seed-to-seed standard deviation of test
accuracy, the standard deviation of the blocks' mean accuracies (how far apart blocks
are), and each block's difference from the backbone without attention (``none``) with
its standard error, sqrt(s_b^2 / n_b + s_0^2 / n_0); a difference beyond two standard
errors is marked ``*``. Nothing is trained or timed.

    python benchmarks/arena_spread.py docs/arena.csv [--epochs 6] [--data digits]
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections import defaultdict

from blockzoo.bench.arena import read_results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("csv")
    p.add_argument("--epochs", type=int, help="only runs of this many epochs")
    p.add_argument("--data", help="only runs on this data set")
    args = p.parse_args()
    accs: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in read_results(args.csv):
        if r["status"] != "ok" or (args.epochs and int(r["epochs"]) != args.epochs):
            continue
        if args.data and r["data"] != args.data:
            continue
        accs[(r["kind"], r["block"])].append(100 * float(r["test_acc"]))
    for kind in sorted({k for k, _ in accs}):
        blocks = {b: v for (k, b), v in accs.items() if k == kind and len(v) > 1}
        if "none" not in blocks or len(blocks) < 3:
            continue
        stds = [statistics.stdev(v) for v in blocks.values()]
        means = [statistics.fmean(v) for v in blocks.values()]
        b0 = blocks["none"]
        m0, s0 = statistics.fmean(b0), statistics.stdev(b0)
        print(f"## {kind}: {len(blocks)} blocks (incl. none), {min(map(len, blocks.values()))}+ seeds each")
        print(f"median seed std {statistics.median(stds):.2f} points; std of block means "
              f"{statistics.stdev(means):.2f}; means from {min(means):.1f} to {max(means):.1f}")
        rows = []
        for b, v in blocks.items():
            if b == "none":
                continue
            m, s = statistics.fmean(v), statistics.stdev(v)
            se = math.sqrt(s**2 / len(v) + s0**2 / len(b0))
            d = m - m0
            rows.append((d, b, s, se))
        sep = sum(abs(d) > 2 * se for d, _, _, se in rows)
        print(f"{sep} of {len(rows)} blocks differ from none (mean {m0:.1f} ± {s0:.1f}) by more than "
              "2 standard errors")
        print("| block | diff vs none | seed std | se of diff | beyond 2 se |")
        print("|---|---|---|---|---|")
        for d, b, s, se in sorted(rows, reverse=True):
            print(f"| {b} | {d:+.1f} | {s:.1f} | {se:.1f} | {'*' if abs(d) > 2 * se else ''} |")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
