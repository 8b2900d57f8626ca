"""The ``blockzoo`` command: each subcommand is a short function over library calls.

One module per command group: ``catalogue`` (list, info, shapes, plot, data),
``measure`` (bench, arena), ``reproduce`` (a paper's table), ``deploy`` (export),
``training`` (train, eval, predict);
``common`` holds what they share. Errors a user can cause print one line and exit
with code 2; the library itself never prints or exits.

The parser is built from torch-free modules only, so ``blockzoo --help``,
``--version`` and ``blockzoo COMMAND --help`` answer without importing torch, numpy
or matplotlib: a command module imports the library (``registry``, ``bench``,
``train``, ...) inside its ``cmd_*`` handler, never at its top, and takes choices from
torch-free modules (``vocab``, ``train.config``). Registry names (blocks, models,
data sets) are plain strings checked when the command runs (an unknown name lists
the close matches). ``tests/test_cli.py`` fails if a CLI module imports torch.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from blockzoo._version import __version__
from blockzoo.cli.catalogue import add_data, add_info, add_list, add_plot, add_shapes
from blockzoo.cli.common import DEFAULT_THREADS, CliError, positive_int
from blockzoo.cli.deploy import add_export
from blockzoo.cli.measure import add_arena, add_bench
from blockzoo.cli.reproduce import add_reproduce
from blockzoo.cli.training import add_eval, add_predict, add_train
from blockzoo.errors import BlockzooError

__all__ = ["COMMANDS", "DEFAULT_THREADS", "USER_ERRORS", "CliError", "build_parser", "main"]

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_list, add_info, add_export, add_train, add_eval, add_predict, add_data,
    add_bench, add_arena, add_reproduce, add_plot, add_shapes,
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
    parser.add_argument("--version", action="version", version=f"blockzoo {__version__}")
    _add_globals(parser, default=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    for p in sub.choices.values():  # global options after the subcommand too
        _add_globals(p, default=False)
    return parser


def _add_globals(p: argparse.ArgumentParser, *, default: bool) -> None:
    """--threads and -v: before the subcommand (defaults) or after it (only when given)."""
    have = {s for a in p._actions for s in a.option_strings}
    if "--threads" not in have:
        p.add_argument("--threads", type=positive_int,
                       default=DEFAULT_THREADS if default else argparse.SUPPRESS,
                       help=f"intra-op CPU threads (default {DEFAULT_THREADS}: fastest for small models)")
    if "--verbose" not in have:
        p.add_argument("-v", "--verbose", action="store_true",
                       default=False if default else argparse.SUPPRESS,
                       help="debug logging; tracebacks on errors")


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
    import torch  # after parsing: --help and usage errors never load it

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
