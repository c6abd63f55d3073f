"""The ``edgekiln`` command: one module per subcommand, one error-to-exit-code mapping."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback
from typing import Sequence

from edgekiln import __version__
from edgekiln.cli.parser import ArgumentParser
from edgekiln.errors import EdgekilnError, InternalError

# Subcommand modules, each with ``register(subparsers)`` that adds its parser and sets
# ``func(args) -> int``. Imported on demand so that ``edgekiln run`` on a device never
# imports the compiler.
COMMANDS = (
    "compile",
    "tune",
    "inspect",
    "run",
    "profiles",
    "zoo",
    "fetch-runtime",
    "build-runtime",
    "emulate",
    "agent",
    "agent-ctl",
    "fleet",
    "bench",
    "suite",
    "gate",
    "keys",
    "package",
    "verify",
)


# EDGEKILN_DEBUG=1 does what --debug does, for runs whose command line is not at hand (CI, services).
DEBUG_ENV = "EDGEKILN_DEBUG"
_DEBUG_HELP = (
    f"on an error, show the full traceback, including the original exceptions that the one-line "
    f"message replaces (or set {DEBUG_ENV}=1)"
)


def build_parser() -> argparse.ArgumentParser:
    # Every subcommand's parser is an ArgumentParser too (argparse builds them with this class).
    parser = ArgumentParser(
        prog="edgekiln",
        description="Compile image classifiers for device profiles and run the artifacts.",
        epilog=f"Errors print one line and exit non-zero; --debug (or {DEBUG_ENV}=1) shows their traceback.",
    )
    parser.add_argument("--version", action="version", version=f"edgekiln {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"edgekiln.cli.{name.replace('-', '_')}")
        module.register(subparsers)
    _add_debug(parser, default=False, seen=set())
    return parser


def _add_debug(parser: argparse.ArgumentParser, *, default: object, seen: set[int]) -> None:
    """--debug on every (sub)command, so that it may be given anywhere on the command line; a
    subcommand's copy leaves the value alone unless it is given there."""
    if id(parser) in seen:  # an alias names the same parser twice
        return
    seen.add(id(parser))
    parser.add_argument("--debug", action="store_true", default=default, help=_DEBUG_HELP)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _add_debug(sub, default=argparse.SUPPRESS, seen=seen)


def debug_requested(args: argparse.Namespace | None = None) -> bool:
    """--debug was given or EDGEKILN_DEBUG is set to something other than 0 or empty."""
    return bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")


def format_full_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` and of every exception behind it.

    Errors quote a foreign exception in one line and ``raise ... from None``; Python keeps the
    original as ``__context__`` but hides it (``__suppress_context__``).  Here nothing is
    hidden: the whole chain is printed, the original first.
    """
    pending, seen = [exc], set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        current.__suppress_context__ = False
        pending += [current.__cause__, current.__context__]
    return "".join(traceback.format_exception(exc))


def error_object(exc: EdgekilnError, command: str) -> dict[str, object]:
    """What ``--json`` prints on stdout when a command fails."""
    return {
        "status": "error",
        "command": command,
        "error": {
            "type": type(exc).__name__,
            "message": " ".join(exc.message.split()),
            "hint": exc.hint,
            "exit_code": exc.exit_code,
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = debug_requested(args)
    try:
        return int(args.func(args) or 0)
    except EdgekilnError as exc:
        if debug:
            print(format_full_traceback(exc), end="", file=sys.stderr)
        elif isinstance(exc, InternalError):
            # A bug in edgekiln: the traceback is what a bug report needs.
            traceback.print_exception(exc, file=sys.stderr)
        print(f"edgekiln {args.command}: error: {exc.one_line()}", file=sys.stderr)
        if getattr(args, "json", None) is True:
            # A CI job reading --json gets the error as JSON on stdout too, not an empty stream.
            print(json.dumps(error_object(exc, args.command), indent=2))
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"edgekiln {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            # Not an edgekiln error, so a bug: Python prints it on the way out, but hides what
            # any `from None` suppressed.
            print(format_full_traceback(exc), end="", file=sys.stderr)
            return InternalError.exit_code
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
