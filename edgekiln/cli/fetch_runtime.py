"""``edgekiln fetch-runtime``: keep the TVM runtime library for a device platform on the build host."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fetch-runtime",
        help="download the TVM runtime library that artifacts for ARCH bundle",
        description=(
            "Download the apache-tvm wheel of the installed compiler's version for ARCH from PyPI "
            "and keep its runtime libraries in the cache ($EDGEKILN_CACHE, default "
            "~/.cache/edgekiln). Compiling for an ARCH other than the build host's needs this once."
        ),
    )
    parser.add_argument(
        "arch",
        nargs="+",
        choices=("aarch64", "x86_64"),
        metavar="ARCH",
        help="device CPU architecture: aarch64 or x86_64",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgekiln.compile.backends.tvm import runtime_libs

    for arch in args.arch:
        path = runtime_libs.fetch(arch)
        print(f"{arch}: {path}")
    return 0
