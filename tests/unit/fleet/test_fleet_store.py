"""The fleet database on SQLite: registration, idempotent heartbeats and batches, the report."""

from __future__ import annotations

import pytest

from edgekiln.fleet.store import Conflict, FleetStore, NotFound, normalize_url

NOW = 1_800_000_000.0


def heartbeat(hid: str, ts: float, *, version="0.1.0", models=(("cls", 5.0, 6.0),), faults=()):
    return {"heartbeat_id": hid, "timestamp": ts, "device_name": "d1", "device_fleet_name": "f",
            "agent_version": version,
            "agent_metrics": [{"dimension": "agent", "metric_name": "cpu_percent", "value": 3.5, "timestamp": ts}],
            "models": [{"model_name": n, "model_version": "1", "latest_inference": ts - a, "latest_sample_time": ts - b,
                        "model_metrics": [{"dimension": "model", "metric_name": "inference_count", "value": 9,
                                           "timestamp": ts}]} for n, a, b in models],
            "faults": list(faults)}


@pytest.fixture
def store(tmp_path):
    s = FleetStore(f"sqlite:///{tmp_path / 'fleet.db'}")
    s.create_schema()
    yield s
    s.close()


def test_registration_and_tokens(store):
    token = store.register_device("f", "d1", "first", now=NOW)
    assert store.authenticate(token).name == "d1" and store.authenticate("nope") is None
    with pytest.raises(Conflict):
        store.register_device("f", "d1")
    other = store.register_device("g", "d1")  # same name in another fleet is another device
    assert other != token and store.authenticate(other).fleet == "g"
    with pytest.raises(NotFound):
        store.device("f", "zz")


def test_heartbeats_are_idempotent_and_late_ones_do_not_overwrite_state(store):
    store.register_device("f", "d1")
    device = store.device("f", "d1")
    assert store.add_heartbeats(device, [heartbeat("h1", NOW), heartbeat("h2", NOW + 10, version="0.2.0")], NOW + 11) \
        == (2, 0)
    assert store.add_heartbeats(device, [heartbeat("h2", NOW + 10)], NOW + 12) == (0, 1)
    # A heartbeat queued offline arrives after a newer one: history grows, state stays newest.
    assert store.add_heartbeats(device, [heartbeat("h0", NOW - 100, version="0.0.9")], NOW + 13) == (1, 0)
    described = store.describe_device("f", "d1", now=NOW + 14, connected_seconds=60)
    assert described["agent_version"] == "0.2.0" and described["heartbeats_received"] == 3
    assert described["last_heartbeat_at"] == NOW + 13 and described["connected"] is True
    assert described["agent_metrics"] == {"cpu_percent": 3.5}
    assert described["models"][0]["metrics"] == {"inference_count": 9}
    assert store.heartbeat_ids("f", "d1") == ["h0", "h1", "h2"]


def test_batches_deduplicate_by_record_id(store):
    store.register_device("f", "d1")
    device = store.device("f", "d1")
    records = [{"record_id": f"r{i}", "model_name": "cls"} for i in range(3)]
    assert store.record_batch(device, "f/d1/cls/day/b1.jsonl", [], records, 100, NOW) == (3, 0)
    assert store.record_batch(device, "f/d1/cls/day/b1.jsonl", [], records, 100, NOW) == (0, 3)
    listing = store.list_captures("f", "d1")
    assert len(listing["batches"]) == 1 and [r["record_id"] for r in listing["records"]] == ["r0", "r1", "r2"]


def test_fleet_report_fields(store):
    for name in ("d1", "d2", "d3"):
        store.register_device("f", name)
    store.add_heartbeats(store.device("f", "d1"), [heartbeat("a", NOW)], NOW)
    store.add_heartbeats(store.device("f", "d2"), [heartbeat("b", NOW, version="0.2.0",
                                                             models=(("cls", 500.0, 500.0),))], NOW)
    store.add_heartbeats(store.device("f", "d3"), [heartbeat("c", NOW - 1000)], NOW - 1000)
    report = store.fleet_report("f", now=NOW + 1, connected_seconds=120)
    assert report["device_fleet_name"] == "f"
    assert report["device_stats"] == {"connected_device_count": 2, "registered_device_count": 3}
    assert report["agent_versions"] == [{"version": "0.1.0", "agent_count": 2}, {"version": "0.2.0", "agent_count": 1}]
    assert report["model_stats"] == [{"model_name": "cls", "model_version": "1", "offline_device_count": 1,
                                      "connected_device_count": 2, "active_device_count": 1,
                                      "sampling_device_count": 1}]
    with pytest.raises(NotFound):
        store.fleet_report("nobody", now=NOW, connected_seconds=1)


def test_faults_are_kept(store):
    store.register_device("f", "d1")
    store.add_heartbeats(store.device("f", "d1"), [heartbeat("x", NOW, faults=[
        {"kind": "store-corrupt", "error": "file is not a database", "moved_to": "/var/x"}])], NOW)
    (fault,) = store.describe_device("f", "d1", now=NOW, connected_seconds=60)["faults"]
    assert fault["kind"] == "store-corrupt" and fault["moved_to"] == "/var/x"


def test_postgres_urls_use_psycopg3():
    assert normalize_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"
