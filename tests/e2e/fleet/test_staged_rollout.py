"""A staged rollout on real parts: SeaweedFS, the fleet service and five agent processes.

A canary stage of one device, then 100 %: a good package reaches every device; a package
whose model answers NaN rolls back on the canary, the plan halts there, and no other device
ever receives it — every device still serves the good version.
"""

from __future__ import annotations

import json
import time

import pytest
import tomllib

from edgekiln.artifact.signing import build_package, generate_keypair
from edgekiln.cli.main import main
from tests.integration.agents.deploy_kit import AgentProcess, broken_artifact, compile_tiny

DEVICES = [f"dev-{i}" for i in range(1, 6)]


def _cli(capsys, *argv: str) -> dict:
    code = main(["fleet", *argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def _wait(what: str, check, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _start_agents(fleet, short_dir, public_key) -> dict[str, AgentProcess]:
    from edgekiln.agents.config import dump_toml

    agents = {}
    for name in DEVICES:
        token = fleet.register("plant", name)
        agent = AgentProcess(short_dir / name, [public_key], endpoint=fleet.endpoint, health_runs=3)
        config = tomllib.loads(agent.config.read_text())
        config["device"]["name"] = name
        config["fleet"]["heartbeat_period_seconds"] = 0.5
        config["deploy"]["poll_period_seconds"] = 0.5
        agent.config.write_text(dump_toml(config))
        (agent.root / "token").write_text(token)
        agents[name] = agent.start()
    for agent in agents.values():
        agent.wait_ready()
    return agents


def _plan(capsys, name: str, version: int) -> dict:
    return _cli(
        capsys,
        "deploy",
        "create",
        name,
        "--fleet",
        "plant",
        "--model-handle",
        "tiny",
        "--model-version",
        str(version),
        "--stage",
        "canary:devices=dev-1",
        "--stage",
        "everyone:percent=100",
    )


def _stage(capsys, plan: str, stage: str) -> dict:
    described = _cli(capsys, "deploy", "describe", plan)
    return next(s for s in described["stages"] if s["stage_name"] == stage)


@pytest.fixture
def rollout(tmp_path, short_dir, fleet_server, monkeypatch):
    """The fleet on SeaweedFS with packages of version 1 (good) and 2 (NaN), and 5 agents."""
    fleet = fleet_server()
    monkeypatch.setenv("EDGEKILN_FLEET_ENDPOINT", fleet.endpoint)
    monkeypatch.setenv("EDGEKILN_FLEET_ADMIN_TOKEN", fleet.admin_token)
    private, public = generate_keypair(tmp_path, "release")
    good = compile_tiny(tmp_path, "good", 1.0)
    bad = broken_artifact(good, "nan", tmp_path / "bad.tar.gz")
    for version, artifact in ((1, good), (2, bad)):
        build_package(artifact, private, "tiny", version, tmp_path / f"tiny-{version}.pkg")
        assert main(["fleet", "package", "upload", str(tmp_path / f"tiny-{version}.pkg")]) == 0
    agents = _start_agents(fleet, short_dir, public)
    yield fleet, agents
    for agent in agents.values():
        agent.stop()


def test_good_package_everywhere_then_a_bad_one_stops_at_the_canary(rollout, capsys):
    fleet, agents = rollout
    capsys.readouterr()

    # A good package: the canary, then everyone else.
    _plan(capsys, "good", 1)
    _cli(capsys, "deploy", "start-stage", "good", "canary")
    canary = _wait(
        "the canary stage", lambda: _stage(capsys, "good", "canary")["finished"] and _stage(capsys, "good", "canary")
    )
    assert canary["deployment_status"]["stage_status"] == "DEPLOYED" and canary["device_counts"]["succeeded"] == 1
    _cli(capsys, "deploy", "start-stage", "good", "everyone")
    everyone = _wait("every device", lambda: (s := _stage(capsys, "good", "everyone"))["finished"] and s)
    assert everyone["deployment_status"]["stage_status"] == "DEPLOYED"
    assert everyone["device_counts"]["succeeded"] == 4
    assert {name: agent.serving_scale() for name, agent in agents.items()} == dict.fromkeys(DEVICES, 1.0)

    # A package whose model answers NaN: the canary rolls back, the plan halts.
    _plan(capsys, "bad", 2)
    _cli(capsys, "deploy", "start-stage", "bad", "canary")
    described = _wait(
        "the plan to halt", lambda: (d := _cli(capsys, "deploy", "describe", "bad"))["status"] == "HALTED" and d
    )
    canary = described["stages"][0]
    assert canary["deployment_status"]["stage_status"] == "FAILED"
    assert canary["device_counts"]["rolled_back"] == 1
    [reason] = canary["failure_reasons"]
    assert reason["device_name"] == "dev-1" and reason["status"] == "ROLLED_BACK" and reason["reason"]
    assert reason["rollback_seconds"] is not None
    assert main(["fleet", "deploy", "start-stage", "bad", "everyone"]) != 0
    assert "halted" in capsys.readouterr().err
    time.sleep(2.0)  # several poll periods: nothing reaches the others
    assert agents["dev-1"].serving_scale() == 1.0  # the old model serves again
    for name in DEVICES[1:]:
        assert not [d for d in agents[name].records() if d.startswith("bad:")], name
        token = (agents[name].root / "token").read_text().strip()
        listed = fleet.call("GET", "/v1/agent/deployments", token=token)["deployments"]
        assert listed == [], name  # version 1 is final there, version 2 never handed out
        assert agents[name].serving_scale() == 1.0
    everyone = _stage(capsys, "bad", "everyone")
    assert everyone["deployment_status"]["stage_status"] == "READYTODEPLOY"
    assert sum(everyone["device_counts"].values()) == 0
    print(
        f"\nstaged rollout: good package on {len(DEVICES)}/{len(DEVICES)} devices; bad package rolled back on "
        f"the canary in {reason['rollback_seconds']:.2f} s ({reason['reason']}), 0 other devices received it"
    )
