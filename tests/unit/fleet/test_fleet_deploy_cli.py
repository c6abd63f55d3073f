"""``edgekiln fleet package`` and ``edgekiln fleet deploy`` against a fleet service served by
uvicorn in a thread of this process."""

from __future__ import annotations

import json

import pytest

from edgekiln.cli.fleet_deploy import parse_stage
from edgekiln.cli.main import main
from edgekiln.errors import UserError


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["fleet", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_stage_specs():
    assert parse_stage("canary:devices=cam-1,cam-2:budget=25") == {
        "stage_name": "canary",
        "device_selection_config": {"device_subset_type": "SELECTION", "device_names": ["cam-1", "cam-2"]},
        "deployment_config": {"latency_budget_ms": 25.0},
    }
    assert parse_stage("all:percent=100:do-nothing") == {
        "stage_name": "all",
        "device_selection_config": {"device_subset_type": "PERCENTAGE", "percentage": 100},
        "deployment_config": {"failure_handling_policy": "DO_NOTHING"},
    }
    assert parse_stage("pis:contains=pi:ROLLBACK_ON_FAILURE")["device_selection_config"] == {
        "device_subset_type": "NAMECONTAINS",
        "device_name_contains": "pi",
    }
    for bad in ("canary", ":percent=5", "a:percent=x", "a:percent=5:maybe", "a:budget=fast:percent=1", "a:size=3"):
        with pytest.raises(UserError):
            parse_stage(bad)


def test_the_whole_plan_from_the_command_line(served, capsys, make_package):
    from edgekiln.cli.fleet import FleetAdmin

    admin = FleetAdmin(served, "admin-token-0123456789")
    tokens = {
        n: admin.call("POST", "/v1/devices", {"fleet": "plant", "device": n})["token"] for n in ("cam-1", "cam-2")
    }
    code, out, _ = run(capsys, "package", "upload", str(make_package("cls", 2)))
    assert code == 0 and out.startswith("uploaded cls version 2 for generic/x86-64-avx2")
    code, out, _ = run(capsys, "package", "list", "--json")
    assert [p["model_version"] for p in json.loads(out)["packages"]] == [2]
    create = ["deploy", "create", "roll", "--fleet", "plant", "--model-handle", "cls", "--model-version", "2"]
    code, out, _ = run(
        capsys, *create, "--stage", "canary:devices=cam-1:budget=30", "--stage", "all:percent=100", "--json"
    )
    assert code == 0 and [s["stage_name"] for s in json.loads(out)["stages"]] == ["canary", "all"]
    code, _, err = run(capsys, "deploy", "start-stage", "roll", "all")
    assert code != 0 and "before stage canary has finished" in err and len(err.strip().splitlines()) == 1
    code, out, _ = run(capsys, "deploy", "start-stage", "roll", "canary")
    assert code == 0 and "canary" in out and "INPROGRESS" in out
    [d] = _deployments(served, tokens["cam-1"])
    _report(served, tokens["cam-1"], "cam-1", d["deployment_id"], "ROLLED_BACK", "p50 310 ms over the 30 ms budget")
    code, out, _ = run(capsys, "deploy", "describe", "roll")
    assert code == 0 and "HALTED" in out
    assert "cam-1: ROLLED_BACK: p50 310 ms over the 30 ms budget (rollback 0.40 s)" in out
    code, out, _ = run(capsys, "deploy", "list-devices", "roll", "canary", "--json")
    [device] = json.loads(out)["device_deployment_summaries"]
    assert (device["device_name"], device["device_deployment_status"]) == ("cam-1", "FAILED")
    code, _, err = run(capsys, "deploy", "start-stage", "roll", "all")
    assert code != 0 and "halted" in err
    code, _, err = run(capsys, "deploy", "stop-stage", "roll", "canary")
    assert code != 0 and "FAILED, not in progress" in err
    code, _, err = run(capsys, "deploy", "describe", "nope")
    assert code != 0 and "404 no deployment plan nope" in err
    code, _, err = run(capsys, "package", "upload", "/nonexistent.tar.gz")
    assert code != 0 and "is not a file" in err
    code, out, _ = run(capsys, "deploy", "list")
    assert code == 0 and out.startswith("plan roll: fleet plant")
    assert _deployments(served, tokens["cam-2"]) == []


def _deployments(endpoint, token):
    import urllib.request

    request = urllib.request.Request(endpoint + "/v1/agent/deployments", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["deployments"]


def _report(endpoint, token, device, deployment_id, status, reason):
    import time
    import urllib.request

    result = {
        "deployment_id": deployment_id,
        "model_handle": "cls",
        "model_version": 2,
        "desired_state": "DEPLOYED",
        "state": "UNDEPLOYED",
        "status": status,
        "reason": reason,
        "rollback_seconds": 0.4,
        "updated_at": time.time(),
    }
    body = {
        "heartbeats": [{"heartbeat_id": f"h{time.time_ns()}", "timestamp": time.time(), "deployment_results": [result]}]
    }
    request = urllib.request.Request(
        endpoint + "/v1/agent/heartbeats",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
