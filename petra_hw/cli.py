"""The ``petra-hw`` command line: parsing, dispatch, and the one rule for errors.

Each subcommand lives in ``petra_hw.commands.<name>`` with ``add_parser(subparsers)`` and
``run(args) -> int``.  A ``UserError`` anywhere becomes one line on stderr and exit code 2; no
traceback reaches a user for bad input.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from petra_hw import __version__
from petra_hw.errors import UserError

COMMANDS = (
    "tune",
    "peers",
    "compile",
    "profile",
    "report",
    "reproduce",
    "export",
    "gate",
    "devices",
    "suites",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's default prints usage; keep one line
        raise UserError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="petra-hw", description="Hardware-aware compression compiler (PETRA).")
    parser.add_argument("--version", action="version", version=f"petra-hw {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f"petra_hw.commands.{name}").add_parser(sub)
    return parser


def _one_line(message: str) -> str:
    """A message that is one line whatever it quotes (a key with a newline, a multi-line cause)."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        parser = build_parser()
        if not argv:
            argv = ["tune"]
        args = parser.parse_args(argv)
        logging.basicConfig(
            level=logging.WARNING - 10 * min(args.verbose, 2),
            format="%(levelname)s %(name)s: %(message)s",
        )
        if args.command is None:
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except UserError as exc:
        sys.stderr.write(f"petra-hw: error: {_one_line(str(exc))}\n")
        return 2
    except Exception as exc:  # a user's suite code or a full disk: one line; a bug: traceback
        from petra_hw.failures import one_line

        line = one_line(exc)
        if line is None:
            raise
        logging.getLogger("petra_hw").debug("details", exc_info=True)
        sys.stderr.write(f"petra-hw: error: {_one_line(line)}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("petra-hw: interrupted\n")
        return 130
    except BrokenPipeError:
        os._exit(1)


if __name__ == "__main__":
    raise SystemExit(main())
