"""``blockzoo bench`` and ``arena``: measured cost and trained accuracy of blocks."""

from __future__ import annotations

import argparse
import inspect
import logging
from pathlib import Path
from typing import Any

from blockzoo.cli.common import DEFAULT_THREADS, CliError, config_pairs, nonneg_int, positive_int
from blockzoo.vocab import FAMILIES, FORMATS

__all__ = ["add_arena", "add_bench"]

log = logging.getLogger("blockzoo")


def _check_config(name: str, config: dict[str, Any]) -> None:
    """Every --config key must be an argument of the entry's constructor (unless it takes **kw)."""
    from blockzoo.registry import spec

    params = inspect.signature(spec(name).builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(config) - set(params))
    if unknown:
        accepted = ", ".join(k for k in params if k not in ("device", "dtype"))
        raise CliError(f"--config: {name} takes no {', '.join(unknown)} (it takes {accepted})")


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from blockzoo.bench.report import bench_text
    from blockzoo.bench.runner import BenchSettings, run_bench
    from blockzoo.registry import list_blocks, spec

    names = list(args.names) or list_blocks(family=args.family)
    for n in names:
        spec(n)  # unknown names fail here, with close matches
    if args.family and args.names:
        names = [n for n in names if spec(n).family == args.family]
    if args.device == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda: CUDA is not available in this PyTorch build/machine")
    config = {k: v for pairs in args.config or () for k, v in pairs.items()}
    for n in names:
        _check_config(n, config)
    settings = BenchSettings(
        batch=args.batch,
        config=config,
        image_size=tuple(args.size) if args.size else None,
        length=args.length,
        device=args.device,
        dtype=args.dtype,
        warmup=args.warmup,
        repeats=args.repeats,
        threads=torch.get_num_threads(),
        compile=args.compile or args.aot,
        compile_aot=args.aot,
    )
    result = run_bench(names, settings, progress=not args.no_progress)
    print(bench_text(result, args.format))
    if args.plot:
        from blockzoo.bench.plot import plot_bench

        if result.rows:
            title = ", ".join(f"{k}={v}" for k, v in result.machine.items())
            print(plot_bench(result.rows, args.plot, title=title))
        else:
            log.warning("no block ran: no plot written")
    return 1 if result.failures and not result.rows else 0


def add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="params, FLOPs, latency, memory and efficiency of blocks")
    p.add_argument("names", nargs="*",
                   help="registered entries to measure (default: all, or --family; see: blockzoo list)")
    p.add_argument("--family", choices=FAMILIES, help="only this family")
    p.add_argument("--batch", type=positive_int, default=8)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--size", type=positive_int, nargs=2, metavar=("H", "W"),
                   help="image size for image entries")
    g.add_argument("--length", type=positive_int, help="N for tokens/sequence/graph entries")
    p.add_argument("--config", type=config_pairs, action="append", metavar="KEY=VALUE[,KEY=VALUE...]",
                   help="constructor arguments over the example config (e.g. dim=512,num_heads=8); "
                   "the input follows them (its width from the config)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--format", choices=FORMATS, default="table")
    p.add_argument("--plot", metavar="PATH", help="also write a PNG: time per block, FLOPs vs time")
    p.add_argument("--threads", type=positive_int, default=argparse.SUPPRESS,
                   help=f"intra-op CPU threads (same as blockzoo --threads; default {DEFAULT_THREADS})")
    p.add_argument("--repeats", type=positive_int, default=10, help="timed runs per measurement")
    p.add_argument("--warmup", type=nonneg_int, default=3, help="untimed runs before timing")
    p.add_argument("--compile", action="store_true",
                   help="also time blockzoo.compile(model) (inductor; compiling takes seconds per entry): "
                   "compiled_fwd_ms, compiled_train_ms and the speed-ups join the table")
    p.add_argument("--aot", action="store_true",
                   help="with --compile: the compiled forward is blockzoo.compile(model, aot=True) "
                   "(torch.export + AOTInductor, no dynamo guards; inference only: no train columns)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench)




def _arena_settings(args: argparse.Namespace) -> Any:
    """The ``ArenaSettings`` of the arena options; a combination that means nothing is a ``CliError``."""
    from blockzoo.bench.arena import ArenaSettings

    backbones = args.kind == "backbones"
    kw: dict[str, Any] = dict(blocks=tuple(b for b in (args.blocks or "").split(",") if b), jobs=args.jobs,
                              small_data=args.small_data)
    if args.data:
        for d in args.data.split(","):
            kind, _, name = d.rpartition(":")
            if kind not in ("", "image", "tokens"):
                raise CliError(f"--data {d!r}: expected image:NAME or tokens:NAME")
            if backbones and kind == "tokens":
                raise CliError(f"--data {d!r}: --kind backbones trains image classifiers; give image:NAME")
            kw["token_data" if kind == "tokens" else "image_data"] = name
    for opt in ("epochs", "seeds"):
        if getattr(args, opt) is not None:
            kw[opt] = getattr(args, opt)
    if args.max_mflops is not None:
        if not backbones:
            raise CliError("--max-mflops is the backbone arena's cost cap: use it with --kind backbones")
        kw["max_mflops"] = args.max_mflops
    if backbones:
        if args.quick:
            raise CliError("--quick is the attention arena's preview; with --kind backbones name the "
                           "models (--blocks) and the budget (--epochs, --seeds)")
        return ArenaSettings.backbone_settings(**kw)
    return ArenaSettings.quick_settings(**kw) if args.quick else ArenaSettings(**kw)


def cmd_arena(args: argparse.Namespace) -> int:
    import torch

    from blockzoo.bench.arena import (
        SUMMARY_COLUMNS,
        arena_latencies,
        backbone_skips,
        plot_arena,
        run_arena,
        summarize,
    )
    from blockzoo.bench.report import render

    settings = _arena_settings(args)
    backbones = settings.arena == "backbones"
    default_csv = "arena_backbones.csv" if backbones else "arena_quick.csv" if args.quick else "arena.csv"
    csv_path = args.csv or default_csv
    rows = run_arena(settings, csv_path, progress=not args.no_progress)
    summary = summarize(rows, arena_latencies(rows, settings))
    print(f"# results: {csv_path} ({len(rows)} runs); settings: "
          + ", ".join(f"{k}={v}" for k, v in vars(settings).items() if k not in ("blocks",))
          + f"; torch {torch.__version__}, 1 thread per run; acc: test accuracy (%) mean ± std over "
          "seeds; train_s: mean training time (with --jobs J, J runs shared the machine); latency_ms: "
          f"median eval forward of one batch of {settings.batch_size}, measured after training, alone")
    print(render(summary, args.format, SUMMARY_COLUMNS))
    failed = [r for r in summary if r.get("error")]
    for r in failed:
        print(f"FAILED {r['kind']} {r['block']}: {r['error']}")
    if backbones:
        for model, why in backbone_skips(settings, list(settings.blocks) or None).items():
            print(f"NOT TRAINED {model}: {why}")
    print(plot_arena(summary, args.plot or Path(csv_path).with_suffix(".png")))
    return 0


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return v


def add_arena(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("arena", help="train every attention block (or image classifier) alike; compare")
    p.add_argument("--kind", choices=("attention", "backbones"), default="attention",
                   help="attention: every attention block inside the arena's small backbones (default); "
                   "backbones: every registered image classifier (family model) whole, at its example config "
                   "and size (the images resized to it)")
    p.add_argument("--blocks", help="comma-separated attention blocks, or models with --kind backbones "
                   "(default: every candidate; --quick: 4 image and 2 token blocks, one per mechanism); "
                   "'none' is the backbone without attention")
    p.add_argument("--data", help="image:NAME and/or tokens:NAME (default image:digits,tokens:mnist1d; "
                   "image:cluttered_digits is the harder image task)")
    p.add_argument("--epochs", type=positive_int, help="epochs per run (default 6; --quick and backbones 3)")
    p.add_argument("--seeds", type=positive_int, help="seeds per block (default 3; --quick and backbones 2)")
    p.add_argument("--jobs", type=positive_int, default=1, help="runs in parallel (processes of 1 thread)")
    p.add_argument("--quick", action="store_true",
                   help="a representative set of 6 blocks, 3 epochs, 2 seeds: a few minutes on one core")
    p.add_argument("--max-mflops", type=_positive_float, metavar="M",
                   help="--kind backbones: models whose forward pass of one image costs more than M MFLOPs "
                   "are not trained, only listed (default 100)")
    p.add_argument("--small-data", action="store_true", help="each data set's small version (smoke tests)")
    p.add_argument("--csv", help="results file, appended and resumed (default arena[_quick].csv; "
                   "arena_backbones.csv with --kind backbones)")
    p.add_argument("--plot", help="scatter PNG (default: the CSV's name with .png)")
    p.add_argument("--format", choices=FORMATS, default="table")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_arena)
