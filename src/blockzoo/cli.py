"""The ``blockzoo`` command: each subcommand is a short function over library calls.

Errors a user can cause (unknown names, bad sizes, missing files) print one line
and exit with code 2; the library itself never prints or exits.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

import blockzoo
from blockzoo.bench.flops import count_flops, count_params
from blockzoo.bench.report import FORMATS, render
from blockzoo.registry import FAMILIES, Spec, list_blocks, spec

log = logging.getLogger("blockzoo")

# One intra-op thread by default: on a shared 2-core machine small models ran
# 7-60x slower with 2 threads than with 1 (and gave different results).
DEFAULT_THREADS = 1


class CliError(Exception):
    """A user error found by the CLI itself (printed as one line, exit code 2)."""


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


def info_text(s: Spec) -> str:
    """The ``info`` page of one entry."""
    model = s.build().eval()
    inputs = s.make_input(batch=1)
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
        f"  FLOPs:   {flops:,} per forward at batch 1 (torch flop counter; 2 per MAC)",
    ]
    if s.exempt:
        lines.append("  exempt:  " + "; ".join(f"{k}: {v}" for k, v in s.exempt.items()))
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    print(info_text(spec(args.name)))
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="paper, shapes, params and FLOPs of one entry")
    p.add_argument("name")
    p.set_defaults(func=cmd_info)


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
    p.add_argument("--batch", type=int, default=1, help="batch size of the example input")
    p.add_argument("--size", type=int, nargs="+", help="H W (images) or length N/T of the input")
    p.add_argument("--dynamic-batch", action="store_true", help="declare the batch dimension dynamic")
    p.set_defaults(func=cmd_export)


# --------------------------------------------------------------------------- main

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_list, _add_info, _add_export]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blockzoo",
        description="Verified, shape-agnostic, measured neural-network building blocks.",
    )
    parser.add_argument("--version", action="version", version=f"blockzoo {blockzoo.__version__}")
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help=f"intra-op CPU threads (default {DEFAULT_THREADS}: fastest for small models here)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 user error, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if args.threads < 1:
        print(f"blockzoo: error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    try:
        return int(args.func(args) or 0)
    except (CliError, ValueError, KeyError, FileNotFoundError, NotADirectoryError) as e:
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        print(f"blockzoo: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("blockzoo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
