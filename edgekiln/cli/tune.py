"""``edgekiln tune``: tune a model's TVM kernels for a profile with MetaSchedule, and
``edgekiln tune-merge``: merge tuning databases."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edgekiln.cli.compile import add_framework_option

HELP = "tune a model's TVM kernels for a profile (MetaSchedule) into a tuning database"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tune",
        help=HELP,
        description=(
            "Tune MODEL's TVM kernels for the CPU of PROFILE with MetaSchedule: the tasks carrying "
            "the most FLOPs first (or, with --order time, the most time), --trials-per-task "
            "measured candidates each, at most --trials in all. The records go into the profile's "
            "tuning database in edgekiln's cache ($EDGEKILN_CACHE/tuning, default "
            "~/.cache/edgekiln), or into --tuning-db. `edgekiln compile --backend tvm` applies "
            "them. An interrupted run resumes: the database keeps every measured trial, and a "
            "rerun skips what is done, including tasks whose search ran out of candidates before "
            "their budget. A trial takes about a second on a 2-core x86 host (ResNet-18 at 32 "
            "trials per task: 8 min), so budgets matter."
        ),
    )
    parser.add_argument("model", metavar="MODEL", help="model file, folder or .tar.gz, or zoo:NAME")
    parser.add_argument("--target", "-t", required=True, metavar="PROFILE", help="device profile id or alias")
    parser.add_argument(
        "--trials",
        type=int,
        default=0,
        help="the most trials for the model, done ones included (default 0: every task gets --trials-per-task)",
    )
    parser.add_argument("--trials-per-task", type=int, default=32, help="measured candidates per task (default: 32)")
    parser.add_argument(
        "--order",
        choices=("flops", "time"),
        default="flops",
        help=(
            "which tasks --trials goes to first: flops, the most FLOPs (default); time, tasks "
            "without records, then the most time by their best records (calls x best time), for "
            "a second pass that goes where the model's time is. A time plan is kept beside the "
            "database, so a rerun of the same pass resumes the same tasks"
        ),
    )
    parser.add_argument(
        "--tuning-db",
        metavar="PATH",
        help="the tuning database directory to write (default: the profile's in edgekiln's cache)",
    )
    parser.add_argument(
        "--threads", type=int, help="threads the candidates run with (default: this host's usable CPUs)"
    )
    parser.add_argument(
        "--input-shape",
        action="append",
        metavar="[NAME:]DIMS",
        help="fixed input shape, e.g. 1,3,224,224; repeat per input (as for compile)",
    )
    add_framework_option(parser)
    parser.add_argument(
        "--device",
        metavar="AGENT",
        help=(
            "time candidates on the device through its edgekiln agent (a unix socket path or "
            "HOST:PORT; the agent needs [tuning] enabled = true); default: this host"
        ),
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    parser.set_defaults(func=run)
    _register_merge(subparsers)


def _register_merge(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tune-merge",
        help="merge tuning databases into one, keeping the fastest records per workload",
        description=(
            "Merge the tuning databases SOURCE... into DEST (created when missing; its own records "
            "count too). Workloads are compared structurally; each keeps its --keep fastest records."
        ),
    )
    parser.add_argument("dest", metavar="DEST", help="the database directory to write")
    parser.add_argument("sources", metavar="SOURCE", nargs="+", help="database directories to read")
    parser.add_argument("--keep", type=int, default=1, help="records kept per workload (default: 1)")
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    parser.set_defaults(func=run_merge)


def workers_for(args: argparse.Namespace) -> tuple[Any, Any]:
    """MetaSchedule's (builder, runner): (None, None) for this host's, else libraries for
    the profile's CPU timed by the agent that --device names."""
    if not args.device:
        return None, None
    from edgekiln.cli.tune_device import device_runner_for
    from edgekiln.compile.backends.tvm.device_tuning import device_builder
    from edgekiln.compile.backends.tvm.tuning import require_tuner
    from edgekiln.device_profiles import get_profile

    profile = get_profile(args.target)
    runner = device_runner_for(args.device, profile)  # first: is the agent there and willing?
    require_tuner()
    return device_builder(profile), runner


def run(args: argparse.Namespace) -> int:
    from edgekiln.compile.backends.tvm.tuner import TuneOptions, tune_model
    from edgekiln.compile.frontends import parse_input_shapes
    from edgekiln.execute.progress import ConsoleProgress

    builder, runner = workers_for(args)
    options = TuneOptions(
        trials=args.trials,
        trials_per_task=args.trials_per_task,
        order=args.order,
        tuning_db=Path(args.tuning_db) if args.tuning_db else None,
        threads=args.threads,
    )
    result = tune_model(
        args.model,
        args.target,
        options,
        input_shape=parse_input_shapes(None, args.input_shape),
        framework=args.framework,
        builder=builder,
        runner=runner,
        progress=ConsoleProgress(),
    )
    summary = result.to_dict()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    cov = result.coverage
    print(
        f"tuned {len(result.planned)} task(s) of {cov.task_count} for {result.profile}: "
        f"{result.trials_run} trial(s) in {result.seconds / 60:.1f} min "
        f"({result.trials_before} done before); records in {result.database}"
    )
    print(f"  records cover {100 * cov.share:.1f}% of the model's FLOPs ({len(cov.tasks)} task(s))")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from edgekiln.compile.backends.tvm.tuning import merge_databases

    counts = merge_databases(Path(args.dest), [Path(s) for s in args.sources], keep=args.keep)
    if args.json:
        print(json.dumps({"database": args.dest, **counts}, indent=2))
    else:
        print(
            f"{args.dest}: {counts['workloads']} workload(s), {counts['records_written']} record(s) "
            f"kept of {counts['records_read']} read"
        )
    return 0
