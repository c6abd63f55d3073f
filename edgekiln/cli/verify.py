"""``edgekiln verify``: check a package's signature, expiry and member hashes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="check a signed package against trusted keys",
        description=(
            "Check PKG as a device does before it installs it: the signature by one of the trusted keys, "
            "the expiry, no member the manifest does not list, and the size and sha256 of every member. "
            "Exits 0 and prints the handle and version when it verifies; prints the reason and exits 6 "
            "when it does not."
        ),
    )
    parser.add_argument("package", metavar="PKG", help="package from edgekiln package")
    parser.add_argument(
        "--trusted-key", action="append", required=True, metavar="PUB", help="trusted public key (.pub); repeatable"
    )
    parser.add_argument("--json", action="store_true", help="print the verified manifest as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgekiln.artifact.signing import verify_package

    manifest = verify_package(Path(args.package), [Path(p) for p in args.trusted_key])
    if args.json:
        print(json.dumps({"package": args.package, "verified": True, "manifest": manifest.to_dict()}, indent=2))
    else:
        print(
            f"{args.package}: OK, {manifest.handle} v{manifest.version} for {manifest.profile} "
            f"({manifest.backend}), signed by key {manifest.key_id}"
        )
    return 0
