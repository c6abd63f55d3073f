"""The ``edgekiln`` command: one module per subcommand, one error-to-exit-code mapping."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from edgekiln import __version__
from edgekiln.errors import EdgekilnError, InternalError

# Subcommand modules, each with ``register(subparsers)`` that adds its parser and sets
# ``func(args) -> int``. Imported on demand so that ``edgekiln run`` on a device never
# imports the compiler.
COMMANDS = ("compile", "inspect", "run", "profiles", "zoo", "fetch-runtime", "emulate", "agent", "agent-ctl", "fleet", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgekiln",
        description="Compile image classifiers for device profiles and run the artifacts.",
    )
    parser.add_argument("--version", action="version", version=f"edgekiln {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"edgekiln.cli.{name.replace('-', '_')}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InternalError:
        raise
    except EdgekilnError as exc:
        print(f"edgekiln {args.command}: error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"edgekiln {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
