"""A block as it is now against the same block as it was at a git ref, in one process.

The block's file at ``--ref`` (default ``main``) is read with ``git show`` and loaded as a
separate module (its ``@register`` skipped), so both versions run side by side on the
same input with the same weights (the old one loads the new one's state_dict; the outputs
must agree within 1e-4 relative before anything is timed). Everything else (``checks``,
shared helpers) is today's code, so the ratio isolates the change in the block's own
file. Timing as in ``plain_reference.py``: eval under ``no_grad`` (``--train``: forward +
backward), one thread, ``--passes`` passes alternating the two, min of per-pass medians,
quartiles of the per-pass ratios.

    PYTHONPATH=src python benchmarks/before_after.py s2_attention csra condconv --ref main
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import math
import platform
import statistics
import subprocess
import sys
import time
import types
from functools import partial
from pathlib import Path
from unittest import mock

import torch
from torch import nn

import blockzoo
import blockzoo.registry
from blockzoo.bench.report import FORMATS, render

sys.path.insert(0, str(Path(__file__).parent))
from plain_reference import configs, time_pair

ROOT = Path(__file__).resolve().parents[1]


def old_class(name: str, ref: str) -> type[nn.Module]:
    """The registered class of ``name`` as its file was at git ``ref``."""
    cls = blockzoo.spec(name).builder
    path = Path(inspect.getfile(cls)).resolve().relative_to(ROOT)
    src = subprocess.check_output(["git", "show", f"{ref}:{path.as_posix()}"], cwd=ROOT, text=True)
    mod = types.ModuleType(f"{cls.__module__}_at_{ref.replace('/', '_')}")
    mod.__file__ = f"{ref}:{path}"
    with mock.patch.object(blockzoo.registry, "register", lambda *a, **k: (lambda c: c)):
        sys.modules[mod.__name__] = mod
        exec(compile(src, mod.__file__, "exec"), mod.__dict__)
    importlib.invalidate_caches()
    return getattr(mod, cls.__name__)


def old_like(block: nn.Module, old_cls: type[nn.Module], name: str, cfg: str) -> nn.Module:
    """The old class built with the same arguments as ``block`` (from the registry's config)."""
    s = blockzoo.spec(name)
    kw = dict(s.example.config)
    if cfg == "large":
        if s.width_arg:
            kw[s.width_arg] = 64
        if "dim_out" in kw:
            kw["dim_out"] = 64
    old = old_cls(**kw)
    old.load_state_dict(block.state_dict())
    return old


def step(m: nn.Module, inp: tuple[torch.Tensor, ...], train: bool) -> None:
    if train:
        m(*inp).float().sum().backward()
    else:
        with torch.no_grad():
            m(*inp)


def measure(name: str, cfg: str, block: nn.Module, old: nn.Module, inp: tuple[torch.Tensor, ...],
            args: argparse.Namespace) -> dict[str, object]:
    """One row: outputs compared, then both versions timed alternately."""
    block.train(args.train), old.train(args.train)
    if args.train:
        inp = tuple(t.requires_grad_() if t.is_floating_point() else t for t in inp)
    with torch.no_grad():
        want, got = old(*inp), block(*inp)
    err = (want - got).abs().max().item() / max(want.abs().max().item(), 1e-12)
    row: dict[str, object] = {"block": name, "config": cfg, "max rel diff": err}
    if err > 1e-4:
        return {**row, "note": "outputs differ"}
    now, before = partial(step, block, inp, args.train), partial(step, old, inp, args.train)
    for _ in range(5):
        now(), before()
    start = time.perf_counter()
    for _ in range(3):
        now(), before()
    one = (time.perf_counter() - start) / 6
    reps = args.reps or max(15, min(2000, int(args.budget / args.passes / 2 / max(one, 1e-7))))
    now_t, old_t = time_pair(now, before, reps, args.passes)
    ratios = sorted(o / n for o, n in zip(old_t, now_t, strict=True))
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return {**row, "before us": 1e6 * min(old_t), "now us": 1e6 * min(now_t),
            "before/now": min(old_t) / min(now_t), "ratio q1": q1, "ratio q3": q3, "reps": reps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="+")
    ap.add_argument("--ref", default="main")
    ap.add_argument("--configs", nargs="*", default=["example x8", "large"])
    ap.add_argument("--passes", type=int, default=9)
    ap.add_argument("--reps", type=int, default=0, help="calls per pass (0: from --budget)")
    ap.add_argument("--budget", type=float, default=1.5, help="seconds of timing per row")
    ap.add_argument("--train", action="store_true", help="time forward + backward instead of eval")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--format", choices=FORMATS, default="table")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    mode = "train fwd+bwd" if args.train else "eval no_grad"
    print(f"machine: {platform.machine()} | torch {torch.__version__} | threads {torch.get_num_threads()} | "
          f"{mode} | before = git {args.ref} | {args.passes} passes alternated, min of per-pass medians")
    rows = []
    for name in args.names:
        old_cls = old_class(name, args.ref)
        for cfg, (block, inp) in configs(name).items():
            if cfg in args.configs:
                rows.append(measure(name, cfg, block, old_like(block, old_cls, name, cfg), inp, args))
    print(render(rows, args.format, ["block", "config", "before us", "now us", "before/now", "ratio q1",
                                     "ratio q3", "reps", "max rel diff", "note"]))
    r = [row["before/now"] for row in rows if "before/now" in row]
    if r:
        print(f"geometric mean before/now: {math.exp(sum(map(math.log, r)) / len(r)):.3f} over {len(r)} rows")


if __name__ == "__main__":
    main()
