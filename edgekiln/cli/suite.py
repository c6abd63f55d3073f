"""``edgekiln suite SUITE.toml``: compile, validate and benchmark a matrix, gate it, upload it."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

HELP = "compile, validate and benchmark every combination of a suite file (CI jobs per hardware target)"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "suite",
        help=HELP,
        description=(
            "For each combination of the suite (models x profiles x backends x precisions x batches): "
            "compile the model for the profile, validate it where this host or an emulated board can run "
            "the target, and benchmark it against the suite's baselines, interleaved. A model is a zoo "
            "name or a model file (relative to the suite file). What this host cannot run is skipped with "
            "the reason and does not fail the job; a combination that fails to compile, validate or run "
            "exits 1, as does a regression against --gate. Writes results.json, report.md and plots to --out."
        ),
    )
    parser.add_argument("suite_file", metavar="SUITE.toml", type=Path, help="suite file (e.g. benchmarks/suite.toml)")
    parser.add_argument("--suite", metavar="NAME", help="suite in the file (needed when it defines several)")
    parser.add_argument("--out", type=Path, default=Path("build/bench"), help="output directory (default: build/bench)")
    parser.add_argument("--gate", type=Path, metavar="STORED.json", help="stored results to gate against")
    parser.add_argument("--runs", type=int, help="measured pairs per combination (default: the suite's)")
    parser.add_argument(
        "--reuse-artifacts",
        type=Path,
        metavar="DIR",
        help="keep artifacts in DIR and reuse those already there (local iteration; CI compiles fresh)",
    )
    parser.add_argument(
        "--compile-all",
        action="store_true",
        help="also compile what cannot run here (for a board's runner to benchmark; keep them with --reuse-artifacts)",
    )
    parser.add_argument("--upload", metavar="FLEET_URL", help="upload the results to this fleet service")
    parser.add_argument("--upload-target", metavar="NAME", help="hardware target to file them under (default: --suite)")
    parser.add_argument("--upload-label", default="", metavar="TEXT", help="what was measured (a commit, a CI job)")
    parser.add_argument(
        "--admin-token-file",
        type=Path,
        metavar="FILE",
        help="file holding the fleet admin token (default: the token in $EDGEKILN_FLEET_ADMIN_TOKEN)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, command: str | None = None) -> int:
    from edgekiln.bench.suite import load_suite, run_suite
    from edgekiln.cli import fleet as fleet_cli
    from edgekiln.errors import UserError
    from edgekiln.execute.progress import ConsoleProgress

    suite = load_suite(args.suite_file, args.suite)
    if args.runs is not None and args.runs < 1:
        raise UserError("--runs must be at least 1")
    # Read before the suite runs: a CI job without the token fails at once.
    token = fleet_cli.admin_token(args.admin_token_file) if args.upload else ""
    if command is None:
        command = _command(args)
    done = run_suite(
        suite,
        args.out,
        runs=args.runs,
        reuse_dir=args.reuse_artifacts,
        stored=args.gate,
        command=command,
        compile_all=args.compile_all,
        progress=ConsoleProgress(),
    )
    if args.upload:
        target = args.upload_target or suite.name
        answer = upload_results(
            done.report, done.gate, endpoint=args.upload, token=token, target=target, label=args.upload_label
        )
        print(f"uploaded {answer['results']} results to {args.upload} as {target}", file=sys.stderr)
    return done.status


def _command(args: argparse.Namespace) -> str:
    """The command line the report records: this process's, when it ran ``edgekiln suite``."""
    argv = sys.argv[1:]
    if argv[:1] == ["suite"]:
        return "edgekiln " + " ".join(shlex.quote(a) for a in argv)
    named = f" --suite {shlex.quote(args.suite)}" if args.suite else ""
    return f"edgekiln suite {shlex.quote(str(args.suite_file))}{named} --out {shlex.quote(str(args.out))}"


def upload_results(
    report: Any, gate_result: Any, *, endpoint: str, token: str, target: str, label: str = ""
) -> dict[str, Any]:
    """Send the suite's results and gate verdict to the fleet's benchmarks page."""
    from edgekiln.cli import fleet as fleet_cli

    gate = gate_result.to_dict() if gate_result is not None else None
    return fleet_cli.FleetAdmin(endpoint, token, timeout=60).upload_benchmarks(
        report.to_dict(), target=target, label=label, gate=gate
    )
