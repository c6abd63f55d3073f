"""kill -9, then a damaged or deleted write-ahead log: no capture the agent acknowledged is
lost. Its row may be gone with the log, its payload is not: it is delivered, or kept in the
quarantine directory, counted and reported to the fleet."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from devtools.servers import free_ports
from edgekiln.agents.client import AgentCallError, AgentClient


def _damage(wal, how: str) -> None:
    if how == "deleted":
        wal.unlink()
        return
    with open(wal, "r+b") as fh:  # the header is 32 bytes; each frame has a 24-byte header
        fh.seek(0 if how == "header" else 32 + 24 + 512)
        fh.write(os.urandom(32))


@pytest.mark.parametrize("how", ["header", "frame", "deleted"])
def test_a_damaged_wal_loses_no_acknowledged_capture(fleet_server, agent_process, short_dir, s3_records, how):
    port = free_ports(1)[0]
    (short_dir / "token").write_text("not-yet")
    state = short_dir / "state"
    config = {
        "device": {"name": "dev-w", "fleet": "plant"},
        "fleet": {
            "endpoint": f"http://127.0.0.1:{port}",
            "token_file": str(short_dir / "token"),
            "heartbeat_period_seconds": 0.3,
            "retry_max_seconds": 0.3,
        },
        "agent": {"socket": str(short_dir / "w.sock"), "model_dir": str(short_dir), "state_dir": str(state)},
        "capture": {
            "destination": "Cloud",
            "batch_size": 8,
            "push_period_seconds": 0.05,
            "periodic_upload_period_seconds": 0.1,
            "sync_writes": True,
        },
    }
    agent = agent_process(config)
    sent = []
    with AgentClient(agent.socket) as client:  # the fleet is away: every capture stays queued
        for i in range(50):
            sent.append(client.capture("cam", input_tensors={"x": np.full(16, i, np.float32)}))
    agent.kill9()
    wal = state / "outbox" / "outbox.db-wal"
    assert wal.stat().st_size > 4096  # the captures' rows are (partly) only in the log
    _damage(wal, how)
    fleet = fleet_server(port=port)
    (short_dir / "token").write_text(fleet.register("plant", "dev-w"))
    agent.start()
    corrupt = state / "corrupt"
    kept = {p.name: p for p in corrupt.rglob("*") if p.is_file()} if corrupt.is_dir() else {}
    with AgentClient(agent.socket) as client:
        known = []
        for cid in sent:
            try:
                client.capture_status(cid)
                known.append(cid)
            except AgentCallError as exc:
                assert exc.code == "NOT_FOUND"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(client.capture_status(c) == "SUCCESS" for c in known):
            time.sleep(0.3)
        assert all(client.capture_status(c) == "SUCCESS" for c in known)
    in_s3 = s3_records(fleet.bucket, "plant/dev-w/")
    quarantined = sorted(set(sent) & set(kept))
    print(
        f"\ndamaged WAL ({how}): {len(sent)} acknowledged, {len(known)} known after restart and delivered, "
        f"{len(quarantined)} kept in quarantine, {len(set(sent) - set(in_s3) - set(kept))} lost"
    )
    assert sorted(in_s3) == sorted(known)  # delivered once each
    assert set(in_s3) | set(kept) >= set(sent)  # nothing acknowledged is lost
    if quarantined:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            described = fleet.call("GET", "/v1/devices/plant/dev-w")
            if described["faults"] and described["agent_metrics"].get("captures_quarantined") == len(quarantined):
                break
            time.sleep(0.3)
        assert described["faults"][0]["kind"] == "store-orphans"
        assert described["faults"][0]["count"] == len(quarantined)
        assert described["agent_metrics"]["captures_quarantined"] == len(quarantined)
    assert agent.stop() == 0
