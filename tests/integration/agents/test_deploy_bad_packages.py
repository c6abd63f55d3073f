"""Every bad package, given to a running agent (from a fleet and through the local inbox),
is refused: status FAILED with the reason, the active slot untouched, the old model serving."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgekiln.artifact.signing import ARTIFACT_MEMBER, MANIFEST_MEMBER, SIGNATURE_MEMBER
from tests.integration.agents.deploy_kit import ROOT, AgentProcess, fleet_and_agent, install_first
from tests.signed_packages import flip, members, retar


def _bad_packages(package, tmp_path) -> dict[str, tuple[object, str]]:
    """name -> (package path, words the refusal must contain); all claim tiny v3."""
    good = package("a1", 3)
    parts = members(good)
    body, sig, art = (parts[n][1] for n in (MANIFEST_MEMBER, SIGNATURE_MEMBER, ARTIFACT_MEMBER))

    def copy(name: str):
        out = tmp_path / f"{name}.pkg"
        out.write_bytes(good.read_bytes())
        return out

    flipped_artifact, flipped_manifest, flipped_signature = copy("fa"), copy("fm"), copy("fs")
    flip(flipped_artifact, parts[ARTIFACT_MEMBER][0] + len(art) // 2, 3)
    flip(flipped_manifest, parts[MANIFEST_MEMBER][0] + body.index(b'"version":3') + len('"version":'), 1)
    flip(flipped_signature, parts[SIGNATURE_MEMBER][0] + sig.index(b'"signature":"') + 20, 0)
    return {
        "bit flip in the artifact": (flipped_artifact, "sha256"),
        "bit flip in the manifest": (flipped_manifest, "signature does not verify"),
        "bit flip in the signature": (flipped_signature, "signature"),
        "unknown key": (package("a1", 3, key="other_key"), "not trusted here"),
        "missing signature": (
            retar(tmp_path / "ns.pkg", [(MANIFEST_MEMBER, body), (ARTIFACT_MEMBER, art)]),
            "not signed",
        ),
        "older version": (package("a1", 1), "anti-rollback"),
        "member not listed": (
            retar(
                tmp_path / "ex.pkg",
                [(MANIFEST_MEMBER, body), (SIGNATURE_MEMBER, sig), (ARTIFACT_MEMBER, art), ("x.sh", b"id")],
            ),
            "not listed",
        ),
        "changed size": (
            retar(
                tmp_path / "cs.pkg", [(MANIFEST_MEMBER, body), (SIGNATURE_MEMBER, sig), (ARTIFACT_MEMBER, art + b"\0")]
            ),
            "the manifest says",
        ),
        "expired": (package("a1", 3, expires_at=1_000_000.0), "expired"),
    }


def test_bad_packages_are_refused_and_the_old_model_serves(deploy_parts, package, short_dir, tmp_path):
    with fleet_and_agent(deploy_parts, short_dir, tmp_path) as (fleet, agent):
        agent.start().wait_ready()
        install_first(fleet, agent, package("a2", 2), "good-2", 2)
        slots = agent.root / "s" / "deploy" / "slots" / "tiny"
        before = sorted(p.name for p in slots.iterdir())
        for index, (name, (pkg, words)) in enumerate(_bad_packages(package, tmp_path).items()):
            deployment_id = f"bad-{index}"
            fleet.publish(pkg, deployment_id, "tiny", 1 if name == "older version" else 3)
            record = agent.wait_final(deployment_id)
            assert record["status"] == "FAILED", (name, record)
            assert words in record["reason"], (name, record["reason"])
            assert sorted(p.name for p in slots.iterdir()) == before, name
            assert agent.serving_scale() == 2.0, name
        # Every refusal reached the fleet in a heartbeat, with its reason.
        fleet.deployments = []
        agent.proc.send_signal(10)  # SIGUSR1: report now
        for index in range(9):
            result = fleet.wait_result(f"bad-{index}")
            assert result["status"] == "FAILED" and result["state"] == "UNDEPLOYED" and result["reason"]
    assert agent.proc.returncode == 0


@pytest.mark.parametrize("trusted", [True, False])
def test_local_install_through_agent_ctl(deploy_parts, package, short_dir, trusted):
    keys = [deploy_parts["pub"]] if trusted else []
    agent = AgentProcess(short_dir / "desk", keys)
    ctl = [sys.executable, "-m", "edgekiln.cli.main", "agent-ctl", "--config", str(agent.config)]
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    try:
        agent.start().wait_ready()
        proc = subprocess.run(
            [*ctl, "deploy", str(package("a1", 1)), "--wait", "60"], capture_output=True, text=True, env=env
        )
        if not trusted:  # no trusted keys configured: every package is refused
            assert proc.returncode == 1 and "no trusted keys" in proc.stdout, proc.stdout + proc.stderr
            return
        assert proc.returncode == 0 and "SUCCEEDED" in proc.stdout, proc.stdout + proc.stderr
        assert agent.serving_scale() == 1.0
        flipped = package("a2", 2)
        flip(flipped, members(flipped)[ARTIFACT_MEMBER][0] + 100)
        proc = subprocess.run([*ctl, "deploy", str(flipped)], capture_output=True, text=True, env=env)
        assert proc.returncode == 1 and "FAILED" in proc.stdout and "sha256" in proc.stdout, proc.stdout
        assert agent.serving_scale() == 1.0
        listed = subprocess.run([*ctl, "--json", "deployments"], capture_output=True, text=True, env=env, check=True)
        statuses = [r["status"] for r in json.loads(listed.stdout)["deployments"]]
        assert statuses == ["SUCCEEDED", "FAILED"]
    finally:
        agent.stop()
