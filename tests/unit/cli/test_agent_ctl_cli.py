"""``edgekiln agent-ctl deployments``: the device's deployment log, as a table and as JSON."""

from __future__ import annotations

import json

import pytest

from edgekiln.agents.config import dump_toml
from edgekiln.agents.deploy.store import DeploymentLog, log_path
from edgekiln.cli.main import main


@pytest.fixture
def config(tmp_path):
    state = tmp_path / "state"
    data = {
        "device": {"name": "dev-1", "fleet": "plant"},
        "agent": {"socket": str(tmp_path / "a.sock"), "model_dir": str(tmp_path), "state_dir": str(state)},
        "capture": {"destination": "Disk", "disk_path": str(tmp_path / "captures")},
    }
    path = tmp_path / "agent.toml"
    path.write_text(dump_toml(data))
    log_path(state).parent.mkdir(parents=True)
    log = DeploymentLog(log_path(state))
    log.update("local:aa", spec={"handle": "tiny", "version": 1}, status="SUCCEEDED", reason="serves", updated_at=1.0)
    log.update("local:bb", spec={"handle": "tiny", "version": 2}, status="FAILED", reason="sha256", updated_at=2.0)
    return path


def test_deployments_lists_the_log_oldest_first(config, capsys):
    assert main(["agent-ctl", "--config", str(config), "deployments"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:4] for line in lines] == [
        ["local:aa", "tiny", "v1", "SUCCEEDED"],
        ["local:bb", "tiny", "v2", "FAILED"],
    ]
    assert lines[1].endswith("sha256")


def test_deployments_as_json_prints_only_json(config, capsys):
    assert main(["agent-ctl", "--config", str(config), "--json", "deployments"]) == 0
    found = json.loads(capsys.readouterr().out)["deployments"]
    assert [(r["deployment_id"], r["status"]) for r in found] == [("local:aa", "SUCCEEDED"), ("local:bb", "FAILED")]
