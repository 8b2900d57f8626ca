"""``blockzoo train``, ``eval`` and ``predict``: the training engine from the command line.

The ``train`` options are made from ``TrainConfig``'s fields: the flag from the
field's name, the type from its annotation, the help from the ``Args:`` entry of
its docstring — documented once, there.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import logging
import os
import re
import sys
from typing import Any

from blockzoo.cli.common import CliError
from blockzoo.vocab import FORMATS

__all__ = ["add_eval", "add_predict", "add_train", "config_help"]


def _model_arg(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE a Python literal (``width=32``, ``hidden=(64, 64)``) or a string."""
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
        return int(text)  # the range is TrainConfig's to check
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch size must be an integer or 'full', got {text!r}") from None


def cmd_train(args: argparse.Namespace) -> int:
    from blockzoo.train import NonFiniteLossError, TrainConfig, train
    from blockzoo.train.ddp import teardown
    from blockzoo.train.report import train_report

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    opts = {k: v for k, v in vars(args).items() if k in fields}
    if "model_args" in opts:
        opts["model_args"] = dict(opts["model_args"])
    if opts.get("quiet"):
        logging.getLogger("blockzoo").setLevel(logging.WARNING)
    config_file = getattr(args, "config_file", None)
    cfg = TrainConfig.from_file(config_file, opts) if config_file else TrainConfig.from_dict(opts)
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
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 alone reports
        print(train_report(result, result.model_name or str(cfg.model)))
    return 0


def config_help(cls: type) -> dict[str, str]:
    """Each field's help from the ``Args:`` section of ``cls``'s docstring (``a, b: text`` covers both)."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    section = doc.split("Args:", 1)[1] if "Args:" in doc else ""
    out: dict[str, str] = {}
    for m in re.finditer(r"^    ([a-z_, ]+): (.*(?:\n {8}.*)*)", section, re.M):
        text = " ".join(m.group(2).split())
        for name in m.group(1).split(","):
            out[name.strip()] = text
    return out


# What the annotation alone cannot say: the flag's spelling, type or action.
_SPECIAL: dict[str, dict[str, Any]] = {
    "model_args": dict(flags=["--model-arg"], type=_model_arg, action="append", metavar="KEY=VALUE"),
    "batch_size": dict(type=_batch_size, metavar="N|full"),
    "eval_batch_size": dict(type=_batch_size, metavar="N|full"),
    "amp": dict(choices=("bf16", "fp16")),
    "plots": dict(flags=["--no-plots"], action="store_false"),
    "weights": dict(metavar="PATH"),
    "freeze": dict(metavar="GLOB[,GLOB]"),
    "head_lr": dict(type=float, metavar="LR"),
    "attention": dict(metavar="BLOCK"),
    "attention_after": dict(metavar="GLOB"),
}
_TYPES = {"int": int, "float": float, "str": str}


def add_train(sub: argparse._SubParsersAction) -> None:
    from blockzoo.train.config import TrainConfig  # torch-free: the parser needs no engine

    p = sub.add_parser(
        "train", help="train a model on a data set (default: the MNIST-1D CNN on MNIST-1D)",
        description="Train any registered model (or your own: --model pkg.module:build, importable "
        "from the working directory) on any data set whose input kind fits. With no arguments: the "
        "MNIST-1D CNN on the bundled MNIST-1D data, compared at the end with the paper's baselines. "
        "Under torchrun it runs DistributedDataParallel.",
        argument_default=argparse.SUPPRESS,
    )
    helps = config_help(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        kw = dict(_SPECIAL.get(f.name, {}))
        flags = kw.pop("flags", ["--" + f.name.replace("_", "-")])
        base = str(f.type).replace(" | None", "")
        if base == "bool" and "action" not in kw:
            kw["action"] = "store_true"
        elif "type" not in kw and "choices" not in kw and base in _TYPES:
            kw["type"] = _TYPES[base]
        default = f.default if f.default is not dataclasses.MISSING else None
        note = f" (default {default})" if default not in (None, False, True) else ""
        text = helps[f.name].replace("``", "").rstrip(".")
        p.add_argument(*flags, dest=f.name, help=text + note, **kw)
    p.add_argument("--config", dest="config_file", metavar="PATH",
                   help="options from a file: a run's config.json replays that run (JSON or TOML); "
                   "options given here override it")
    p.set_defaults(func=cmd_train)


def _add_user_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="MODULE:CALLABLE", default=None,
                   help="for a run of your own model: the same MODULE:CALLABLE it was trained with "
                   "(a checkpoint never causes an import by itself)")


def cmd_eval(args: argparse.Namespace) -> int:
    from blockzoo.bench.report import render
    from blockzoo.train import evaluate_checkpoint
    from blockzoo.train.report import LABELS, format_metric, per_class_table

    res = evaluate_checkpoint(args.checkpoint, args.split, device=args.device, data_dir=args.data_dir,
                              builder=args.model)
    lists = ("stored_test", "per_class", "confusion", "classes")
    rows = [dict(item=LABELS.get(k, k), value=format_metric(k, v)) for k, v in res.items() if k not in lists]
    print(render(rows, "table", ["item", "value"]))
    table = per_class_table(res)
    if table:
        print(f"\n{args.split} split, per class:\n{table}")
    return 0


def add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="measure a checkpoint on its data set's test (or val) split")
    p.add_argument("--checkpoint", required=True, help="a last.pt / best.pt file")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None, help="override the run's data folder")
    _add_user_model(p)
    p.set_defaults(func=cmd_eval)


def cmd_predict(args: argparse.Namespace) -> int:
    from blockzoo.bench.report import render
    from blockzoo.train import predict

    rows = predict(args.checkpoint, args.input, builder=args.model)
    text = render(rows, args.format, list(rows[0]) if rows else ["index", "prediction"])
    if args.output:
        from pathlib import Path

        Path(args.output).write_text(text + "\n")
    else:
        print(text)
    return 0


def add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="run a checkpoint on inputs from a .npy/.npz/.csv file")
    p.add_argument("--checkpoint", required=True, help="a last.pt / best.pt file")
    p.add_argument("--input", required=True, help="one sample per row (flattened is fine)")
    p.add_argument("--format", choices=FORMATS, default="csv")
    p.add_argument("--output", help="write here instead of stdout")
    _add_user_model(p)
    p.set_defaults(func=cmd_predict)
