"""Compatibility wrapper: ``edgekiln suite`` replaced this script.

    python benchmarks/run_suite.py --suite x86_64 [--suite-file benchmarks/suite.toml] [OPTIONS]

is ``edgekiln suite benchmarks/suite.toml --suite x86_64 [OPTIONS]`` (every other option is
the same); see ``edgekiln suite --help``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    from edgekiln.cli.main import main as edgekiln

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--suite", default="x86_64")
    parser.add_argument("--suite-file", default=str(HERE / "suite.toml"))
    known, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    print("run_suite.py: use `edgekiln suite SUITE.toml --suite NAME` (this script forwards to it)", file=sys.stderr)
    return edgekiln(["suite", known.suite_file, "--suite", known.suite, *rest])


if __name__ == "__main__":
    sys.exit(main())
