"""``edgekiln package``: sign an artifact into a package for deployment."""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from edgekiln.errors import UserError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "package",
        help="sign an artifact into a deployable package",
        description=(
            "Sign ARTIFACT with the private KEY as version V of the model handle NAME. The package holds "
            "the artifact and one canonical manifest (handle, version, profile, backend, optional expiry "
            "and latency budget, size and sha256 of every member) with an Ed25519 signature over it. "
            "Devices refuse a package whose version is not above the one they have for the handle."
        ),
    )
    parser.add_argument("artifact", metavar="ARTIFACT", help="artifact .tar.gz (from edgekiln compile)")
    parser.add_argument("--key", required=True, help="private key (.key from edgekiln keys generate)")
    parser.add_argument("--model-handle", required=True, metavar="NAME", help="model handle devices know it by")
    parser.add_argument("--model-version", required=True, type=int, metavar="V", help="version, a whole number >= 1")
    parser.add_argument("-o", "--output", required=True, metavar="PKG", help="package file to write")
    parser.add_argument(
        "--expires-in", metavar="DURATION", help="refuse the package after this long: 3600, 90m, 12h, 30d"
    )
    parser.add_argument(
        "--latency-budget-ms",
        type=float,
        metavar="MS",
        help="p50 latency the device's health check allows (a deployment plan's budget takes precedence)",
    )
    parser.add_argument(
        "--record-outputs",
        action="store_true",
        help=(
            "run the artifact here (it must run on this host) on its seeded validation inputs and sign the "
            "outputs into the package: a device's health check then requires its own within --health-tolerance"
        ),
    )
    parser.add_argument(
        "--health-tolerance", type=float, default=1e-3, metavar="ABS", help="for --record-outputs (default: 1e-3)"
    )
    parser.add_argument("--json", action="store_true", help="print the signed manifest as JSON")
    parser.set_defaults(func=run)


def parse_duration(text: str) -> float:
    """Seconds in '3600', '90m', '12h', '30d'."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text or "")
    if not match or float(match.group(1)) <= 0:
        raise UserError(f"--expires-in {text!r} is not a duration", hint="e.g. 3600, 90m, 12h or 30d")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def record_outputs(artifact: Path, tolerance: float, samples: int = 3, seed: int = 0) -> tuple[dict, bytes]:
    """(description, bytes) of the artifact's outputs on ``samples`` seeded inputs, run here;
    the inputs are :func:`edgekiln.execute.inputs.make_inputs`'s, which a device makes alike."""
    from edgekiln.execute.inputs import encode_outputs, make_inputs
    from edgekiln.runtime.model import Model

    if not tolerance > 0:
        raise UserError("--health-tolerance must be a positive number")
    model = Model(str(artifact))
    outputs = [model.run(list(sample)) for sample in make_inputs(model.manifest.inputs, samples, seed=seed)]
    specs, data = encode_outputs(outputs)
    return {"seed": seed, "tolerance_abs": tolerance, "outputs": specs}, data


def run(args: argparse.Namespace) -> int:
    from edgekiln.artifact.signing import build_package

    health = record_outputs(Path(args.artifact), args.health_tolerance) if args.record_outputs else None
    expires_at = None if args.expires_in is None else round(time.time() + parse_duration(args.expires_in), 3)
    manifest = build_package(
        Path(args.artifact),
        Path(args.key),
        args.model_handle,
        args.model_version,
        Path(args.output),
        expires_at=expires_at,
        latency_budget_ms=args.latency_budget_ms,
        health=health,
    )
    if args.json:
        print(json.dumps({"package": args.output, "manifest": manifest.to_dict()}, indent=2))
    else:
        print(
            f"{args.output}: {manifest.handle} v{manifest.version} for {manifest.profile} ({manifest.backend}), "
            f"signed by key {manifest.key_id}"
        )
    return 0
