"""Device tokens through the API: expiry, rotation, revocation, and the audit trail."""

from __future__ import annotations


def test_an_expired_token_is_refused_with_401(api, hb):
    token = api.register("f", "d1", expires_in_seconds=60)
    assert api.heartbeat(token, hb("h1")).status_code == 200
    api.clock[0] += 61
    answer = api.heartbeat(token, hb("h2"))
    assert answer.status_code == 401 and "expired" in answer.json()["detail"]
    assert api.rows("heartbeats") == 1
    for bad in (0, -5, 10**12, 1.5, "soon"):
        assert (
            api.admin("POST", "/v1/devices", json={"fleet": "f", "device": "d2", "expires_in_seconds": bad}).status_code
            == 422
        ), bad


def test_rotation_replaces_the_token_at_once(api, hb):
    old = api.register("f", "d1")
    answer = api.admin("POST", "/v1/devices/f/d1/rotate", json={"expires_in_seconds": 3600})
    assert answer.status_code == 200
    new = answer.json()["token"]
    assert new != old and answer.json()["expires_at"] == api.clock[0] + 3600
    assert api.heartbeat(old, hb("h1")).status_code == 401
    assert api.heartbeat(new, hb("h1")).status_code == 200
    assert api.admin("POST", "/v1/devices/f/d1/rotate").status_code == 200  # no body: no expiry
    assert api.admin("POST", "/v1/devices/f/nobody/rotate").status_code == 404
    assert api.device(new, "POST", "/v1/devices/f/d1/rotate").status_code in (401, 403)


def test_revocation_refuses_the_token_until_rotated(api, hb):
    token = api.register("f", "d1")
    other = api.register("f", "d2")
    assert api.admin("POST", "/v1/devices/f/d1/revoke").json() == {"fleet": "f", "device": "d1", "revoked": True}
    answer = api.heartbeat(token, hb("h1"))
    assert answer.status_code == 401 and "revoked" in answer.json()["detail"]
    assert api.device(token, "POST", "/v1/agent/uploads", json={"keys": ["m/x.jsonl"]}).status_code == 401
    assert api.heartbeat(other, hb("h1", device_name="d2")).status_code == 200  # the others are untouched
    assert api.admin("GET", "/v1/devices/f/d1").json()["revoked_at"] == api.clock[0]
    fresh = api.admin("POST", "/v1/devices/f/d1/rotate").json()["token"]
    assert api.heartbeat(fresh, hb("h1")).status_code == 200
    assert api.admin("POST", "/v1/devices/f/nobody/revoke").status_code == 404
    assert api.device(other, "POST", "/v1/devices/f/d1/revoke").status_code == 403


def test_the_audit_trail_says_who_did_what_and_when(api, hb):
    token = api.register("f", "d1", expires_in_seconds=600)
    api.admin("POST", "/v1/devices/f/d1/revoke")
    for _ in range(5):  # a burst of refused calls is one entry
        api.heartbeat(token, hb("h1"))
    api.clock[0] += 10
    api.admin("POST", "/v1/devices/f/d1/rotate")
    api.register("g", "d9")
    entries = api.admin("GET", "/v1/audit?fleet=f&device=d1").json()["entries"]
    assert [(e["action"], e["actor"]) for e in entries] == [
        ("register", "admin from testclient"),
        ("revoke", "admin from testclient"),
        ("auth-refused", "device f/d1"),
        ("rotate", "admin from testclient"),
    ]
    assert entries[0]["detail"].startswith("expires at") and entries[2]["detail"] == "revoked"
    assert entries[3]["at"] == entries[0]["at"] + 10
    assert len(api.admin("GET", "/v1/audit").json()["entries"]) == 5
    assert len(api.admin("GET", "/v1/audit?limit=2").json()["entries"]) == 2
    assert api.admin("GET", "/v1/audit?limit=0").status_code == 422
    assert api.device(token, "GET", "/v1/audit").status_code == 401
    # Only the hash of a token is stored.
    import sqlite3

    with sqlite3.connect(api.root / "f.db") as conn:
        dumped = "\n".join(conn.iterdump())
    assert token not in dumped
