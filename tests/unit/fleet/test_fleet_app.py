"""The fleet HTTP API in process (local object store): auth, isolation, presigned PUTs."""

from __future__ import annotations

import warnings

import pytest

import fastapi  # noqa: F401 - an installed extra: missing must fail, not skip
import httpx  # noqa: F401 - an installed extra: missing must fail, not skip

with warnings.catch_warnings():  # newer Starlette prefers httpx2 for its test client; either works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402

from edgekiln.errors import UserError  # noqa: E402
from edgekiln.fleet.app import FleetOptions, create_app  # noqa: E402

ADMIN = "admin-token-0123456789"


@pytest.fixture
def fleet(tmp_path):
    options = FleetOptions(database_url=f"sqlite:///{tmp_path / 'f.db'}", admin_token=ADMIN, object_store="local",
                           objects_dir=tmp_path / "objects", presign_seconds=60)
    with TestClient(create_app(options), base_url="http://127.0.0.1:9") as client:
        yield client, tmp_path


def admin(client, method, path, **kw):
    return client.request(method, path, headers={"Authorization": f"Bearer {ADMIN}"}, **kw)


def as_device(client, token, method, path, **kw):
    return client.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kw)


def register(client, fleet, device):
    answer = admin(client, "POST", "/v1/devices", json={"fleet": fleet, "device": device})
    assert answer.status_code == 201, answer.text
    return answer.json()["token"]


def test_operator_routes_need_the_admin_token(fleet):
    client, _ = fleet
    token = register(client, "f", "d1")
    assert client.get("/v1/devices").status_code == 401
    assert as_device(client, "wrong", "GET", "/v1/devices").status_code == 401
    assert as_device(client, token, "GET", "/v1/devices").status_code == 403
    assert as_device(client, token, "GET", "/v1/devices/f/d1").status_code == 403
    assert admin(client, "POST", "/v1/devices", json={"fleet": "f", "device": "d1"}).status_code == 409
    assert admin(client, "POST", "/v1/devices", json={"fleet": "f", "device": "bad name"}).status_code == 422
    assert admin(client, "GET", "/v1/devices/f/nobody").status_code == 404
    assert [d["device"] for d in admin(client, "GET", "/v1/devices?fleet=f").json()["devices"]] == ["d1"]


def test_heartbeats_need_a_device_token_of_that_device(fleet):
    client, _ = fleet
    token = register(client, "f", "d1")
    hb = {"heartbeat_id": "h1", "timestamp": 1.0, "device_name": "d1", "device_fleet_name": "f", "agent_version": "1",
          "agent_metrics": [], "models": [], "faults": []}
    assert client.post("/v1/agent/heartbeats", json={"heartbeats": [hb]}).status_code == 401
    assert as_device(client, ADMIN, "POST", "/v1/agent/heartbeats", json={"heartbeats": [hb]}).status_code == 401
    assert as_device(client, token, "POST", "/v1/agent/heartbeats", json={"heartbeats": [hb]}).json() == {
        "accepted": 1, "duplicates": 0}
    assert as_device(client, token, "POST", "/v1/agent/heartbeats", json={"heartbeats": [hb]}).json() == {
        "accepted": 0, "duplicates": 1}
    spoof = dict(hb, heartbeat_id="h2", device_name="d2")
    assert as_device(client, token, "POST", "/v1/agent/heartbeats", json={"heartbeats": [spoof]}).status_code == 403
    assert as_device(client, token, "POST", "/v1/agent/heartbeats",
                     json={"heartbeats": [{"timestamp": 1}]}).status_code == 422
    assert as_device(client, token, "POST", "/v1/agent/heartbeats", json={"nope": 1}).status_code == 422


def test_uploads_stay_in_the_devices_prefix(fleet):
    client, root = fleet
    t1, t2 = register(client, "f", "d1"), register(client, "f", "d2")
    answer = as_device(client, t1, "POST", "/v1/agent/uploads", json={"keys": ["m/2027-01-01/b.jsonl"]}).json()
    assert answer["prefix"] == "f/d1/"
    url = answer["urls"]["m/2027-01-01/b.jsonl"]
    assert "/v1/objects/f/d1/m/2027-01-01/b.jsonl?" in url
    for bad in ("../d2/x", "/abs", "a//b", "a/../../d2/x", "a b"):
        assert as_device(client, t1, "POST", "/v1/agent/uploads", json={"keys": [bad]}).status_code == 400, bad
    path = url.split("127.0.0.1:9", 1)[1]
    assert client.put(path, content=b"line\n").status_code == 200
    assert (root / "objects" / "f" / "d1" / "m" / "2027-01-01" / "b.jsonl").read_bytes() == b"line\n"
    # The signature covers the key: the same URL cannot be pointed at d2's prefix.
    assert client.put(path.replace("/f/d1/", "/f/d2/"), content=b"evil").status_code == 403
    assert client.put(path.replace("signature=", "signature=0"), content=b"evil").status_code == 403
    assert not (root / "objects" / "f" / "d2").exists()
    # d2 cannot note d1's batch as its own: keys are relative to the caller's prefix.
    body = {"key": "m/2027-01-01/b.jsonl", "records": [{"record_id": "r1", "model_name": "m"}]}
    assert as_device(client, t2, "POST", "/v1/agent/captures", json=body).status_code == 409
    assert as_device(client, t1, "POST", "/v1/agent/captures", json=body).json() == {"new": 1, "duplicates": 0}
    assert as_device(client, t1, "POST", "/v1/agent/captures", json=body).json() == {"new": 0, "duplicates": 1}
    listing = admin(client, "GET", "/v1/devices/f/d1/captures").json()
    assert listing["records"] == [{"record_id": "r1", "model_name": "m", "key": "f/d1/m/2027-01-01/b.jsonl"}]
    assert listing["objects"] == [{"key": "f/d1/m/2027-01-01/b.jsonl", "size": 5}]


def test_expired_presigned_url_is_refused(tmp_path):
    clock = [1000.0]
    options = FleetOptions(database_url=f"sqlite:///{tmp_path / 'f.db'}", admin_token=ADMIN, object_store="local",
                           objects_dir=tmp_path / "objects", presign_seconds=5)
    with TestClient(create_app(options, clock=lambda: clock[0]), base_url="http://h") as client:
        token = register(client, "f", "d1")
        url = as_device(client, token, "POST", "/v1/agent/uploads", json={"keys": ["k.jsonl"]}).json()["urls"][
            "k.jsonl"]
        clock[0] = 1e12
        assert client.put(url.split("http://h", 1)[1], content=b"x").status_code == 403


@pytest.mark.parametrize("kwargs,match", [
    ({"database_url": ""}, "database URL"),
    ({"admin_token": "short"}, "admin token"),
    ({"object_store": "ftp"}, "object store"),
    ({"object_store": "local", "objects_dir": None}, "objects-dir"),
    ({"s3_bucket": "Bad_Bucket"}, "bucket"),
    ({"presign_seconds": 0}, "presigned"),
])
def test_options_are_validated(tmp_path, kwargs, match):
    base = {"database_url": "sqlite://", "admin_token": ADMIN, "object_store": "s3"}
    with pytest.raises(UserError, match=match):
        FleetOptions(**{**base, **kwargs})
