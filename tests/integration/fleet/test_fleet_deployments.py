"""Deployments on real servers: packages in SeaweedFS behind presigned GETs with Range, and
a staged plan's rows on PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
import uuid

import pytest

from edgekiln.fleet import packages as pkgs
from edgekiln.fleet.bodies import DeploymentResult
from edgekiln.fleet.deploy_bodies import PlanBody
from edgekiln.fleet.deployments import DeploymentStore
from edgekiln.fleet.objects import S3Objects
from edgekiln.fleet.store import FleetStore

NOW = 1_800_000_000.0


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as response:
        return response.status, dict(response.headers), response.read()


def test_packages_in_seaweedfs_download_through_presigned_urls_with_range(seaweed, tmp_path):
    objects = S3Objects(
        f"pkg-{uuid.uuid4().hex[:10]}",
        endpoint_url=seaweed.endpoint,
        access_key=seaweed.access_key,
        secret_key=seaweed.secret_key,
    )
    objects.ensure_ready()
    body = os.urandom(3 * 1024 * 1024 + 17)  # more than one multipart chunk of boto3's upload_file
    path = tmp_path / "p.tar.gz"
    path.write_bytes(body)
    facts = pkgs.PackageFacts(
        "cls", 4, "x86_64/generic", "tvm", "k" * 16, None, hashlib.sha256(body).hexdigest(), len(body)
    )
    objects.put_file(facts.object_key, path)
    assert objects.head(facts.object_key) == len(body)
    url = objects.presign_get(facts.object_key, 60, "http://unused")
    assert url.startswith(seaweed.endpoint) and "Signature=" in url
    status, _, whole = _get(url)
    assert status == 200 and hashlib.sha256(whole).hexdigest() == facts.sha256
    cut = 1_234_567
    status, headers, rest = _get(url, {"Range": f"bytes={cut}-"})
    assert status == 206 and rest == body[cut:]
    assert headers["Content-Range"] == f"bytes {cut}-{len(body) - 1}/{len(body)}"
    tampered = url.replace("Signature=", "Signature=0")
    with pytest.raises(urllib.error.HTTPError) as refused:
        _get(tampered)
    assert refused.value.code == 403


def _result(deployment_id: str, status: str, reason: str = "") -> DeploymentResult:
    return DeploymentResult(
        deployment_id=deployment_id,
        model_handle="cls",
        model_version=1,
        state="DEPLOYED" if status == "SUCCEEDED" else "UNDEPLOYED",
        status=status,
        reason=reason,
        updated_at=NOW,
    )


def test_a_staged_plan_on_postgresql(postgres):
    store = FleetStore(postgres)
    store.create_schema()
    fleet, plan = f"pg-{uuid.uuid4().hex[:8]}", f"plan-{uuid.uuid4().hex[:8]}"
    deployments = DeploymentStore(store)
    try:
        tokens = {f"d{i}": store.register_device(fleet, f"d{i}", now=NOW) for i in range(1, 6)}
        devices = {n: store.authenticate(t) for n, t in tokens.items()}
        handle = f"m{uuid.uuid4().hex[:8]}"
        facts = pkgs.PackageFacts(handle, 1, "x86_64/generic", "tvm", "k" * 16, None, "a" * 64, 10)
        assert deployments.add_package(facts, NOW)[1] is True
        assert deployments.add_package(facts, NOW)[1] is False
        body = PlanBody(
            edge_deployment_plan_name=plan,
            device_fleet_name=fleet,
            model_handle=handle,
            model_version=1,
            stages=[
                {
                    "stage_name": "canary",
                    "device_selection_config": {"device_subset_type": "PERCENTAGE", "percentage": 20},
                },
                {
                    "stage_name": "all",
                    "device_selection_config": {"device_subset_type": "PERCENTAGE", "percentage": 100},
                },
            ],
        )
        deployments.create_plan(body, NOW)
        deployments.start_stage(plan, "canary", NOW + 1)
        handed = {n: deployments.deployments_for(d, NOW + 2) for n, d in devices.items()}
        assert [n for n, h in handed.items() if h] == ["d1"]  # 20 % of 5, the first by name
        dep_id = handed["d1"][0]["deployment_id"]
        assert deployments.record_results(devices["d1"], [_result(dep_id, "SUCCEEDED")], NOW + 3) == 1
        deployments.start_stage(plan, "all", NOW + 4)
        for name in ("d2", "d3"):
            [d] = deployments.deployments_for(devices[name], NOW + 5)
            deployments.record_results(devices[name], [_result(d["deployment_id"], "SUCCEEDED")], NOW + 6)
        [d] = deployments.deployments_for(devices["d4"], NOW + 5)
        deployments.record_results(devices["d4"], [_result(d["deployment_id"], "ROLLED_BACK", "NaN")], NOW + 6)
        assert deployments.deployments_for(devices["d5"], NOW + 7) == []
        described = deployments.describe(plan)
        assert described["status"] == "HALTED" and described["halted_reason"] == "d4: ROLLED_BACK: NaN"
        assert [s["deployment_status"]["stage_status"] for s in described["stages"]] == ["DEPLOYED", "FAILED"]
        assert described["stages"][1]["device_counts"] == {
            "pending": 0,
            "in_progress": 0,
            "succeeded": 2,
            "failed": 0,
            "rolled_back": 1,
            "stopped": 1,
        }
    finally:
        store.close()


def test_the_fleet_process_hands_out_packages_from_seaweedfs(fleet_server, make_package, monkeypatch, capsys):
    from edgekiln.cli.main import main

    fleet = fleet_server()
    monkeypatch.setenv("EDGEKILN_FLEET_ENDPOINT", fleet.endpoint)
    monkeypatch.setenv("EDGEKILN_FLEET_ADMIN_TOKEN", fleet.admin_token)
    tokens = {n: fleet.register("site", n) for n in ("cam-1", "cam-2", "gate-1")}
    package = make_package("detector", 5)
    assert main(["fleet", "package", "upload", str(package), "--json"]) == 0
    uploaded = json.loads(capsys.readouterr().out)
    assert uploaded["sha256"] == hashlib.sha256(package.read_bytes()).hexdigest()
    create = ["fleet", "deploy", "create", "p", "--fleet", "site", "--model-handle", "detector", "--model-version", "5"]
    assert main([*create, "--stage", "cams:contains=cam:do-nothing", "--stage", "rest:percent=100"]) == 0
    assert main(["fleet", "deploy", "start-stage", "p", "cams"]) == 0
    capsys.readouterr()
    assert fleet.call("GET", "/v1/agent/deployments", token=tokens["gate-1"]) == {"deployments": []}
    [d] = fleet.call("GET", "/v1/agent/deployments", token=tokens["cam-2"])["deployments"]
    assert d["deployment_id"] == "p:cams:detector:5" and d["failure_handling"] == "DO_NOTHING"
    assert d["package_url"].startswith(fleet.s3.endpoint)
    status, _, body = _get(d["package_url"], {"Range": "bytes=100-"})
    assert status == 206 and body == package.read_bytes()[100:]
    assert main(["fleet", "deploy", "describe", "p", "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["stages"][0]["device_counts"] == {
        "pending": 1,
        "in_progress": 1,
        "succeeded": 0,
        "failed": 0,
        "rolled_back": 0,
        "stopped": 0,
    }
    assert main(["fleet", "deploy", "start-stage", "p", "rest"]) != 0
    assert "before stage cams has finished (it is INPROGRESS)" in capsys.readouterr().err


def test_the_fleet_process_runs_plans_on_postgresql(fleet_server, postgres, make_package):
    fleet = fleet_server(db_url=postgres)
    site = f"pg-{uuid.uuid4().hex[:8]}"
    handle = f"m{uuid.uuid4().hex[:8]}"
    token = fleet.register(site, "cam-1")
    package = make_package(handle, 1)
    request = urllib.request.Request(
        fleet.endpoint + "/v1/packages",
        data=package.read_bytes(),
        method="PUT",
        headers={"Authorization": f"Bearer {fleet.admin_token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 201
    plan = f"plan-{uuid.uuid4().hex[:8]}"
    stages = [{"stage_name": "all", "device_selection_config": {"device_subset_type": "PERCENTAGE", "percentage": 100}}]
    body = {
        "edge_deployment_plan_name": plan,
        "device_fleet_name": site,
        "model_handle": handle,
        "model_version": 1,
        "stages": stages,
    }
    fleet.call("POST", "/v1/deployment-plans", body)
    fleet.call("POST", f"/v1/deployment-plans/{plan}/stages/all/start")
    [d] = fleet.call("GET", "/v1/agent/deployments", token=token)["deployments"]
    result = _result(d["deployment_id"], "SUCCEEDED").model_dump()
    beat = {
        "heartbeat_id": uuid.uuid4().hex,
        "timestamp": NOW,
        "deployment_results": [dict(result, model_handle=handle)],
    }
    fleet.call("POST", "/v1/agent/heartbeats", {"heartbeats": [beat]}, token=token)
    described = fleet.call("GET", f"/v1/deployment-plans/{plan}")
    assert described["stages"][0]["deployment_status"]["stage_status"] == "DEPLOYED"
    assert described["edge_deployment_success"] == 1
    assert fleet.call("GET", "/v1/agent/deployments", token=token) == {"deployments": []}
