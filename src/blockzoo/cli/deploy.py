"""``blockzoo export``: a block, model or saved weights file to ONNX or a torch.export program."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blockzoo.cli.common import CliError, positive_int

if TYPE_CHECKING:
    import torch

__all__ = ["add_export"]


def _model_and_inputs(args: argparse.Namespace) -> tuple[torch.nn.Module, tuple[Any, ...], tuple[int, ...]]:
    """The model to export, an example input and which of its arguments are batched.

    ``target`` is a registry name (its example config) or a weights file written by
    ``blockzoo.save`` / ``blockzoo train``: a registered model is rebuilt from the file;
    a user's own model from ``--model``, the builder the user names.
    """
    import torch

    from blockzoo.io import NAME_KEY, SAMPLE_SHAPE_KEY, load, read_metadata
    from blockzoo.registry import ENTRY_ATTR, spec

    # A dynamic batch must be traced at batch >= 2 (torch specializes sizes 0 and 1).
    batch = max(args.batch, 2) if args.dynamic_batch else args.batch
    size = tuple(args.size) if args.size else None
    target = args.target
    if Path(target).is_file():
        meta = read_metadata(target)
        model = load(target, builder=args.model)  # a file without a name says what to pass
        if NAME_KEY not in meta:
            if SAMPLE_SHAPE_KEY not in meta or size:
                raise CliError(f"{target}: the input shape of your own model is not recorded (or --size "
                               "was given); export it from Python with blockzoo.export.export_onnx")
            shape = [int(v) for v in json.loads(meta[SAMPLE_SHAPE_KEY])]
            return model, (torch.randn(batch, *shape),), (0,)
        s = spec(meta[NAME_KEY])
    else:
        if Path(target).suffix in (".safetensors", ".pt") or "/" in target:
            raise FileNotFoundError(f"no checkpoint at {target}")
        s = spec(target)
        model = s.build_example()
    cfg = getattr(model, ENTRY_ATTR, (None, {}))[1]
    return model, s.make_input(batch=batch, size=size, config=cfg), s.example.inputs.batched


def cmd_export(args: argparse.Namespace) -> int:
    import torch

    from blockzoo.bench.report import shapes_text
    from blockzoo.export import export_onnx, export_program, outputs, run_onnx

    model, inputs, batched = _model_and_inputs(args)
    model.eval()
    with torch.no_grad():
        want = outputs(model(*inputs))
    if args.format == "onnx":
        path = export_onnx(model, inputs, args.out, reparameterize=args.reparameterize,
                           dynamic_batch=args.dynamic_batch, batched=batched)
        got = run_onnx(path, inputs)
        diff = max((a - b).abs().max().item() for a, b in zip(want, got, strict=True))
        print(f"wrote {path} (onnxruntime vs eager: max |diff| {diff:.2e} on input {shapes_text(inputs)})")
    else:
        if args.reparameterize:
            from blockzoo.rep.fuse import reparameterize

            reparameterize(model)
        program = export_program(model, inputs, dynamic_batch=args.dynamic_batch,
                                 batched=batched)
        torch.export.save(program, args.out)
        print(f"wrote {args.out} (torch.export program; load with torch.export.load)")
    return 0


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a block, model or checkpoint to ONNX or torch.export")
    p.add_argument("target", help="a registered name (see: blockzoo list) or a weights file written by "
                   "blockzoo.save or blockzoo train")
    p.add_argument("--format", choices=("onnx", "torch-export"), default="onnx")
    p.add_argument("--out", required=True, help="output path (.onnx or .pt2)")
    p.add_argument("--reparameterize", action="store_true",
                   help="fuse re-parameterizable blocks into their deploy form first")
    p.add_argument("--batch", type=positive_int, default=1, help="batch size of the example input")
    p.add_argument("--size", type=positive_int, nargs="+", help="H W (images) or length N/T of the input")
    p.add_argument("--dynamic-batch", action="store_true", help="declare the batch dimension dynamic")
    p.add_argument("--model", metavar="MODULE:CALLABLE", default=None,
                   help="for weights of your own model: the builder it was trained with (a file never "
                   "causes an import by itself)")
    p.set_defaults(func=cmd_export)


