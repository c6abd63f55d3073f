"""Broken models roll back and the old model serves again, with no failed Predict during
any switch; a crash loop fails the trial; results reach the fleet after it comes back."""

from __future__ import annotations

import threading
import time

import numpy as np

from tests.integration.agents.deploy_kit import AgentProcess, fleet_and_agent, install_first


class Predictor:
    """Predict in a loop on the agent's socket; counts answers and failures."""

    def __init__(self, agent: AgentProcess) -> None:
        from edgekiln.agents.client import AgentClient

        self.client = AgentClient(agent.root / "a.sock", timeout=10)
        self.answers, self.failures, self.stop = 0, [], False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop:
            try:
                self.client.predict("tiny", [np.ones((1, 8), np.float32)])
                self.answers += 1
            except Exception as exc:  # noqa: BLE001 - every failure is what the test counts
                self.failures.append(repr(exc))

    def close(self) -> None:
        self.stop = True
        self.thread.join(10)
        self.client.close()


def test_broken_models_roll_back_and_predict_never_fails(deploy_parts, package, short_dir, tmp_path):
    with fleet_and_agent(deploy_parts, short_dir, tmp_path) as (fleet, agent):
        agent.start().wait_ready()
        install_first(fleet, agent, package("a1", 1), "v1", 1)
        predictor = Predictor(agent)
        try:
            from edgekiln.cli.package import record_outputs

            outputs_of_v1 = record_outputs(deploy_parts["a1"], 1e-3)
            cases = {
                "garbage": ("fails to load", None, {}),
                "nan": ("NaN or Inf", None, {}),
                "slow": ("over the budget", 2.0, {}),
                "a2": ("differ from the recorded ones", None, {"health": outputs_of_v1}),  # v2 claiming v1's outputs
            }
            for version, (kind, (words, budget, options)) in enumerate(cases.items(), start=2):
                fleet.publish(
                    package(kind, version, **options), f"broken-{kind}", "tiny", version, latency_budget_ms=budget
                )
                record = agent.wait_final(f"broken-{kind}")
                assert record["status"] == "ROLLED_BACK", record
                assert words in record["reason"] and "v1 serves again" in record["reason"], record["reason"]
                assert 0 <= record["rollback_seconds"] < 10
                if kind == "slow":  # at least 10x over the budget the plan set
                    assert record["health_p50_ms"] >= 10 * budget, record
                assert agent.serving_scale() == 1.0
            good = package("a2", 6, health=record_outputs(deploy_parts["a2"], 1e-3))
            fleet.publish(good, "v6", "tiny", 6, latency_budget_ms=500.0)
            record = agent.wait_final("v6")
            assert record["status"] == "SUCCEEDED" and record["recorded_outputs"]["seed"] == 0, record
            assert agent.serving_scale() == 2.0
            time.sleep(0.3)
            predictor.close()
            assert predictor.failures == [] and predictor.answers > 50, (predictor.failures[:3], predictor.answers)
            result = fleet.wait_result("broken-slow", "ROLLED_BACK")
            assert result["status"] == "ROLLED_BACK" and result["rollback_seconds"] is not None
            assert (result["model_handle"], result["model_version"], result["desired_state"]) == ("tiny", 4, "DEPLOYED")
        finally:
            predictor.close()


def test_crash_loop_rolls_back_after_three_starts(deploy_parts, package, short_dir, tmp_path):
    with fleet_and_agent(deploy_parts, short_dir, tmp_path) as (fleet, agent):
        agent.start().wait_ready()
        install_first(fleet, agent, package("a1", 1), "v1", 1)
        agent.stop()
        fleet.publish(package("a2", 2), "v2", "tiny", 2)
        for start in (1, 2):  # the new version "crashes" the agent during its trial, twice
            agent.start(kill_at="health:1")
            assert agent.proc.wait(60) == -9, agent.log()[-2000:]
            assert agent.record("v2")["starts"] == start
        agent.start().wait_ready()  # the third start without a commit: a crash loop
        record = agent.wait_final("v2")
        assert record["status"] == "ROLLED_BACK" and "crash loop" in record["reason"], record
        assert agent.serving_scale() == 1.0


def test_offline_device_completes_and_reports_when_back(deploy_parts, package, short_dir, tmp_path):
    with fleet_and_agent(deploy_parts, short_dir, tmp_path) as (fleet, agent):
        fleet.refuse_heartbeats = True
        fleet.publish(package("a1", 1), "v1", "tiny", 1)
        agent.start().wait_ready()
        record = agent.wait_final("v1")
        fleet.deployments = []  # the fleet is gone: only the device knows the deployment now
        agent.stop()
        assert record["status"] == "SUCCEEDED" and not record["reported"]
        assert "v1" not in fleet.results
        agent.start().wait_ready()
        assert agent.serving_scale() == 1.0
        fleet.refuse_heartbeats = False
        result = fleet.wait_result("v1", "SUCCEEDED")
        assert result["status"] == "SUCCEEDED" and result["state"] == "DEPLOYED"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not agent.record("v1").get("reported"):
            time.sleep(0.1)
        assert agent.record("v1")["reported"] is True
