"""The ``nndist`` command line: a thin layer that parses options, calls the library and prints.

Each sub-command lives in ``nndist.cli.<name>`` and provides ``add_parser(subparsers)`` and
``run(args) -> int``. Building the parser imports no torch (``nndist --help`` answers at once);
a command imports the library when it runs. Errors caused by bad input are printed as one line
naming the bad value and the fix, with exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from .._version import __version__
from ..allocator import tune_allocator
from ..errors import NndistError

COMMANDS = ("reproduce", "weights", "compare", "evaluate", "gradients", "report")

EPILOG = """examples:
  nndist reproduce --profile quick --data shapes --out runs/demo
  nndist reproduce --profile quick --data ../shared/data/cifar10-jpeg --out runs/quick
  nndist gradients --model cifar_resnet20 --weights resnet20-12fca82f.th --data cifar10 --samples 10000
  nndist evaluate --model cifar_resnet20 --weights resnet20-12fca82f.th --data ../shared/data/cifar10-jpeg
  nndist weights runs/quick/checkpoints/orthogonal/after.safetensors
  nndist compare runs/quick --out runs/quick-compare
  nndist report runs/quick
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nndist",
        description="Measure how the parameters, features and gradients of a deep network are distributed.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"nndist {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"nndist.cli.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the exit status."""
    tune_allocator()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except NndistError as exc:
        if args.debug:
            raise
        print(f"nndist {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nndist {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
