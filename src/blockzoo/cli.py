"""The ``blockzoo`` command: each subcommand is a short function over library calls.

Errors a user can cause (unknown names, bad sizes, missing files) print one line
and exit with code 2; the library itself never prints or exits.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

import blockzoo
from blockzoo.bench.flops import count_flops, count_params
from blockzoo.bench.report import FORMATS, render
from blockzoo.checks import BlockzooError
from blockzoo.registry import FAMILIES, Spec, list_blocks, spec

log = logging.getLogger("blockzoo")

# One intra-op thread by default: on a shared 2-core machine small models ran
# 7-60x slower with 2 threads than with 1 (and gave different results).
DEFAULT_THREADS = 1


class CliError(Exception):
    """A user error found by the CLI itself (printed as one line, exit code 2)."""


def _positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {n}")
    return n


def _nonneg_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {n}")
    return n


# --------------------------------------------------------------------------- list


def catalogue_rows(names: Sequence[str]) -> list[dict[str, Any]]:
    """One row per entry: name, family, paper, year, input kind, params at the example."""
    rows = []
    for name in names:
        s = spec(name)
        link = f"[{s.arxiv}]({s.url})" if s.url else s.arxiv
        rows.append(
            dict(
                name=s.name,
                family=s.family,
                paper=s.paper,
                year=s.year,
                arxiv=link,
                input=s.input,
                params=count_params(s.build()),
            )
        )
    return rows


CATALOGUE_COLUMNS = ["name", "family", "paper", "year", "arxiv", "input", "params"]


def catalogue_markdown() -> str:
    """The README catalogue: ``blockzoo list --format markdown``."""
    return render(catalogue_rows(list_blocks()), "markdown", CATALOGUE_COLUMNS)


def cmd_list(args: argparse.Namespace) -> int:
    names = list_blocks(family=args.family, pattern=args.pattern)
    rows = catalogue_rows(names)
    cols = ["name", "family", "paper", "year", "params"]
    if args.format in ("markdown", "json", "csv"):
        cols = CATALOGUE_COLUMNS
    print(render(rows, args.format, cols))
    return 0


def _add_list(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list registered blocks and models")
    p.add_argument("--family", choices=FAMILIES, help="only this family")
    p.add_argument("--pattern", help="glob over names, e.g. 'res*'")
    p.add_argument("--format", choices=FORMATS, default="table")
    p.set_defaults(func=cmd_list)


# --------------------------------------------------------------------------- info


def _shapes(obj: Any) -> str:
    leaves = torch.utils._pytree.tree_leaves(obj)
    shapes = [tuple(t.shape) for t in leaves if isinstance(t, torch.Tensor)]
    return ", ".join(str(s) for s in shapes)


def info_text(s: Spec, size: tuple[int, ...] | None = None, batch: int = 1) -> str:
    """The ``info`` page of one entry, measured at ``size`` (default: the example's)."""
    model = s.build().eval()
    inputs = s.make_input(batch=batch, size=size)
    with torch.no_grad():
        out = model(*inputs)
    flops = count_flops(model, inputs)
    cfg = ", ".join(f"{k}={v!r}" for k, v in s.example.config.items())
    lines = [
        f"{s.name}  ({s.family}, input: {s.input})",
        f"  paper:   {s.paper} ({s.year})",
        f"  {'arXiv:  ' if s.url else 'source: '} {s.url or s.arxiv}",
        f"  class:   {s.builder.__module__}.{s.builder.__qualname__}",
        f"  about:   {s.summary}",
        f"  example: {s.builder.__name__}({cfg})",
        f"  input:   {_shapes(inputs)}",
        f"  output:  {_shapes(out)}",
        f"  params:  {count_params(model):,}",
        f"  FLOPs:   {flops:,} per forward at batch {batch} (torch flop counter; 2 per MAC)"
        f" = {flops / 1e9:.3g} GFLOPs",
    ]
    if s.exempt:
        lines.append("  exempt:  " + "; ".join(f"{k}: {v}" for k, v in s.exempt.items()))
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    size = tuple(args.size) if args.size else None
    print(info_text(spec(args.name), size=size, batch=args.batch))
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="paper, shapes, params and FLOPs of one entry")
    p.add_argument("name")
    p.add_argument("--size", type=_positive_int, nargs="+",
                   help="measure at this size: H W for images, N or T for tokens/sequences")
    p.add_argument("--batch", type=_positive_int, default=1, help="batch size of the measured input")
    p.set_defaults(func=cmd_info)


# --------------------------------------------------------------------------- bench


def bench_text(result: Any, fmt: str) -> str:
    """The bench report: machine and settings, the table, then the failures."""
    import json

    from blockzoo.bench.runner import BENCH_COLUMNS

    if fmt == "json":
        return json.dumps(dict(machine=result.machine, rows=result.rows, failures=result.failures), indent=2)
    if fmt == "csv":
        head = "\n".join(f"# {k}: {v}" for k, v in result.machine.items())
        body = render(result.rows, "csv", BENCH_COLUMNS)
        fails = "\n".join(f"# FAILED {f['name']}: {f['error']}" for f in result.failures)
        return "\n".join(p for p in (head, body, fails) if p)
    bullet = "- " if fmt == "markdown" else ""
    head = "\n".join(f"{bullet}{k}: {v}" for k, v in result.machine.items())
    parts = [head, render(result.rows, fmt, BENCH_COLUMNS) if result.rows else "(no block ran)"]
    if result.failures:
        title = "Failed:" if fmt == "table" else "**Failed:**"
        parts.append(title + "\n" + "\n".join(f"{bullet or '  '}{f['name']}: {f['error']}"
                                                for f in result.failures))
    return "\n\n".join(parts)


def cmd_bench(args: argparse.Namespace) -> int:
    from blockzoo.bench.runner import BenchSettings, run_bench

    names = list(args.names) or list_blocks(family=args.family)
    for n in names:
        spec(n)  # unknown names fail here, with close matches
    if args.family and args.names:
        names = [n for n in names if spec(n).family == args.family]
    if args.device == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda: CUDA is not available in this PyTorch build/machine")
    settings = BenchSettings(
        batch=args.batch,
        image_size=tuple(args.size) if args.size else None,
        length=args.length,
        device=args.device,
        dtype=args.dtype,
        warmup=args.warmup,
        repeats=args.repeats,
        threads=torch.get_num_threads(),
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


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="params, FLOPs, latency, memory and efficiency of blocks")
    p.add_argument("names", nargs="*", help="entries to measure (default: all, or --family)")
    p.add_argument("--family", choices=FAMILIES, help="only this family")
    p.add_argument("--batch", type=_positive_int, default=8)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--size", type=_positive_int, nargs=2, metavar=("H", "W"),
                   help="image size for image entries")
    g.add_argument("--length", type=_positive_int, help="N for tokens/sequence/graph entries")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--format", choices=FORMATS, default="table")
    p.add_argument("--plot", metavar="PATH", help="also write a PNG: time per block, FLOPs vs time")
    p.add_argument("--threads", type=_positive_int, default=argparse.SUPPRESS,
                   help=f"intra-op CPU threads (same as blockzoo --threads; default {DEFAULT_THREADS})")
    p.add_argument("--repeats", type=_positive_int, default=10, help="timed runs per measurement")
    p.add_argument("--warmup", type=_nonneg_int, default=3, help="untimed runs before timing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench)


# --------------------------------------------------------------------------- plot, shapes


def parse_input_shape(s: Spec, text: str | None) -> tuple[int, tuple[int, ...], dict[str, Any]]:
    """``--input B,C,H,W`` (or B,N,C / B,T,F / B,F / B,T for ids) -> batch, size, config overrides."""
    if not text:
        return 1, tuple(s.example.size), {}
    try:
        dims = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise CliError(f"--input {text!r}: expected comma-separated integers, e.g. 1,3,224,224") from None
    feat = s.example.inputs.features
    ids = feat == "vocab_size"
    want = {"image": 4, "tokens": 3, "sequence": 2 if ids else 3, "graph": 3, "vector": 2}[s.input]
    layout = {"image": "B,C,H,W", "tokens": "B,N,C", "sequence": "B,T" if ids else "B,T,F",
              "graph": "B,N,C", "vector": "B,F"}[s.input]
    if len(dims) != want or min(dims) < 1:
        raise CliError(f"--input {text!r}: {s.name} takes {s.input} input, give {layout}")
    batch = dims[0]
    if s.input == "image":
        size, c = (dims[2], dims[3]), dims[1]
    elif s.input == "vector":
        size, c = (), dims[1]
    else:
        size, c = (dims[1],), (None if ids else dims[2])
    over = {feat: c} if isinstance(feat, str) and c is not None and feat in s.example.config else {}
    return batch, size, over


def cmd_shapes(args: argparse.Namespace) -> int:
    from blockzoo.viz.shapes import TABLE_COLUMNS, layer_table, plot_shapes, table_rows

    s = spec(args.name)
    batch, size, over = parse_input_shape(s, args.input)
    model = s.build(**over).eval()
    inputs = s.make_input(batch=batch, size=size, config=over)
    rows = layer_table(model, inputs)
    print(f"{s.name}: input {_shapes(inputs)}; FLOPs by torch's flop counter (2 per MAC)")
    print(render(table_rows(rows), args.format, TABLE_COLUMNS))
    if args.plot:
        print(plot_shapes(rows, args.plot, title=f"{s.name}, input {_shapes(inputs)}", show=args.show))
    return 0


def _add_shapes(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shapes", help="every layer's output shape, params and FLOPs for one forward")
    p.add_argument("name", help="a registered block or model")
    p.add_argument("--input", help="input shape, e.g. 1,3,224,224 (B,C,H,W) or 2,16,64 (B,N,C)")
    p.add_argument("--format", choices=FORMATS, default="table")
    p.add_argument("--plot", metavar="PATH", help="also draw FLOPs and params per layer as bars (PNG)")
    p.add_argument("--show", action="store_true", help="open a window as well (needs a display)")
    p.set_defaults(func=cmd_shapes)


def cmd_plot(args: argparse.Namespace) -> int:
    from blockzoo import viz

    if args.figure == "activations":
        names = [n.strip() for n in args.names.split(",") if n.strip()]
        path = viz.plot_activations(names, args.out or "activations.png", show=args.show)
    elif args.figure == "posenc":
        path = viz.plot_posenc(args.kind, args.length, args.dim, args.out or f"posenc_{args.kind}.png",
                               show=args.show)
    else:
        s = spec(args.name)
        if s.family != "attention":
            raise CliError(f"plot attention: {s.name} is a {s.family} entry, not an attention block")
        size = tuple(args.size) if args.size else (args.length,) if args.length else None
        model = s.build().eval()
        if args.input == "digits":
            from blockzoo.viz.attention import digit_input

            inputs = digit_input(s, size=size, index=args.index)
        else:
            inputs = s.make_input(batch=1, size=size)
        title = f"{s.name} ({s.paper}, {s.year}), input {_shapes(inputs)}, untrained weights"
        path = viz.plot_attention(model, inputs, args.out or f"attention_{s.name}.png", title=title,
                                  show=args.show)
    print(path)
    return 0


def _add_plot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="figures for learners (PNG): activations, attention, posenc")
    fig = p.add_subparsers(dest="figure", metavar="FIGURE", required=True)
    a = fig.add_parser("activations", help="activations and their autograd derivatives")
    a.add_argument("--names", default="relu,prelu,sigmoid,tanh,gelu,silu")
    t = fig.add_parser("attention", help="attention weights/gates of a registered attention block")
    t.add_argument("name")
    t.add_argument("--input", choices=("example", "digits"), default="example",
                   help="the registered example input (random) or a handwritten digit (image blocks)")
    t.add_argument("--index", type=_nonneg_int, default=0, help="which digit (with --input digits)")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--size", type=_positive_int, nargs=2, metavar=("H", "W"))
    g.add_argument("--length", type=_positive_int)
    e = fig.add_parser("posenc", help="positional encoding heatmap and dot product by offset")
    e.add_argument("--kind", choices=("sinusoidal", "rope"), default="sinusoidal")
    e.add_argument("--length", type=_positive_int, default=64)
    e.add_argument("--dim", type=_positive_int, default=64)
    for q in (a, t, e):
        q.add_argument("--out", metavar="PATH", help="PNG path (default: <figure>.png here)")
        q.add_argument("--show", action="store_true", help="open a window as well (needs a display)")
    p.set_defaults(func=cmd_plot)


# --------------------------------------------------------------------------- arena


def cmd_arena(args: argparse.Namespace) -> int:
    from blockzoo.bench.arena import (
        SUMMARY_COLUMNS,
        ArenaSettings,
        arena_latencies,
        plot_arena,
        run_arena,
        summarize,
    )

    kw: dict[str, Any] = dict(blocks=tuple(b for b in (args.blocks or "").split(",") if b), jobs=args.jobs,
                              small_data=args.small_data)
    if args.data:
        for d in args.data.split(","):
            kind, _, name = d.rpartition(":")
            if kind not in ("", "image", "tokens"):
                raise CliError(f"--data {d!r}: expected image:NAME or tokens:NAME")
            kw["token_data" if kind == "tokens" else "image_data"] = name
    for opt in ("epochs", "seeds"):
        if getattr(args, opt) is not None:
            kw[opt] = getattr(args, opt)
    settings = ArenaSettings.quick_settings(**kw) if args.quick else ArenaSettings(**kw)
    csv_path = args.csv or ("arena_quick.csv" if args.quick else "arena.csv")
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
    print(plot_arena(summary, args.plot or Path(csv_path).with_suffix(".png")))
    return 0


def _add_arena(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("arena", help="train every attention block in the same backbone; compare")
    p.add_argument("--blocks", help="comma-separated attention blocks (default: every candidate); "
                   "'none' is the backbone without attention")
    p.add_argument("--data", help="image:NAME and/or tokens:NAME (default image:digits,tokens:mnist1d)")
    p.add_argument("--epochs", type=_positive_int, help="epochs per run (default 15; --quick 5)")
    p.add_argument("--seeds", type=_positive_int, help="seeds per block (default 3; --quick 2)")
    p.add_argument("--jobs", type=_positive_int, default=1, help="runs in parallel (processes of 1 thread)")
    p.add_argument("--quick", action="store_true", help="5 epochs, 2 seeds: minutes on 2 cores")
    p.add_argument("--small-data", action="store_true", help="each data set's small version (smoke tests)")
    p.add_argument("--csv", help="results file, appended and resumed (default arena[_quick].csv)")
    p.add_argument("--plot", help="scatter PNG (default: the CSV's name with .png)")
    p.add_argument("--format", choices=FORMATS, default="table")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_arena)


# --------------------------------------------------------------------------- export


def _model_for_export(target: str) -> tuple[torch.nn.Module, Spec]:
    """A registry name, or a weights file written by ``blockzoo.save``."""
    from pathlib import Path

    from blockzoo.io import load, read_metadata

    if Path(target).is_file():
        name = read_metadata(target).get("blockzoo.name")
        if name is None:
            raise CliError(f"{target} stores no registry name; export needs one to build the model")
        return load(target), spec(name)
    if Path(target).suffix in (".safetensors", ".pt") or "/" in target:
        raise FileNotFoundError(f"no checkpoint at {target}")
    s = spec(target)
    return s.build(), s


def cmd_export(args: argparse.Namespace) -> int:
    from blockzoo.export import export_onnx, export_program, outputs, run_onnx

    model, s = _model_for_export(args.target)
    model.eval()
    cfg = getattr(model, "_blockzoo_entry", (None, {}))[1]
    size = tuple(args.size) if args.size else None
    # A dynamic batch must be traced at batch >= 2 (torch specializes sizes 0 and 1).
    batch = max(args.batch, 2) if args.dynamic_batch else args.batch
    inputs = s.make_input(batch=batch, size=size, config=cfg)
    with torch.no_grad():
        want = outputs(model(*inputs))
    if args.format == "onnx":
        path = export_onnx(model, inputs, args.out, reparameterize=args.reparameterize,
                           dynamic_batch=args.dynamic_batch, batched=s.example.inputs.batched)
        got = run_onnx(path, inputs)
        diff = max((a - b).abs().max().item() for a, b in zip(want, got, strict=True))
        print(f"wrote {path} (onnxruntime vs eager: max |diff| {diff:.2e} on input {_shapes(inputs)})")
    else:
        if args.reparameterize:
            from blockzoo.rep.fuse import reparameterize

            reparameterize(model)
        program = export_program(model, inputs, dynamic_batch=args.dynamic_batch,
                                 batched=s.example.inputs.batched)
        torch.export.save(program, args.out)
        print(f"wrote {args.out} (torch.export program; load with torch.export.load)")
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a block, model or checkpoint to ONNX or torch.export")
    p.add_argument("target", help="registry name or a weights file written by blockzoo.save")
    p.add_argument("--format", choices=("onnx", "torch-export"), default="onnx")
    p.add_argument("--out", required=True, help="output path (.onnx or .pt2)")
    p.add_argument("--reparameterize", action="store_true",
                   help="fuse re-parameterizable blocks into their deploy form first")
    p.add_argument("--batch", type=_positive_int, default=1, help="batch size of the example input")
    p.add_argument("--size", type=_positive_int, nargs="+", help="H W (images) or length N/T of the input")
    p.add_argument("--dynamic-batch", action="store_true", help="declare the batch dimension dynamic")
    p.set_defaults(func=cmd_export)


# --------------------------------------------------------------------------- train / eval / predict


def _model_arg(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE a Python literal (``width=32``, ``hidden=(64, 64)``) or a string."""
    import ast

    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def _batch_size(text: str) -> int | None:
    if text == "full":
        return None
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch size must be an integer or 'full', got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"batch size must be >= 1, got {n}")
    return n


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def train_report(result: Any, cfg: Any, data_name: str, baselines: dict[str, float]) -> str:
    """The closing summary: the run's numbers and, where published, the baselines."""
    metric = result.metric
    test = result.test.get("acc" if metric == "acc" else "loss", float("nan"))
    fmt = _pct if metric == "acc" else (lambda v: f"{v:.4g}")
    label = {"acc": "accuracy", "mse": "MSE"}.get(metric, "loss")
    best = result.best_val if result.best_val is not None else float("nan")
    if metric == "loss" and result.best_epoch:
        best = result.history[result.best_epoch - 1]["val_loss"]
    rows = [
        dict(item="model", value=cfg.model),
        dict(item="data", value=data_name),
        dict(item="epochs / steps", value=f"{len(result.history)} / {result.steps}"),
        dict(item=f"best val {label}", value=f"{fmt(best)} (epoch {result.best_epoch})"),
        dict(item=f"test {label}", value=fmt(test)),
        dict(item="training time", value=f"{result.seconds:.1f} s"),
        dict(item="run directory", value=str(result.run_dir)),
    ]
    lines = [render(rows, "table", ["item", "value"])]
    if baselines:
        ref = [dict(model=f"{cfg.model} (this run)", **{f"test {label}": fmt(test)})]
        ref += [dict(model=k, **{f"test {label}": fmt(v)}) for k, v in baselines.items()]
        source = ("Greydanus & Kobak, MNIST-1D, arXiv 2011.14439" if data_name == "mnist1d"
                  else "reference values of the data set")
        lines += ["", f"compared with published baselines ({source}):",
                  render(ref, "table", ["model", f"test {label}"])]
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace) -> int:
    from blockzoo.train import NonFiniteLossError, TrainConfig, train
    from blockzoo.train.ddp import teardown

    opts = {k: v for k, v in vars(args).items() if k in TRAIN_OPTIONS}
    if "model_args" in opts:
        opts["model_args"] = dict(opts["model_args"])
    if opts.get("quiet"):
        logging.getLogger("blockzoo").setLevel(logging.WARNING)
    cfg = TrainConfig.from_dict(opts)
    try:
        result = train(cfg)
    except NonFiniteLossError as e:
        raise CliError(str(e)) from None
    finally:
        teardown()  # leave the DDP process group, if torchrun started one
    if result.interrupted:
        print(f"blockzoo: interrupted at step {result.steps}; continue with --resume", file=sys.stderr)
        return 130
    if result.stopped:
        print(f"stopped after {result.steps} steps; saved {result.run_dir}/last.pt")
        return 0
    import os

    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 alone reports
        print(train_report(result, cfg, result.data_name, result.baselines))
    return 0


TRAIN_OPTIONS = (
    "model", "model_args", "data", "data_dir", "val_fraction", "quick", "epochs", "steps", "batch_size",
    "eval_batch_size", "optimizer", "lr", "momentum", "nesterov", "weight_decay", "schedule", "warmup",
    "step_size", "gamma", "clip_grad", "seed", "name", "runs_dir", "resume", "overwrite", "quiet",
    "grad_stats",
    "device", "amp", "compile", "channels_last", "stop_after", "plots",
)


def _add_train(sub: argparse._SubParsersAction) -> None:
    from blockzoo.train import TrainConfig

    d = TrainConfig()
    p = sub.add_parser(
        "train", help="train a model on a data set (default: the MNIST-1D CNN on MNIST-1D)",
        description="Train any registered model on any data set whose input kind fits. With no "
        "arguments: the MNIST-1D CNN on the bundled MNIST-1D data, compared at the end with the "
        "paper's baselines. Under torchrun it runs DistributedDataParallel.",
        argument_default=argparse.SUPPRESS,
    )
    a = p.add_argument
    a("--model", help=f"registered model or module:callable (default {d.model})")
    a("--model-arg", dest="model_args", type=_model_arg, action="append", metavar="KEY=VALUE",
      help="extra model constructor argument (repeatable), e.g. --model-arg width=32")
    a("--data", help=f"data set name or csv:PATH (default {d.data}; see 'blockzoo data')")
    a("--data-dir", help=f"folder of file-backed data sets (default {d.data_dir})")
    a("--val-fraction", type=float, help=f"training share held out for validation (default {d.val_fraction})")
    a("--quick", action="store_true", help="the data set's small version")
    a("--epochs", type=_positive_int, help=f"epochs (default {d.epochs})")
    a("--steps", type=_positive_int, help="total optimisation steps (overrides --epochs)")
    a("--batch-size", type=_batch_size, help=f"N, or 'full' for full-batch descent (default {d.batch_size})")
    a("--eval-batch-size", type=_batch_size,
      help="batch size of validation/test passes, or 'full' (default twice --batch-size)")
    a("--optimizer", help=f"sgd, adam, adamw, rmsprop (default {d.optimizer})")
    a("--lr", type=float, help=f"peak learning rate (default {d.lr:g})")
    a("--momentum", type=float, help=f"sgd/rmsprop momentum (default {d.momentum})")
    a("--nesterov", action="store_true", help="Nesterov momentum (sgd)")
    a("--weight-decay", type=float, help=f"weight decay (default {d.weight_decay})")
    a("--schedule", help=f"constant, step, cosine, linear (default {d.schedule})")
    a("--warmup", type=float, help=f"linear warm-up: fraction of steps (<1) or steps (default {d.warmup})")
    a("--step-size", type=_positive_int, help="step decay period in steps (default a third of the run)")
    a("--gamma", type=float, help=f"step decay factor (default {d.gamma})")
    a("--clip-grad", type=float, help="clip the gradient norm to this value")
    a("--seed", type=int, help=f"seed for everything (default {d.seed})")
    a("--name", help="run name: runs/<name>/ (default <model>_<data>)")
    a("--runs-dir", help=f"parent of run directories (default {d.runs_dir})")
    a("--resume", action="store_true", help="continue from runs/<name>/last.pt")
    a("--overwrite", action="store_true",
      help="replace an existing run of this name (kept whole until the new run has a checkpoint)")
    a("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    a("--grad-stats", action="store_true", help="per-layer gradient norms each epoch -> grad_flow.png")
    a("--device", help=f"auto, cpu, cuda, cuda:N (default {d.device})")
    a("--amp", choices=("bf16", "fp16"), help="mixed precision (autocast)")
    a("--compile", action="store_true", help="torch.compile the model")
    a("--channels-last", action="store_true", help="channels-last memory format (conv nets)")
    a("--stop-after", type=_positive_int, help="stop after N steps, saving last.pt (as if killed)")
    a("--no-plots", dest="plots", action="store_false", help="skip curves.png / grad_flow.png")
    p.set_defaults(func=cmd_train)


def _add_user_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="MODULE:CALLABLE", default=None,
                   help="for a run of your own model: the same MODULE:CALLABLE it was trained with "
                   "(a checkpoint never causes an import by itself)")


def cmd_eval(args: argparse.Namespace) -> int:
    from blockzoo.train import evaluate_checkpoint

    res = evaluate_checkpoint(args.checkpoint, args.split, device=args.device, data_dir=args.data_dir,
                              builder=args.model)
    rows = [dict(item=k, value=(_pct(v) if k == "acc" else f"{v:.6g}") if isinstance(v, float) else v)
            for k, v in res.items() if k != "stored_test"]
    print(render(rows, "table", ["item", "value"]))
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="measure a checkpoint on its data set's test (or val) split")
    p.add_argument("--checkpoint", required=True, help="a last.pt / best.pt file")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None, help="override the run's data folder")
    _add_user_model(p)
    p.set_defaults(func=cmd_eval)


def cmd_predict(args: argparse.Namespace) -> int:
    from blockzoo.train import predict

    rows = predict(args.checkpoint, args.input, builder=args.model)
    text = render(rows, args.format, list(rows[0]) if rows else ["index", "prediction"])
    if args.output:
        from pathlib import Path

        Path(args.output).write_text(text + "\n")
    else:
        print(text)
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="run a checkpoint on inputs from a .npy/.npz/.csv file")
    p.add_argument("--checkpoint", required=True, help="a last.pt / best.pt file")
    p.add_argument("--input", required=True, help="one sample per row (flattened is fine)")
    p.add_argument("--format", choices=FORMATS, default="csv")
    p.add_argument("--output", help="write here instead of stdout")
    _add_user_model(p)
    p.set_defaults(func=cmd_predict)


def cmd_data(args: argparse.Namespace) -> int:
    from blockzoo.data import dataset_entry, list_datasets

    rows = [dict(name=n, input=e.input, task=e.task, source=e.source, about=e.about)
            for n in list_datasets() for e in [dataset_entry(n)]]
    print(render(rows, args.format, ["name", "input", "task", "source", "about"]))
    return 0


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="list the data sets (plus csv:PATH for any CSV)")
    p.add_argument("--format", choices=FORMATS, default="table")
    p.set_defaults(func=cmd_data)


# --------------------------------------------------------------------------- main

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_list, _add_info, _add_export, _add_train, _add_eval, _add_predict, _add_data,
    _add_bench, _add_arena, _add_plot, _add_shapes,
]


class _UsageError(CliError):
    """A command line argparse rejects; ``main`` prints it as one line."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(f"{prog}: error: {message} (see {prog} --help)")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the message and where to find the usage, no usage block."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        raise _UsageError(self.prog, message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="blockzoo",
        description="Verified, shape-agnostic, measured neural-network building blocks.",
    )
    parser.add_argument("--version", action="version", version=f"blockzoo {blockzoo.__version__}")
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=DEFAULT_THREADS,
        help=f"intra-op CPU threads (default {DEFAULT_THREADS}: fastest for small models here)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging; tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


# What a user's input can cause, printed as one line (exit 2); anything else is a bug and
# keeps its traceback. OSError: the disk or the file system (full, read-only, missing).
USER_ERRORS = (CliError, BlockzooError, OSError)


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(text.split()) or type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 user error, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as e:
        print(e, file=sys.stderr)
        return 2
    except SystemExit as e:  # --help, --version: argparse printed and asked to exit
        return e.code if isinstance(e.code, int) else 0
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    torch.set_num_threads(args.threads)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the try
        return code
    except BrokenPipeError:
        # the reader went away (`blockzoo list | head -3`): stop quietly, as head expects
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except USER_ERRORS as e:
        if args.verbose:
            raise
        print(f"blockzoo: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("blockzoo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
