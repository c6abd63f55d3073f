"""The fleet database on a real PostgreSQL server, in process and behind the service."""

from __future__ import annotations

import uuid

from edgekiln.fleet.bodies import Heartbeat
from edgekiln.fleet.records import RecordRef
from edgekiln.fleet.store import FleetStore

NOW = 1_800_000_000.0


def test_store_on_postgresql(postgres):
    store = FleetStore(postgres)
    store.create_schema()
    fleet = f"pg-{uuid.uuid4().hex[:8]}"
    try:
        token = store.register_device(fleet, "d1", now=NOW)
        device = store.authenticate(token)
        assert (device.fleet, device.name) == (fleet, "d1")
        hb = {
            "heartbeat_id": "h1",
            "timestamp": NOW,
            "agent_version": "0.1.0",
            "agent_metrics": [],
            "models": [
                {
                    "model_name": "cls",
                    "model_version": "1",
                    "latest_inference": NOW,
                    "latest_sample_time": NOW,
                    "model_metrics": [],
                }
            ],
            "faults": [],
        }
        first, second = Heartbeat(**hb).record(), Heartbeat(**dict(hb, heartbeat_id="h2", timestamp=NOW + 1)).record()
        assert store.add_heartbeats(device, [first, second], NOW + 2) == (2, 0)
        assert store.add_heartbeats(device, [first], NOW + 3) == (0, 1)
        records = [RecordRef(f"r{i}", "cls") for i in range(700)]  # more than one IN chunk
        assert store.record_batch(device, f"{fleet}/d1/b.jsonl", [], records, 10, NOW) == (700, 0)
        assert store.record_batch(device, f"{fleet}/d1/b.jsonl", [], records, 10, NOW) == (0, 700)
        report = store.fleet_report(fleet, now=NOW + 4, connected_seconds=60)
        assert report["device_stats"] == {"connected_device_count": 1, "registered_device_count": 1}
        assert report["model_stats"][0]["active_device_count"] == 1
        # Credentials and their audit on PostgreSQL.
        new = store.rotate_token(fleet, "d1", NOW + 5, expires_at=NOW + 60)
        assert store.authenticate(token) is None and store.authenticate(new).token_expires_at == NOW + 60
        store.revoke_token(fleet, "d1", NOW + 6)
        store.record_refusal(store.authenticate(new), "revoked", NOW + 7)
        assert [e.action for e in store.audit_entries(fleet)] == ["register", "rotate", "revoke", "auth-refused"]
    finally:
        store.close()


def test_fleet_service_on_postgresql(fleet_server, postgres):
    fleet = fleet_server(db_url=postgres)
    name = f"pg-{uuid.uuid4().hex[:8]}"
    token = fleet.register(name, "cam-1")
    hb = {
        "heartbeat_id": uuid.uuid4().hex,
        "timestamp": 1.0,
        "device_name": "cam-1",
        "device_fleet_name": name,
        "agent_version": "0.1.0",
        "agent_metrics": [{"dimension": "agent", "metric_name": "restarts", "value": 2, "timestamp": 1.0}],
        "models": [],
        "faults": [],
    }
    assert fleet.call("POST", "/v1/agent/heartbeats", {"heartbeats": [hb, hb]}, token=token) == {
        "accepted": 1,
        "duplicates": 1,
    }
    described = fleet.call("GET", f"/v1/devices/{name}/cam-1")
    assert described["agent_metrics"] == {"restarts": 2} and described["connected"] is True
    report = fleet.call("GET", f"/v1/fleets/{name}/report")
    assert report["agent_versions"] == [{"version": "0.1.0", "agent_count": 1}]
