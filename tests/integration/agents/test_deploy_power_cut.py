"""kill -9 the agent at every install step, 5 seeds each: after each restart exactly one
complete version serves, no partial slot is left, and the deployment ends SUCCEEDED."""

from __future__ import annotations

import random

from edgekiln.agents.deploy.faults import STEPS
from tests.integration.agents.deploy_kit import fleet_and_agent, install_first

SEEDS = 5
# Checkpoints each step passes on every run: the N-th of them is where the kill happens.
# The padded package is ~330 kB: 5 download chunks of 64 kB.
CHECKPOINTS = {"download": 4, "verify": 3, "unpack": 2, "switch": 2, "health": 2, "commit": 3}


def test_kill_minus_nine_at_every_step(deploy_parts, package, short_dir, tmp_path):
    kills, version = 0, 1
    with fleet_and_agent(deploy_parts, short_dir, tmp_path) as (fleet, agent):
        agent.start().wait_ready()
        install_first(fleet, agent, package("p1", 1), "v1", 1)
        agent.stop()
        for step in STEPS:
            for seed in range(SEEDS):
                version += 1
                old, new = (1.0, 2.0) if version % 2 == 0 else (2.0, 1.0)
                point = random.Random(f"{step}-{seed}").randint(1, CHECKPOINTS[step])
                deployment_id = f"{step}-{seed}"
                fleet.publish(package("p2" if new == 2.0 else "p1", version), deployment_id, "tiny", version)
                agent.start(kill_at=f"{step}:{point}")
                assert agent.proc.wait(60) == -9, (step, point, agent.log()[-3000:])
                kills += 1
                assert agent.record(deployment_id)["status"] == "DEPLOYING"
                agent.start().wait_ready()
                assert agent.serving_scale() in (old, new), (step, seed)  # one complete version, at once
                record = agent.wait_final(deployment_id)
                assert record["status"] == "SUCCEEDED", (step, seed, record)
                assert agent.serving_scale() == new, (step, seed)
                slots = agent.root / "s" / "deploy" / "slots" / "tiny"
                names = sorted(p.name for p in slots.iterdir())
                assert names == ["committed", "current", f"v{version}"], (step, seed, names)
                agent.stop()
                assert agent.proc.returncode == 0
        print(f"\nkill -9 power cuts: {kills} ({SEEDS} seeds x {len(STEPS)} steps), 0 devices without a serving model")
        assert kills >= 30
