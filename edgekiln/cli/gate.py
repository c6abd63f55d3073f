"""``edgekiln gate``: a fresh benchmark report against a stored one; exit 1 on a regression."""

from __future__ import annotations

import argparse

HELP = "fail (exit 1, one line per regression) when a benchmark report is slower than a stored one"


def register(subparsers: argparse._SubParsersAction) -> None:
    from edgekiln.bench import gate

    parser = subparsers.add_parser(
        "gate",
        help=HELP,
        description=(
            "Compare CURRENT (edgekiln bench --json, or edgekiln suite's results.json) with STORED. "
            "For every stored measurement: the median ratio of interleaved pairs to each baseline "
            "(allowed worsening --ratio), the artifact's p50 latency (--latency) or offline throughput "
            "(--throughput), and top-1 agreement (--top1-drop). Exits 1 and prints one line per "
            "regression; 0 when nothing regressed."
        ),
    )
    gate.add_arguments(parser)
    parser.set_defaults(func=gate.run)
