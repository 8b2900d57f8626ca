"""``blockzoo export``: a block, model or saved weights file to ONNX or a torch.export program."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from blockzoo.bench.report import shapes_text
from blockzoo.cli.common import positive_int
from blockzoo.io import NAME_KEY, load, read_metadata
from blockzoo.registry import ENTRY_ATTR, Spec, spec

__all__ = ["add_export"]


def _model_for_export(target: str) -> tuple[torch.nn.Module, Spec]:
    """A registry name, or a weights file written by ``blockzoo.save``."""
    if Path(target).is_file():
        model = load(target)  # refuses a file without a registry name, saying what to do instead
        return model, spec(read_metadata(target)[NAME_KEY])
    if Path(target).suffix in (".safetensors", ".pt") or "/" in target:
        raise FileNotFoundError(f"no checkpoint at {target}")
    s = spec(target)
    return s.build_example(), s


def cmd_export(args: argparse.Namespace) -> int:
    from blockzoo.export import export_onnx, export_program, outputs, run_onnx

    model, s = _model_for_export(args.target)
    model.eval()
    cfg = getattr(model, ENTRY_ATTR, (None, {}))[1]
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
        print(f"wrote {path} (onnxruntime vs eager: max |diff| {diff:.2e} on input {shapes_text(inputs)})")
    else:
        if args.reparameterize:
            from blockzoo.rep.fuse import reparameterize

            reparameterize(model)
        program = export_program(model, inputs, dynamic_batch=args.dynamic_batch,
                                 batched=s.example.inputs.batched)
        torch.export.save(program, args.out)
        print(f"wrote {args.out} (torch.export program; load with torch.export.load)")
    return 0


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a block, model or checkpoint to ONNX or torch.export")
    p.add_argument("target", help="registry name or a weights file written by blockzoo.save")
    p.add_argument("--format", choices=("onnx", "torch-export"), default="onnx")
    p.add_argument("--out", required=True, help="output path (.onnx or .pt2)")
    p.add_argument("--reparameterize", action="store_true",
                   help="fuse re-parameterizable blocks into their deploy form first")
    p.add_argument("--batch", type=positive_int, default=1, help="batch size of the example input")
    p.add_argument("--size", type=positive_int, nargs="+", help="H W (images) or length N/T of the input")
    p.add_argument("--dynamic-batch", action="store_true", help="declare the batch dimension dynamic")
    p.set_defaults(func=cmd_export)


