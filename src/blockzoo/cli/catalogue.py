"""``blockzoo list``, ``info``, ``shapes``, ``plot`` and ``data``: the catalogue and figures."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from blockzoo.cli.common import CliError, nonneg_int, positive_int
from blockzoo.vocab import FAMILIES, FORMATS

if TYPE_CHECKING:
    from blockzoo.registry import Spec

__all__ = ["add_data", "add_info", "add_list", "add_plot", "add_shapes", "parse_input_shape"]


def cmd_list(args: argparse.Namespace) -> int:
    from blockzoo.bench.report import CATALOGUE_COLUMNS, catalogue_rows, render
    from blockzoo.registry import list_blocks

    names = list_blocks(family=args.family, pattern=args.pattern)
    rows = catalogue_rows(names)
    cols = ["name", "family", "paper", "year", "params"]
    if args.format in ("markdown", "json", "csv"):
        cols = CATALOGUE_COLUMNS
    print(render(rows, args.format, cols))
    return 0


def add_list(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list registered blocks and models")
    p.add_argument("--family", choices=FAMILIES, help="only this family")
    p.add_argument("--pattern", help="glob over names, e.g. 'res*'")
    p.add_argument("--format", choices=FORMATS, default="table")
    p.set_defaults(func=cmd_list)




def cmd_info(args: argparse.Namespace) -> int:
    from blockzoo.bench.report import entry_info
    from blockzoo.registry import spec

    size = tuple(args.size) if args.size else None
    print(entry_info(spec(args.name), size=size, batch=args.batch))
    return 0


def add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="paper, shapes, params and FLOPs of one entry")
    p.add_argument("name", help="a registered block or model (see: blockzoo list)")
    p.add_argument("--size", type=positive_int, nargs="+",
                   help="measure at this size: H W for images, N or T for tokens/sequences")
    p.add_argument("--batch", type=positive_int, default=1, help="batch size of the measured input")
    p.set_defaults(func=cmd_info)




def parse_input_shape(s: Spec, text: str | None) -> tuple[int, tuple[int, ...], dict[str, Any]]:
    """``--input B,C,H,W`` (or the entry's own layout) -> batch, size, config overrides."""
    if not text:
        return 1, tuple(s.example.size), {}
    try:
        dims = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise CliError(f"--input {text!r}: expected comma-separated integers, e.g. 1,3,224,224") from None
    maker = s.example.inputs
    batch, size, c = maker.parse(dims)
    feat = maker.features
    over = {feat: c} if isinstance(feat, str) and c is not None and feat in s.example.config else {}
    return batch, size, over


def cmd_shapes(args: argparse.Namespace) -> int:
    from blockzoo.bench.report import render, shapes_text
    from blockzoo.registry import spec
    from blockzoo.viz.shapes import TABLE_COLUMNS, layer_table, plot_shapes, table_rows

    s = spec(args.name)
    batch, size, over = parse_input_shape(s, args.input)
    model = s.build_example(**over).eval()
    inputs = s.make_input(batch=batch, size=size, config=over)
    rows = layer_table(model, inputs)
    print(f"{s.name}: input {shapes_text(inputs)}; FLOPs by torch's flop counter (2 per MAC)")
    print(render(table_rows(rows), args.format, TABLE_COLUMNS))
    if args.plot:
        print(plot_shapes(rows, args.plot, title=f"{s.name}, input {shapes_text(inputs)}", show=args.show))
    return 0


def add_shapes(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shapes", help="every layer's output shape, params and FLOPs for one forward")
    p.add_argument("name", help="a registered block or model (see: blockzoo list)")
    p.add_argument("--input", help="input shape, e.g. 1,3,224,224 (B,C,H,W) or 2,16,64 (B,N,C)")
    p.add_argument("--format", choices=FORMATS, default="table")
    p.add_argument("--plot", metavar="PATH", help="also draw FLOPs and params per layer as bars (PNG)")
    p.add_argument("--show", action="store_true", help="open a window as well (needs a display)")
    p.set_defaults(func=cmd_shapes)


def cmd_plot(args: argparse.Namespace) -> int:
    from blockzoo import viz
    from blockzoo.bench.report import shapes_text
    from blockzoo.registry import spec

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
        model = s.build_example().eval()
        if args.input == "digits":
            from blockzoo.viz.attention import digit_input

            inputs = digit_input(s, size=size, index=args.index)
        else:
            inputs = s.make_input(batch=1, size=size)
        title = f"{s.name} ({s.paper}, {s.year}), input {shapes_text(inputs)}, untrained weights"
        path = viz.plot_attention(model, inputs, args.out or f"attention_{s.name}.png", title=title,
                                  show=args.show)
    print(path)
    return 0


def add_plot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="figures for learners (PNG): activations, attention, posenc")
    fig = p.add_subparsers(dest="figure", metavar="FIGURE", required=True)
    a = fig.add_parser("activations", help="activations and their autograd derivatives")
    a.add_argument("--names", default="relu,prelu,sigmoid,tanh,gelu,silu")
    t = fig.add_parser("attention", help="attention weights/gates of a registered attention block")
    t.add_argument("name", help="a registered attention block (see: blockzoo list --family attention)")
    t.add_argument("--input", choices=("example", "digits"), default="example",
                   help="the registered example input (random) or a handwritten digit (image blocks)")
    t.add_argument("--index", type=nonneg_int, default=0, help="which digit (with --input digits)")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--size", type=positive_int, nargs=2, metavar=("H", "W"))
    g.add_argument("--length", type=positive_int)
    e = fig.add_parser("posenc", help="positional encoding heatmap and dot product by offset")
    e.add_argument("--kind", choices=("sinusoidal", "rope"), default="sinusoidal")
    e.add_argument("--length", type=positive_int, default=64)
    e.add_argument("--dim", type=positive_int, default=64)
    for q in (a, t, e):
        q.add_argument("--out", metavar="PATH", help="PNG path (default: <figure>.png here)")
        q.add_argument("--show", action="store_true", help="open a window as well (needs a display)")
    p.set_defaults(func=cmd_plot)




def cmd_data(args: argparse.Namespace) -> int:
    from blockzoo.bench.report import render
    from blockzoo.data import dataset_entry, list_datasets

    rows = [dict(name=n, input=e.input, task=e.task, source=e.source, about=e.about)
            for n in list_datasets() for e in [dataset_entry(n)]]
    print(render(rows, args.format, ["name", "input", "task", "source", "about"]))
    return 0


def add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="list the data sets (plus csv:PATH for any CSV)")
    p.add_argument("--format", choices=FORMATS, default="table")
    p.set_defaults(func=cmd_data)
