"""``fleet serve --workers 2`` on PostgreSQL and SeaweedFS: any worker answers any request,
and the fleet-load benchmark runs end to end (a few devices for a few seconds)."""

from __future__ import annotations

import importlib.util
import json
import sys
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _post(fleet, path: str, token: str, body: dict) -> dict:
    return fleet.call("POST", path, body, token=token)


def test_workers_share_everything_through_the_database(fleet_server, postgres):
    fleet = fleet_server(db_url=postgres, extra_args=("--workers", "2"))
    name = f"w-{uuid.uuid4().hex[:8]}"
    tokens = [fleet.register(name, f"cam-{i}") for i in range(3)]
    # urllib opens a connection per request, so the requests spread over both workers.
    for round_ in range(4):
        for token in tokens:
            hb = {"heartbeat_id": f"h{round_}", "timestamp": 1_800_000_000.0 + round_, "agent_version": "0.1.0"}
            assert _post(fleet, "/v1/agent/heartbeats", token, {"heartbeats": [hb]}) == {"accepted": 1, "duplicates": 0}
            key = f"cls/b{round_}.jsonl"
            url = _post(fleet, "/v1/agent/uploads", token, {"keys": [key]})["urls"][key]
            with urllib.request.urlopen(urllib.request.Request(url, data=b"x" * 100, method="PUT"), timeout=30) as r:
                assert r.status == 200
            body = {"key": key, "bytes": 100, "records": [{"record_id": f"r{round_}"}]}
            assert _post(fleet, "/v1/agent/captures", token, body) == {"new": 1, "duplicates": 0}
    # A resent heartbeat is a duplicate whichever worker gets it.
    again = {"heartbeat_id": "h0", "timestamp": 1_800_000_000.0}
    assert _post(fleet, "/v1/agent/heartbeats", tokens[0], {"heartbeats": [again]}) == {"accepted": 0, "duplicates": 1}
    described = fleet.call("GET", f"/v1/devices/{name}/cam-1")
    assert described["heartbeats_received"] == 4
    assert described["captures"] == {"records": 4, "batches": 4, "bytes": 400}
    report = fleet.call("GET", f"/v1/fleets/{name}/report")
    assert report["device_stats"]["registered_device_count"] == 3
    assert "2 workers" in fleet.log_file.read_text()


def test_fleet_load_benchmark_smoke(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("fleet_load", ROOT / "benchmarks" / "fleet_load.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "fleet_load", module)  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    out = tmp_path / "fleet_load.json"
    argv = ["--devices", "6", "--db", "sqlite", "--duration", "4", "--interval", "1", "--capture-every", "2"]
    argv += ["--overview-devices", "30", "--overview-heartbeats", "3000", "--overview-repeats", "2", "--out", str(out)]
    assert module.main(argv) == 0
    result = json.loads(out.read_text())
    (run,) = result["load"]
    assert run["errors"] == {}
    # 6 devices, one heartbeat a second for 4 s, each at its own phase.
    assert 18 <= run["heartbeats"] <= 30
    assert set(run["latency_ms"]) == {"heartbeat", "upload-url", "put-object", "capture"}
    assert run["latency_ms"]["capture"]["count"] == run["latency_ms"]["put-object"]["count"] > 0
    (overview,) = result["overview"]
    assert (overview["rows"], overview["online"], overview["stored_heartbeats"]) == (30, 20, 3000)
