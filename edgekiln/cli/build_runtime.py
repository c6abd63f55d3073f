"""``edgekiln build-runtime``: build the native runtime (libedgekiln, edgekiln-run) for a profile."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "build-runtime",
        help="build libedgekiln and edgekiln-run (no Python on the device) for a profile's CPU",
        description=(
            "Build the native runtime for the CPU of PROFILE with its cross toolchain and CMake: "
            "the TVM runtime and tvm-ffi from the installed wheels' sources, and libedgekiln, a C "
            "library with DLR's C API (include/edgekiln/dlr.h), plus the edgekiln-run command. "
            "The build is cached per architecture and version ($EDGEKILN_CACHE, default "
            "~/.cache/edgekiln); `edgekiln compile --native-runtime` bundles it in artifacts."
        ),
    )
    parser.add_argument("--target", "-t", required=True, metavar="PROFILE", help="device profile id or alias")
    parser.add_argument("--jobs", "-j", type=int, default=2, help="parallel compiles (default: 2)")
    parser.add_argument("--force", action="store_true", help="rebuild even when the cache holds this version")
    parser.add_argument("--json", action="store_true", help="print the build's files, sizes and sha256 as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgekiln.compile.native import BuildOptions, build_info, ensure_native_runtime
    from edgekiln.device_profiles import get_profile
    from edgekiln.execute.progress import ConsoleProgress, NullProgress

    profile = get_profile(args.target)
    progress = NullProgress() if args.json else ConsoleProgress()
    built = ensure_native_runtime(profile, BuildOptions(jobs=args.jobs, force=args.force), progress)
    info = build_info(built)
    if args.json:
        print(json.dumps({"profile": profile.id, "root": str(built.root), **info}, indent=2))
        return 0
    print(f"native runtime {info['version']} for {profile.id} ({info['arch']}, needs glibc >= {info['glibc']}):")
    for rel, entry in info["files"].items():
        print(f"  {built.root / rel}  {entry['size'] / 1e6:.2f} MB")
    return 0
