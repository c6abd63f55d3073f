"""The fleet database on SQLite: registration, credentials and their audit, idempotent
heartbeats and batches, the report, file modes."""

from __future__ import annotations

import os
import stat

import pytest

from edgekiln.fleet.bodies import Heartbeat
from edgekiln.fleet.database import normalize_url
from edgekiln.fleet.records import RecordRef
from edgekiln.fleet.store import Conflict, FleetStore, NotFound

NOW = 1_800_000_000.0


def heartbeat(hid: str, ts: float, *, version="0.1.0", models=(("cls", 5.0, 6.0),), faults=(), **extra):
    return Heartbeat(**heartbeat_json(hid, ts, version=version, models=models, faults=faults), **extra).record()


def heartbeat_json(hid: str, ts: float, *, version="0.1.0", models=(("cls", 5.0, 6.0),), faults=()):
    return {
        "heartbeat_id": hid,
        "timestamp": ts,
        "device_name": "d1",
        "device_fleet_name": "f",
        "agent_version": version,
        "agent_metrics": [{"dimension": "agent", "metric_name": "cpu_percent", "value": 3.5, "timestamp": ts}],
        "models": [
            {
                "model_name": n,
                "model_version": "1",
                "latest_inference": ts - a,
                "latest_sample_time": ts - b,
                "model_metrics": [
                    {"dimension": "model", "metric_name": "inference_count", "value": 9, "timestamp": ts}
                ],
            }
            for n, a, b in models
        ],
        "faults": list(faults),
    }


def test_registration_and_tokens(store):
    token = store.register_device("f", "d1", "first", now=NOW)
    assert store.authenticate(token).name == "d1" and store.authenticate("nope") is None
    with pytest.raises(Conflict):
        store.register_device("f", "d1")
    other = store.register_device("g", "d1")  # same name in another fleet is another device
    assert other != token and store.authenticate(other).fleet == "g"
    with pytest.raises(NotFound):
        store.device("f", "zz")


def test_heartbeats_are_idempotent_and_the_last_received_is_the_state(store):
    store.register_device("f", "d1")
    device = store.device("f", "d1")
    assert store.add_heartbeats(
        device, [heartbeat("h1", NOW), heartbeat("h2", NOW + 10, version="0.2.0")], NOW + 11
    ) == (2, 0)
    assert store.add_heartbeats(device, [heartbeat("h2", NOW + 10)], NOW + 12) == (0, 1)
    described = store.describe_device("f", "d1", now=NOW + 12, connected_seconds=60)
    assert described["agent_version"] == "0.2.0" and described["last_heartbeat_sent_at"] == NOW + 10
    # The board rebooted without a real-time clock: its clock says 1970, yet this heartbeat
    # is its newest state (ordering by the device's clock froze the state here).
    assert store.add_heartbeats(device, [heartbeat("h3", 42.0, version="0.3.0", dead_letter_batches=2)], NOW + 13) == (
        1,
        0,
    )
    described = store.describe_device("f", "d1", now=NOW + 14, connected_seconds=60)
    assert described["agent_version"] == "0.3.0" and described["heartbeats_received"] == 3
    assert described["last_heartbeat_at"] == NOW + 13 and described["connected"] is True
    assert described["last_heartbeat_sent_at"] == 42.0 and described["dead_letter_batches"] == 2
    assert described["agent_metrics"] == {"cpu_percent": 3.5}
    assert described["models"][0]["metrics"] == {"inference_count": 9.0}
    assert store.heartbeat_ids("f", "d1") == ["h1", "h2", "h3"]  # the order they reached the fleet
    # A later heartbeat without the count keeps the last one known.
    store.add_heartbeats(device, [heartbeat("h4", 50.0)], NOW + 15)
    assert store.describe_device("f", "d1", now=NOW + 15, connected_seconds=60)["dead_letter_batches"] == 2


def test_batches_deduplicate_by_record_id(store):
    store.register_device("f", "d1")
    device = store.device("f", "d1")
    records = [RecordRef(f"r{i}", "cls") for i in range(3)]
    assert store.record_batch(device, "f/d1/cls/day/b1.jsonl", [], records, 100, NOW) == (3, 0)
    assert store.record_batch(device, "f/d1/cls/day/b1.jsonl", [], records, 100, NOW) == (0, 3)
    listing = store.list_captures("f", "d1")
    assert len(listing["batches"]) == 1 and [r["record_id"] for r in listing["records"]] == ["r0", "r1", "r2"]


def test_fleet_report_fields(store):
    for name in ("d1", "d2", "d3"):
        store.register_device("f", name)
    store.add_heartbeats(store.device("f", "d1"), [heartbeat("a", NOW)], NOW)
    store.add_heartbeats(
        store.device("f", "d2"), [heartbeat("b", NOW, version="0.2.0", models=(("cls", 500.0, 500.0),))], NOW
    )
    store.add_heartbeats(store.device("f", "d3"), [heartbeat("c", NOW - 1000)], NOW - 1000)
    report = store.fleet_report("f", now=NOW + 1, connected_seconds=120)
    assert report["device_fleet_name"] == "f"
    assert report["device_stats"] == {"connected_device_count": 2, "registered_device_count": 3}
    assert report["agent_versions"] == [{"version": "0.1.0", "agent_count": 2}, {"version": "0.2.0", "agent_count": 1}]
    assert report["model_stats"] == [
        {
            "model_name": "cls",
            "model_version": "1",
            "offline_device_count": 1,
            "connected_device_count": 2,
            "active_device_count": 1,
            "sampling_device_count": 1,
        }
    ]
    with pytest.raises(NotFound):
        store.fleet_report("nobody", now=NOW, connected_seconds=1)


def test_faults_are_kept(store):
    store.register_device("f", "d1")
    store.add_heartbeats(
        store.device("f", "d1"),
        [
            heartbeat(
                "x", NOW, faults=[{"kind": "store-corrupt", "error": "file is not a database", "moved_to": "/var/x"}]
            )
        ],
        NOW,
    )
    (fault,) = store.describe_device("f", "d1", now=NOW, connected_seconds=60)["faults"]
    assert fault["kind"] == "store-corrupt" and fault["moved_to"] == "/var/x"


def test_postgres_urls_use_psycopg3():
    assert normalize_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"


def test_rotate_revoke_expiry_and_audit(store):
    token = store.register_device("f", "d1", now=NOW, expires_at=NOW + 60)
    assert store.authenticate(token).token_expires_at == NOW + 60
    new = store.rotate_token("f", "d1", NOW + 1)
    assert store.authenticate(token) is None  # the old token is gone at once
    assert store.authenticate(new).token_expires_at is None
    store.revoke_token("f", "d1", NOW + 2)
    assert store.authenticate(new).revoked_at == NOW + 2
    device = store.authenticate(new)
    store.record_refusal(device, "revoked", NOW + 3)
    store.record_refusal(device, "revoked", NOW + 4)  # a burst is one entry a minute
    again = store.rotate_token("f", "d1", NOW + 5, expires_at=NOW + 100)
    assert store.authenticate(again).revoked_at is None
    entries = store.audit_entries("f", "d1")
    assert [(e.at, e.action, e.actor) for e in entries] == [
        (NOW, "register", "admin"),
        (NOW + 1, "rotate", "admin"),
        (NOW + 2, "revoke", "admin"),
        (NOW + 3, "auth-refused", "device f/d1"),
        (NOW + 5, "rotate", "admin"),
    ]
    assert entries[0].detail == f"expires at {NOW + 60:.0f}" and entries[3].detail == "revoked"
    assert store.audit_entries("g") == [] and len(store.audit_entries(limit=2)) == 2
    with pytest.raises(NotFound):
        store.rotate_token("f", "nobody", NOW)
    with pytest.raises(NotFound):
        store.revoke_token("f", "nobody", NOW)


def test_database_file_is_private(tmp_path):
    os.umask(0o022)
    s = FleetStore(f"sqlite:///{tmp_path / 'new' / 'deeper' / 'fleet.db'}")
    s.create_schema()
    s.register_device("f", "d1")
    s.close()
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "new" / "deeper").stat().st_mode) == 0o700
    for name in os.listdir(tmp_path / "new" / "deeper"):  # fleet.db and, while open, -wal and -shm
        assert stat.S_IMODE((tmp_path / "new" / "deeper" / name).stat().st_mode) == 0o600, name
    loose = tmp_path / "loose.db"
    loose.touch(mode=0o644)
    FleetStore(f"sqlite:///{loose}").close()
    assert stat.S_IMODE(loose.stat().st_mode) == 0o600


def test_an_older_database_gains_the_new_columns(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE devices (id INTEGER PRIMARY KEY, fleet VARCHAR(63) NOT NULL, "
            "name VARCHAR(63) NOT NULL, description VARCHAR(1024) NOT NULL, token_hash VARCHAR(64) NOT NULL, "
            "registered_at FLOAT NOT NULL, agent_version VARCHAR(64), last_heartbeat_at FLOAT, "
            "last_heartbeat TEXT)"
        )
    s = FleetStore(f"sqlite:///{path}")
    s.create_schema()
    token = s.register_device("f", "d1", expires_at=NOW)
    assert s.authenticate(token).token_expires_at == NOW
    s.close()
