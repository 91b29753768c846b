"""The ``scpm-nodule`` command line.

Each sub-command is one ``_add_<name>(subparsers)`` function here that declares its arguments
and binds ``run`` to a thin function calling the library; the work itself lives in the
library module named after the idea (``phantom``, ``evaluation``, ``inference``...).

Bad input raises :class:`~SCPMNoduleLib.errors.UserInputError`; ``main`` prints its one
sentence to stderr and exits with status 2, so scripts can tell bad input (2) from a crash (1).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from . import __version__
from .errors import UserInputError

log = logging.getLogger(__name__)

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scpm-nodule",
        description="SCPM-Net lung-nodule detection: phantoms, detection, evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in _COMMANDS:
        add_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.run(args) or 0)
    except UserInputError as error:
        print(f"scpm-nodule {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"scpm-nodule {args.command}: cancelled", file=sys.stderr)
        return 130


_COMMANDS: list = []

if __name__ == "__main__":
    sys.exit(main())
