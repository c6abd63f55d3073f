"""``edgekiln agent --config agent.toml``: run the on-device agent in the foreground."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "agent",
        help="run the on-device agent (local gRPC API, capture, reporting)",
        description=(
            "Run the edge agent: serve the local gRPC API on a Unix socket, store captured data "
            "on disk and deliver it, with heartbeats, to the fleet service when it is reachable. "
            "Stops on SIGTERM or SIGINT; SIGUSR1 delivers now."
        ),
    )
    parser.add_argument("--config", required=True, metavar="AGENT.TOML", help="agent configuration file")
    parser.add_argument("--check", action="store_true", help="validate the configuration and exit")
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error"), help="log level (default: info)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging
    import sys

    from edgekiln.agents.config import load_config

    config = load_config(args.config)
    if args.check:
        print(
            f"{args.config}: valid (device {config.device.fleet}/{config.device.name}, "
            f"capture to {config.capture.destination})"
        )
        return 0
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from edgekiln.agents.daemon import run_agent

    return run_agent(config)
