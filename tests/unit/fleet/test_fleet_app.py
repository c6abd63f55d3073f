"""The fleet HTTP API in process (local object store): auth, isolation, presigned PUTs."""

from __future__ import annotations

import pytest

from edgekiln.errors import UserError
from edgekiln.fleet.app import FleetOptions

ADMIN = "admin-token-0123456789"


def test_operator_routes_need_the_admin_token(api):
    token = api.register("f", "d1")
    client = api.client
    assert client.get("/v1/devices").status_code == 401
    assert api.device("wrong", "GET", "/v1/devices").status_code == 401
    assert api.device(token, "GET", "/v1/devices").status_code == 403
    assert api.device(token, "GET", "/v1/devices/f/d1").status_code == 403
    assert api.device(token, "GET", "/v1/status").status_code == 403
    assert api.admin("POST", "/v1/devices", json={"fleet": "f", "device": "d1"}).status_code == 409
    for bad in ("bad name", "x" * 64, "-lead", "trail\n", "", "a_b"):
        assert api.admin("POST", "/v1/devices", json={"fleet": "f", "device": bad}).status_code == 422, bad
    assert api.admin("GET", "/v1/devices/f/nobody").status_code == 404
    assert [d["device"] for d in api.admin("GET", "/v1/devices?fleet=f").json()["devices"]] == ["d1"]


def test_health_says_nothing_about_where_data_lives(api):
    assert api.client.get("/v1/health").json() == {
        "status": "ok",
        "version": api.client.get("/v1/health").json()["version"],
    }
    assert set(api.client.get("/v1/health").json()) == {"status", "version"}
    status = api.admin("GET", "/v1/status").json()
    assert status["objects"] == f"directory {api.root / 'objects'}" and status["database"].startswith("sqlite")


def test_api_docs_are_closed_unless_asked_for(make_fleet):
    closed = make_fleet()
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert closed.client.get(path).status_code == 404, path
    opened = make_fleet(api_docs=True)
    assert opened.client.get("/openapi.json").json()["info"]["title"] == "edgekiln fleet service"
    assert opened.client.get("/docs").status_code == 200


def test_heartbeats_need_a_device_token_of_that_device(api, hb):
    token = api.register("f", "d1")
    h1 = hb("h1")
    assert api.client.post("/v1/agent/heartbeats", json={"heartbeats": [h1]}).status_code == 401
    assert api.heartbeat(ADMIN, h1).status_code == 401
    assert api.heartbeat(token, h1).json() == {"accepted": 1, "duplicates": 0}
    assert api.heartbeat(token, h1).json() == {"accepted": 0, "duplicates": 1}
    assert api.heartbeat(token, hb("h2", device_name="d2")).status_code == 403
    assert api.heartbeat(token, {"timestamp": 1}).status_code == 422
    assert api.device(token, "POST", "/v1/agent/heartbeats", json={"nope": 1}).status_code == 422


@pytest.mark.parametrize("timestamp", [float("nan"), float("inf"), float("-inf"), 1e308, -1.0, 4.2e9, "soon", None])
def test_absurd_heartbeat_timestamps_are_refused(api, hb, timestamp):
    token = api.register("f", "d1")
    answer = api.device(
        token,
        "POST",
        "/v1/agent/heartbeats",
        content=_json(hb("h1", timestamp)),
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 422, answer.text
    assert api.rows("heartbeats") == 0


def _json(value) -> bytes:
    import json

    return json.dumps({"heartbeats": [value]}).encode()  # writes NaN and Infinity as Python's json does


def test_a_device_clock_in_the_future_cannot_freeze_its_state(api, hb):
    token = api.register("f", "d1")
    assert api.heartbeat(token, hb("h1", 4.1e9, agent_version="1")).status_code == 200  # year 2099
    assert api.heartbeat(token, hb("h2", 1_800_000_000.0, agent_version="2", dead_letter_batches=3)).status_code == 200
    described = api.admin("GET", "/v1/devices/f/d1").json()
    assert described["agent_version"] == "2" and described["dead_letter_batches"] == 3
    assert api.heartbeat(token, hb("h3", dead_letter_batches=-1)).status_code == 422


def test_faults_and_metrics_are_typed(api, hb):
    token = api.register("f", "d1")
    fault = {"kind": "store-corrupt", "error": "file is not a database", "moved_to": "/var/x", "count": 2}
    metrics = [{"dimension": "agent", "metric_name": "cpu_percent", "value": 1.5, "timestamp": 1.0}]
    assert api.heartbeat(token, hb("h1", faults=[fault], agent_metrics=metrics, unknown_field=1)).status_code == 200
    described = api.admin("GET", "/v1/devices/f/d1").json()
    assert described["faults"][0] == {**fault, "reported_at": api.clock[0]}
    assert described["agent_metrics"] == {"cpu_percent": 1.5}
    for bad in (
        {"faults": [{"kind": "x", "nested": {"a": 1}}]},
        {"agent_metrics": [{"metric_name": "m", "value": float("nan")}]},
        {"models": [{"model_name": "bad name"}]},
        {"agent_version": "1\u0000"},
        {"heartbeat_id": "a/b"},
    ):
        answer = api.device(
            token,
            "POST",
            "/v1/agent/heartbeats",
            content=_json({**hb("h9"), **bad}),
            headers={"Content-Type": "application/json"},
        )
        assert answer.status_code == 422, bad


def test_uploads_stay_in_the_devices_prefix(api):
    client, root = api.client, api.root
    t1, t2 = api.register("f", "d1"), api.register("f", "d2")
    answer = api.device(t1, "POST", "/v1/agent/uploads", json={"keys": ["m/2027-01-01/b.jsonl"]}).json()
    assert answer["prefix"] == "f/d1/"
    url = answer["urls"]["m/2027-01-01/b.jsonl"]
    assert "/v1/objects/f/d1/m/2027-01-01/b.jsonl?" in url
    for bad in (
        "../d2/x",
        "/abs",
        "a//b",
        "a/../../d2/x",
        "a b",
        "m/x\n",
        "k.jsonl",
        "bad_model/x",
        "m/" + "x" * 129,
        "-m/x",
    ):
        assert api.device(t1, "POST", "/v1/agent/uploads", json={"keys": [bad]}).status_code in (400, 422), bad
    path = url.split("127.0.0.1:9", 1)[1]
    assert client.put(path, content=b"line\n").status_code == 200
    stored = root / "objects" / "f" / "d1" / "m" / "2027-01-01" / "b.jsonl"
    assert stored.read_bytes() == b"line\n"
    assert oct(stored.stat().st_mode & 0o777) == "0o640" and oct(stored.parent.stat().st_mode & 0o777) == "0o750"
    assert oct((root / "objects" / "f").stat().st_mode & 0o777) == "0o750"
    # The signature covers the key: the same URL cannot be pointed at d2's prefix.
    assert client.put(path.replace("/f/d1/", "/f/d2/"), content=b"evil").status_code == 403
    assert client.put(path.replace("signature=", "signature=0"), content=b"evil").status_code == 403
    assert not (root / "objects" / "f" / "d2").exists()
    # d2 cannot note d1's batch as its own: keys are relative to the caller's prefix.
    body = {"key": "m/2027-01-01/b.jsonl", "records": [{"record_id": "r1", "model_name": "m"}]}
    assert api.device(t2, "POST", "/v1/agent/captures", json=body).status_code == 409
    assert api.device(t1, "POST", "/v1/agent/captures", json=body).json() == {"new": 1, "duplicates": 0}
    assert api.device(t1, "POST", "/v1/agent/captures", json=body).json() == {"new": 0, "duplicates": 1}
    listing = api.admin("GET", "/v1/devices/f/d1/captures").json()
    assert listing["records"] == [{"record_id": "r1", "model_name": "m", "key": "f/d1/m/2027-01-01/b.jsonl"}]
    assert listing["objects"] == [{"key": "f/d1/m/2027-01-01/b.jsonl", "size": 5}]
    bad_model = dict(body, records=[{"record_id": "r2", "model_name": "x" * 200}])
    assert api.device(t1, "POST", "/v1/agent/captures", json=bad_model).status_code == 422


def test_expired_presigned_url_is_refused(make_fleet):
    api = make_fleet(presign_seconds=5)
    token = api.register("f", "d1")
    url = api.device(token, "POST", "/v1/agent/uploads", json={"keys": ["m/k.jsonl"]}).json()["urls"]["m/k.jsonl"]
    api.clock[0] = 1e12
    assert api.client.put(url.split("127.0.0.1:9", 1)[1], content=b"x").status_code == 403


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"database_url": ""}, "database URL"),
        ({"admin_token": "short"}, "admin token"),
        ({"object_store": "ftp"}, "object store"),
        ({"object_store": "local", "objects_dir": None}, "objects-dir"),
        ({"s3_bucket": "Bad_Bucket"}, "bucket"),
        ({"s3_bucket": "bucket\n"}, "bucket"),
        ({"presign_seconds": 0}, "presigned"),
        ({"max_body_bytes": 0}, "max_body_bytes"),
        ({"max_heartbeats_per_request": True}, "max_heartbeats_per_request"),
        ({"max_object_bytes": 1.5}, "max_object_bytes"),
    ],
)
def test_options_are_validated(tmp_path, kwargs, match):
    base = {"database_url": "sqlite://", "admin_token": ADMIN, "object_store": "s3"}
    with pytest.raises(UserError, match=match):
        FleetOptions(**{**base, **kwargs})
