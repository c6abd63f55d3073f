"""The over-the-air part of ``make demo-fleet``: the demo's artifact signed and deployed to
its agent through a staged plan, then a deliberately broken version of it, which the agent's
health check refuses and rolls back while the fleet halts the plan.

Called by :mod:`devtools.fleet_demo` once its agent runs with ``trusted_keys`` set.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from edgekiln.cli.fleet import FleetAdmin
from edgekiln.cli.fleet_deploy import parse_stage, render_plan

HANDLE = "demo-classifier"


def make_keys(work: Path) -> tuple[Path, Path]:
    """The release key pair: the private key signs, the agent trusts the public one."""
    from edgekiln.artifact.signing import generate_keypair

    return generate_keypair(work / "keys", "release")


def broken_copy(artifact: Path, out: Path) -> Path:
    """``artifact`` with its model libraries (the portable one and any CPU variant, which the
    runtime loads instead on a CPU that has its features), or else its largest file (the
    weights), replaced by bytes that no runtime loads.  The manifest's hashes are made to
    match, so the package verifies: only the device's health check can tell."""
    from edgekiln.artifact import file_entry, pack, unpack
    from edgekiln.artifact.manifest import VARIANT_ROLE

    work = out.with_suffix(".d")
    manifest = unpack(artifact, work)
    broken = [f for f in manifest.files if f.role in ("model-library", VARIANT_ROLE)]
    for entry in broken or [max(manifest.files, key=lambda f: f.size)]:
        (work / entry.path).write_bytes(b"deliberately broken: not a model\n" * 64)
    files = tuple(file_entry(work, f.path, f.role, f.cpu_features) for f in manifest.files)
    return pack(dataclasses.replace(manifest, files=files), work, out)


def _plan(admin: FleetAdmin, name: str, fleet: str, device: str, version: int) -> None:
    admin.call(
        "POST",
        "/v1/deployment-plans",
        {
            "edge_deployment_plan_name": name,
            "device_fleet_name": fleet,
            "model_handle": HANDLE,
            "model_version": version,
            "stages": [parse_stage(f"canary:devices={device}"), parse_stage("everyone:percent=100")],
        },
    )


def run(
    admin: FleetAdmin,
    *,
    work: Path,
    artifact: Path,
    key: Path,
    fleet: str,
    device: str,
    wait_for: Callable[[str, Callable[[], Any], float], Any],
    predict: Callable[[str], str],
) -> None:
    """Sign and upload version 1 (the artifact) and 2 (broken); deploy 1, then 2; print
    ``describe`` after each and what the device answers."""
    from edgekiln.artifact.signing import build_package

    packages = work / "packages"
    good = build_package(artifact, key, HANDLE, 1, packages / f"{HANDLE}-1.pkg")
    broken = build_package(broken_copy(artifact, work / "broken.tar.gz"), key, HANDLE, 2, packages / f"{HANDLE}-2.pkg")
    for manifest in (good, broken):
        path = packages / f"{HANDLE}-{manifest.version}.pkg"
        admin.call("PUT", "/v1/packages", upload=path)
    print(
        f"\n== signed {HANDLE} version 1 (the artifact) and version 2 (its model replaced by garbage) with key "
        f"{good.key_id}; both uploaded to the fleet",
        flush=True,
    )

    describe = lambda plan: admin.call("GET", f"/v1/deployment-plans/{plan}")  # noqa: E731
    _plan(admin, "demo-v1", fleet, device, 1)
    admin.call("POST", "/v1/deployment-plans/demo-v1/stages/canary/start")
    wait_for("version 1 on the canary", lambda: describe("demo-v1")["stages"][0]["finished"], 180)
    admin.call("POST", "/v1/deployment-plans/demo-v1/stages/everyone/start")
    print(
        "\n== deployment plan demo-v1: canary, then everyone (fleet deploy describe)\n"
        + render_plan(describe("demo-v1"))
    )
    print(f"== the device answers from {HANDLE} v1: {predict(HANDLE)}", flush=True)

    _plan(admin, "demo-v2", fleet, device, 2)
    admin.call("POST", "/v1/deployment-plans/demo-v2/stages/canary/start")
    wait_for("version 2 to fail on the canary", lambda: describe("demo-v2")["status"] == "HALTED", 180)
    print(
        "\n== deployment plan demo-v2: the broken version (fleet deploy describe)\n" + render_plan(describe("demo-v2"))
    )
    print(f"== after the rollback the device still answers from {HANDLE} v1: {predict(HANDLE)}", flush=True)
