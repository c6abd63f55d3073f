"""Deployment plans through the fleet's HTTP API in process (local object store, SQLite):
packages, plans, stage order, device selection, GetDeployments, results and halting."""

from __future__ import annotations

import hashlib
import re

import pytest

from edgekiln.fleet import deploy_status as ds


@pytest.fixture
def upload(api, make_package):
    def up(handle="cls", version=1, **kw):
        path = make_package(handle, version, **kw)
        answer = api.admin("PUT", "/v1/packages", content=path.read_bytes())
        assert answer.status_code in (200, 201), answer.text
        return answer.json()

    return up


def plan_body(name="p1", fleet="f", stages=None, version=1, handle="cls"):
    return {
        "edge_deployment_plan_name": name,
        "device_fleet_name": fleet,
        "model_handle": handle,
        "model_version": version,
        "stages": stages
        if stages is not None
        else [
            {
                "stage_name": "canary",
                "device_selection_config": {"device_subset_type": "SELECTION", "device_names": ["d1"]},
                "deployment_config": {"failure_handling_policy": "ROLLBACK_ON_FAILURE", "latency_budget_ms": 50},
            },
            {"stage_name": "all", "device_selection_config": {"device_subset_type": "PERCENTAGE", "percentage": 100}},
        ],
    }


def result(deployment_id, status, version=1, reason="", ts=1_800_000_010.0):
    return {
        "deployment_id": deployment_id,
        "model_handle": "cls",
        "model_version": version,
        "desired_state": "DEPLOYED",
        "state": "DEPLOYED" if status == "SUCCEEDED" else "UNDEPLOYED",
        "status": status,
        "reason": reason,
        "rollback_failure_reason": None,
        "rollback_seconds": 0.5 if status == "ROLLED_BACK" else None,
        "updated_at": ts,
    }


def report(api, token, device, *results, hid=None):
    body = {
        "heartbeat_id": hid or f"h{id(results)}{len(results)}",
        "timestamp": 1_800_000_000.0,
        "device_name": device,
        "device_fleet_name": "f",
        "deployment_results": list(results),
    }
    answer = api.heartbeat(token, body)
    assert answer.status_code == 200, answer.text


def fleet_of(api, n=5):
    return {f"d{i}": api.register("f", f"d{i}") for i in range(1, n + 1)}


def deployments(api, token):
    answer = api.device(token, "GET", "/v1/agent/deployments")
    assert answer.status_code == 200, answer.text
    return answer.json()["deployments"]


def stage(described, name):
    return next(s for s in described["stages"] if s["stage_name"] == name)


def roll_back_the_canary(api, upload, n):
    """A fleet of ``n`` devices, plan p1 (canary d1, then all) with its canary started, and
    d1 reporting that it rolled back; the devices' tokens."""
    tokens = fleet_of(api, n)
    upload()
    api.admin("POST", "/v1/deployment-plans", json=plan_body())
    api.admin("POST", "/v1/deployment-plans/p1/stages/canary/start")
    [d] = deployments(api, tokens["d1"])
    report(api, tokens["d1"], "d1", result(d["deployment_id"], "ROLLED_BACK", reason="output is NaN"))
    return tokens


def test_upload_records_the_manifest_and_is_idempotent(api, make_package):
    path = make_package("cls", 3, profile="generic/x86-64-avx2")
    first = api.admin("PUT", "/v1/packages", content=path.read_bytes())
    assert first.status_code == 201, first.text
    described = first.json()
    assert described["model_handle"] == "cls" and described["model_version"] == 3
    assert described["profile"] == "generic/x86-64-avx2"
    assert described["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert described["size"] == path.stat().st_size
    stored = api.root / "objects" / "packages" / "cls" / "3" / f"{described['sha256']}.pkg"
    assert stored.read_bytes() == path.read_bytes()
    assert api.admin("PUT", "/v1/packages", content=path.read_bytes()).status_code == 200
    other = make_package("cls", 3, profile="generic/x86-64-avx2", salt="other bytes")
    clash = api.admin("PUT", "/v1/packages", content=other.read_bytes())
    assert clash.status_code == 409 and "higher --model-version" in clash.text
    assert [p["model_version"] for p in api.admin("GET", "/v1/packages").json()["packages"]] == [3]


def test_upload_refuses_what_is_not_a_package_and_needs_the_admin(api, make_package):
    token = api.register("f", "d1")
    assert api.admin("PUT", "/v1/packages", content=b"not a tarball at all").status_code == 400
    assert api.admin("PUT", "/v1/packages", content=b"").status_code == 400
    body = make_package("cls", 1).read_bytes()
    assert api.device(token, "PUT", "/v1/packages", content=body).status_code == 403
    assert api.client.put("/v1/packages", content=body).status_code == 401
    assert api.rows("deploy_packages") == 0


def test_package_upload_is_capped_by_the_object_limit(make_fleet, make_package):
    api = make_fleet(max_object_bytes=64)
    answer = api.admin("PUT", "/v1/packages", content=make_package("cls", 1, salt="x" * 200).read_bytes())
    assert answer.status_code == 413


def test_create_plan_validates_and_refuses_unknowns(api, upload):
    fleet_of(api, 2)
    upload("cls", 1)
    assert api.admin("POST", "/v1/deployment-plans", json=plan_body(version=2)).status_code == 404
    assert api.admin("POST", "/v1/deployment-plans", json=plan_body(fleet="nofleet")).status_code == 404
    created = api.admin("POST", "/v1/deployment-plans", json=plan_body())
    assert created.status_code == 201, created.text
    assert [s["deployment_status"]["stage_status"] for s in created.json()["stages"]] == ["READYTODEPLOY"] * 2
    assert api.admin("POST", "/v1/deployment-plans", json=plan_body()).status_code == 409
    bad_stages = [
        [],
        [{"stage_name": "a", "device_selection_config": {"device_subset_type": "PERCENTAGE"}}],
        [{"stage_name": "a", "device_selection_config": {"device_subset_type": "PERCENTAGE", "percentage": 101}}],
        [{"stage_name": "a", "device_selection_config": {"device_subset_type": "PERCENTAGE", "percentage": 0}}],
        [
            {
                "stage_name": "a",
                "device_selection_config": {"device_subset_type": "SELECTION", "percentage": 5, "device_names": ["x"]},
            }
        ],
        [{"stage_name": "a", "device_selection_config": {"device_subset_type": "SOME"}}],
        [{"stage_name": "bad name", "device_selection_config": {"device_subset_type": "PERCENTAGE", "percentage": 1}}],
        [{"stage_name": "a", "device_selection_config": {"device_subset_type": "NAMECONTAINS"}}] * 2,
        [
            {
                "stage_name": "a",
                "device_selection_config": {"device_subset_type": "PERCENTAGE", "percentage": 1},
                "deployment_config": {"failure_handling_policy": "PRAY"},
            }
        ],
        [
            {"stage_name": f"s{i}", "device_selection_config": {"device_subset_type": "PERCENTAGE", "percentage": 1}}
            for i in range(11)
        ],
        [
            {
                "stage_name": "a",
                "device_selection_config": {"device_subset_type": "SELECTION", "device_names": ["d1"] * 1001},
            }
        ],
    ]
    for stages in bad_stages:
        answer = api.admin("POST", "/v1/deployment-plans", json=plan_body(name="p2", stages=stages))
        assert answer.status_code == 422, stages
    assert api.admin("POST", "/v1/deployment-plans", json={**plan_body(name="p3"), "extra": 1}).status_code == 422
    assert api.rows("deploy_plans") == 1


def test_unknown_plan_and_stage_are_404(api, upload):
    fleet_of(api, 1)
    upload()
    api.admin("POST", "/v1/deployment-plans", json=plan_body())
    for method, path in (
        ("GET", "/v1/deployment-plans/nope"),
        ("POST", "/v1/deployment-plans/nope/stages/canary/start"),
        ("POST", "/v1/deployment-plans/p1/stages/nope/start"),
        ("POST", "/v1/deployment-plans/p1/stages/nope/stop"),
        ("GET", "/v1/deployment-plans/p1/stages/nope/devices"),
    ):
        assert api.admin(method, path).status_code == 404, path
    assert api.admin("POST", "/v1/deployment-plans/p1/stages/canary/launch").status_code == 422


def test_good_rollout_canary_then_everyone(api, upload):
    tokens = fleet_of(api, 5)
    upload()
    api.admin("POST", "/v1/deployment-plans", json=plan_body())
    # Nothing is handed out before a stage starts; the second stage waits for the first.
    assert all(deployments(api, t) == [] for t in tokens.values())
    early = api.admin("POST", "/v1/deployment-plans/p1/stages/all/start")
    assert early.status_code == 409 and "before stage canary has finished" in early.text
    started = api.admin("POST", "/v1/deployment-plans/p1/stages/canary/start").json()
    assert stage(started, "canary")["device_counts"]["pending"] == 1
    assert api.admin("POST", "/v1/deployment-plans/p1/stages/canary/start").status_code == 409
    [d] = deployments(api, tokens["d1"])
    assert d["deployment_id"] == "p1:canary:cls:1" and d["latency_budget_ms"] == 50
    assert d["failure_handling"] == "ROLLBACK_ON_FAILURE" and d["model_version"] == 1
    assert all(deployments(api, tokens[n]) == [] for n in ("d2", "d3", "d4", "d5"))
    described = api.admin("GET", "/v1/deployment-plans/p1").json()
    assert stage(described, "canary")["device_counts"]["in_progress"] == 1
    assert api.admin("POST", "/v1/deployment-plans/p1/stages/all/start").status_code == 409
    report(api, tokens["d1"], "d1", result(d["deployment_id"], "DEPLOYING"), hid="a")
    report(api, tokens["d1"], "d1", result(d["deployment_id"], "SUCCEEDED", ts=1_800_000_020.0), hid="b")
    canary = stage(api.admin("GET", "/v1/deployment-plans/p1").json(), "canary")
    assert canary["deployment_status"]["stage_status"] == "DEPLOYED" and canary["finished"]
    after = api.admin("POST", "/v1/deployment-plans/p1/stages/all/start").json()
    assert stage(after, "all")["device_counts"]["pending"] == 4  # the canary device is not picked again
    for name in ("d2", "d3", "d4", "d5"):
        [d] = deployments(api, tokens[name])
        assert d["stage"] == "all"
        report(api, tokens[name], name, result(d["deployment_id"], "SUCCEEDED"), hid=f"s-{name}")
    final = api.admin("GET", "/v1/deployment-plans/p1").json()
    assert final["edge_deployment_success"] == 5 and final["edge_deployment_failed"] == 0
    assert [s["deployment_status"]["stage_status"] for s in final["stages"]] == ["DEPLOYED", "DEPLOYED"]
    listed = api.admin("GET", "/v1/deployment-plans/p1/stages/all/devices").json()["device_deployment_summaries"]
    assert [(x["device_name"], x["device_deployment_status"]) for x in listed] == [
        (f"d{i}", "DEPLOYED") for i in range(2, 6)
    ]


def test_a_canary_failure_halts_the_plan_and_nobody_else_gets_the_package(api, upload):
    tokens = roll_back_the_canary(api, upload, 5)
    described = api.admin("GET", "/v1/deployment-plans/p1").json()
    assert described["status"] == "HALTED" and "d1: ROLLED_BACK: output is NaN" in described["halted_reason"]
    canary = stage(described, "canary")
    assert canary["deployment_status"]["stage_status"] == "FAILED"
    assert canary["device_counts"]["rolled_back"] == 1
    assert canary["failure_reasons"] == [
        {
            "device_name": "d1",
            "status": "ROLLED_BACK",
            "reason": "output is NaN",
            "rollback_failure_reason": None,
            "rollback_seconds": 0.5,
        }
    ]
    refused = api.admin("POST", "/v1/deployment-plans/p1/stages/all/start")
    assert refused.status_code == 409 and "halted" in refused.text
    assert all(deployments(api, tokens[n]) == [] for n in ("d2", "d3", "d4", "d5"))
    assert api.rows("deploy_stage_devices") == 1
    # The canary device reported it final: it is no longer listed.
    assert deployments(api, tokens["d1"]) == []


def test_rollback_policy_withholds_the_package_from_devices_that_had_not_fetched_it(api, upload):
    tokens = fleet_of(api, 4)
    upload()
    stages = [
        {"stage_name": "wide", "device_selection_config": {"device_subset_type": "PERCENTAGE", "percentage": 100}}
    ]
    api.admin("POST", "/v1/deployment-plans", json=plan_body(stages=stages))
    api.admin("POST", "/v1/deployment-plans/p1/stages/wide/start")
    [d] = deployments(api, tokens["d1"])
    assert len(deployments(api, tokens["d2"])) == 1
    report(api, tokens["d1"], "d1", result(d["deployment_id"], "FAILED", reason="signature does not verify"))
    assert deployments(api, tokens["d3"]) == [] and deployments(api, tokens["d4"]) == []
    counts = stage(api.admin("GET", "/v1/deployment-plans/p1").json(), "wide")["device_counts"]
    assert counts == {"pending": 0, "in_progress": 1, "succeeded": 0, "failed": 1, "rolled_back": 0, "stopped": 2}


def test_do_nothing_goes_on_after_a_failure_once_the_stage_is_done(api, upload):
    tokens = fleet_of(api, 3)
    upload()
    stages = [
        {
            "stage_name": "first",
            "device_selection_config": {"device_subset_type": "NAMECONTAINS", "device_name_contains": "d1"},
            "deployment_config": {"failure_handling_policy": "DO_NOTHING"},
        },
        {"stage_name": "rest", "device_selection_config": {"device_subset_type": "PERCENTAGE", "percentage": 50}},
    ]
    api.admin("POST", "/v1/deployment-plans", json=plan_body(stages=stages))
    api.admin("POST", "/v1/deployment-plans/p1/stages/first/start")
    [d] = deployments(api, tokens["d1"])
    report(api, tokens["d1"], "d1", result(d["deployment_id"], "FAILED", reason="too slow"))
    first = stage(api.admin("GET", "/v1/deployment-plans/p1").json(), "first")
    assert first["deployment_status"]["stage_status"] == "FAILED" and first["finished"]
    rest = stage(api.admin("POST", "/v1/deployment-plans/p1/stages/rest/start").json(), "rest")
    # 50 % of 3 devices rounds up to 2: both that the first stage did not hold.
    assert rest["device_counts"]["pending"] == 2


def test_stop_withholds_and_start_resumes(api, upload):
    tokens = fleet_of(api, 3)
    upload()
    stages = [{"stage_name": "all", "device_selection_config": {"device_subset_type": "PERCENTAGE", "percentage": 100}}]
    api.admin("POST", "/v1/deployment-plans", json=plan_body(stages=stages))
    assert api.admin("POST", "/v1/deployment-plans/p1/stages/all/stop").status_code == 409
    api.admin("POST", "/v1/deployment-plans/p1/stages/all/start")
    assert len(deployments(api, tokens["d1"])) == 1
    stopped = stage(api.admin("POST", "/v1/deployment-plans/p1/stages/all/stop").json(), "all")
    assert stopped["deployment_status"]["stage_status"] == "STOPPED"
    assert stopped["device_counts"] == {**dict.fromkeys(ds.DEVICE_STATES, 0), "in_progress": 1, "stopped": 2}
    assert deployments(api, tokens["d2"]) == []
    assert len(deployments(api, tokens["d1"])) == 1  # already handed out and not final: stays listed
    api.admin("POST", "/v1/deployment-plans/p1/stages/all/start")
    assert len(deployments(api, tokens["d2"])) == 1


def test_selection_of_an_unregistered_device_is_refused_at_start(api, upload):
    fleet_of(api, 2)
    upload()
    stages = [
        {"stage_name": "s", "device_selection_config": {"device_subset_type": "SELECTION", "device_names": ["d9"]}}
    ]
    api.admin("POST", "/v1/deployment-plans", json=plan_body(stages=stages))
    answer = api.admin("POST", "/v1/deployment-plans/p1/stages/s/start")
    assert answer.status_code == 404 and "d9" in answer.text
    assert api.rows("deploy_stage_devices") == 0


def test_results_keep_the_latest_and_ignore_foreign_deployments(api, upload):
    tokens = fleet_of(api, 2)
    upload()
    api.admin("POST", "/v1/deployment-plans", json=plan_body())
    api.admin("POST", "/v1/deployment-plans/p1/stages/canary/start")
    [d] = deployments(api, tokens["d1"])
    report(api, tokens["d1"], "d1", result(d["deployment_id"], "SUCCEEDED", ts=1_800_000_050.0), hid="x1")
    # An older DEPLOYING that arrives late does not undo the final status.
    report(api, tokens["d1"], "d1", result(d["deployment_id"], "DEPLOYING", ts=1_800_000_060.0), hid="x2")
    # d2 is in no started stage: its report of the same id is not stored.
    report(api, tokens["d2"], "d2", result(d["deployment_id"], "FAILED"), hid="x3")
    report(api, tokens["d1"], "d1", result("local:install:cls:7", "SUCCEEDED", version=7), hid="x4")
    assert api.rows("deploy_results") == 1
    described = api.admin("GET", "/v1/deployment-plans/p1").json()
    assert described["status"] == "ACTIVE"
    assert stage(described, "canary")["deployment_status"]["stage_status"] == "DEPLOYED"


def test_bad_deployment_results_are_refused_and_long_reasons_cut(api, upload):
    tokens = fleet_of(api, 1)
    upload()
    api.admin("POST", "/v1/deployment-plans", json=plan_body(stages=plan_body()["stages"][:1]))
    api.admin("POST", "/v1/deployment-plans/p1/stages/canary/start")
    [d] = deployments(api, tokens["d1"])
    good = result(d["deployment_id"], "FAILED")
    for bad in (
        {**good, "status": "EXPLODED"},
        {**good, "model_version": 0},
        {**good, "model_handle": "no spaces"},
        {**good, "deployment_id": "x" * 257},
        {**good, "updated_at": "soon"},
        {**good, "rollback_seconds": -1},
    ):
        answer = api.heartbeat(tokens["d1"], {"heartbeat_id": "bad", "timestamp": 1.0, "deployment_results": [bad]})
        assert answer.status_code == 422, bad
    many = {"heartbeat_id": "many", "timestamp": 1.0, "deployment_results": [good] * 65}
    assert api.heartbeat(tokens["d1"], many).status_code == 422
    report(api, tokens["d1"], "d1", {**good, "reason": "line one\nline two " + "y" * 1000}, hid="long")
    [listed] = api.admin("GET", "/v1/deployment-plans/p1/stages/canary/devices").json()["device_deployment_summaries"]
    assert listed["device_deployment_status"] == "FAILED"
    assert listed["device_deployment_status_message"].startswith("line one line two y")
    assert len(listed["device_deployment_status_message"]) == 512


def test_deployments_need_a_device_token_and_urls_serve_ranges(api, upload):
    tokens = fleet_of(api, 1)
    package = upload()
    api.admin("POST", "/v1/deployment-plans", json=plan_body(stages=plan_body()["stages"][:1]))
    api.admin("POST", "/v1/deployment-plans/p1/stages/canary/start")
    assert api.client.get("/v1/agent/deployments").status_code == 401
    assert api.admin("GET", "/v1/agent/deployments").status_code == 401
    [d] = deployments(api, tokens["d1"])
    assert d["package_sha256"] == package["sha256"] and d["package_size"] == package["size"]
    url = d["package_url"].replace("http://127.0.0.1:9", "")
    whole = api.client.get(url)
    assert whole.status_code == 200 and hashlib.sha256(whole.content).hexdigest() == package["sha256"]
    part = api.client.get(url, headers={"Range": "bytes=10-"})
    assert part.status_code == 206 and part.content == whole.content[10:]
    assert part.headers["content-range"] == f"bytes 10-{package['size'] - 1}/{package['size']}"
    assert api.client.get(url.replace("signature=", "signature=0")).status_code == 403
    api.clock[0] += 3600
    assert api.client.get(url).status_code == 403  # expired


def test_dashboard_shows_plans_stage_counts_and_each_device_state(api, upload):
    roll_back_the_canary(api, upload, 3)
    assert api.sign_in().status_code == 303
    page = api.client.get("/dashboard/deployments").text
    assert 'data-plan="p1"' in page and "HALTED" in page
    assert "rolled_back 1" in page and "FAILED" in page  # the canary's count and its stage status
    assert "No deployment plans" not in page
    overview = api.client.get("/dashboard").text
    assert "rolled-back" in overview
    device = api.client.get("/dashboard/devices/f/d1").text
    assert "output is NaN" in device and "canary" in device and "ROLLED_BACK" in device


def test_the_deployments_page_describes_only_the_newest_plans(api, upload, monkeypatch):
    from edgekiln.fleet.dashboard import deploy_view

    fleet_of(api, 1)
    upload()
    for name in ("p1", "p2", "p3"):
        assert api.admin("POST", "/v1/deployment-plans", json=plan_body(name)).status_code == 201
    monkeypatch.setattr(deploy_view, "MAX_PLANS", 2)
    assert api.sign_in().status_code == 303
    page = api.client.get("/dashboard/deployments").text
    assert re.findall(r'data-plan="(p\d)"', page) == ["p3", "p2"]
    listed = api.admin("GET", "/v1/deployment-plans").json()["plans"]
    assert [p["edge_deployment_plan_name"] for p in listed] == ["p1", "p2", "p3"]  # the API lists every plan
