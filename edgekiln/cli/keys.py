"""``edgekiln keys generate``: an Ed25519 key pair for signing packages."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "keys",
        help="make signing keys for packages",
        description="Manage the Ed25519 keys that sign packages (edgekiln package) and that devices trust.",
    )
    sub = parser.add_subparsers(dest="keys_command", metavar="ACTION")
    sub.required = True
    gen = sub.add_parser(
        "generate",
        help="write NAME.key (private, mode 0600) and NAME.pub",
        description=(
            "Write a new Ed25519 key pair: DIR/NAME.key (PKCS#8 PEM, readable by you alone; keep it off "
            "devices) and DIR/NAME.pub (give it to devices as a trusted key). Prints the key id, the first "
            "16 hex digits of sha256 over the raw public key, which packages record. Never overwrites."
        ),
    )
    gen.add_argument("--name", default="edgekiln", help="file name stem (default: edgekiln)")
    gen.add_argument("--out-dir", "-d", default=".", help="directory for the two files (default: .)")
    gen.add_argument("--json", action="store_true", help="print the paths and key id as JSON")
    gen.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from edgekiln.artifact.signing import generate_keypair, load_public_key

    private, public = generate_keypair(Path(args.out_dir), args.name)
    key_id, _ = load_public_key(public)
    if args.json:
        print(json.dumps({"private_key": str(private), "public_key": str(public), "key_id": key_id}))
    else:
        print(f"private key: {private} (keep it secret)\npublic key:  {public}\nkey id:      {key_id}")
    return 0
