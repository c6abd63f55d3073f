"""kill -9 of the agent process at random moments during capture and upload: after the
restarts, every record the application was told is stored is in S3 and in the fleet
database exactly once (counted by record id)."""

from __future__ import annotations

import random
import sqlite3
import threading
import time
import uuid

import numpy as np

from edgekiln.agents.client import AgentCallError, AgentClient

KILLS = 32
RETRYABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN", "INTERNAL")


class Sender(threading.Thread):
    """An application capturing without pause; a capture counts as sent once the agent
    answered OK, or ALREADY_EXISTS to a retry (the agent stored it, then died before
    answering)."""

    def __init__(self, socket) -> None:
        super().__init__(daemon=True)
        self.socket = socket
        self.sent: list[str] = []
        self.retries = 0
        self.already_exists = 0
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        small = np.arange(16, dtype=np.float32)
        large = np.random.default_rng(0).standard_normal(512).astype(np.float32)  # over the embed limit
        try:
            with AgentClient(self.socket, timeout=3) as client:
                while not self.done.is_set() and len(self.sent) < 50_000:
                    cid = str(uuid.uuid4())
                    tensor = large if len(self.sent) % 5 == 0 else small
                    for _ in range(1500):  # bounded: 30 s of retries for one record
                        try:
                            client.capture(
                                "cam",
                                capture_id=cid,
                                input_tensors={"x": tensor},
                                outputs={"meta": ("JSON", b'{"n": %d}' % len(self.sent))},
                            )
                            break
                        except AgentCallError as exc:
                            if exc.code == "ALREADY_EXISTS":
                                self.already_exists += 1
                                break
                            if exc.code not in RETRYABLE:
                                raise
                            self.retries += 1
                            time.sleep(0.02)
                    else:
                        raise AssertionError(f"capture {cid} was never accepted")
                    self.sent.append(cid)
                    time.sleep(0.005)  # an application sampling its inferences, not a flood
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test
            self.error = exc


def in_flight_batches(state_dir) -> int:
    db = sqlite3.connect(state_dir / "outbox" / "outbox.db", timeout=5)
    try:
        return db.execute("SELECT COUNT(*) FROM batches WHERE state='in-flight'").fetchone()[0]
    finally:
        db.close()


def test_kill9_loses_and_duplicates_nothing(fleet_server, agent_process, short_dir, s3_records):
    fleet = fleet_server()
    (short_dir / "token").write_text(fleet.register("plant", "dev-k"))
    config = {
        "device": {"name": "dev-k", "fleet": "plant"},
        "fleet": {
            "endpoint": fleet.endpoint,
            "token_file": str(short_dir / "token"),
            "heartbeat_period_seconds": 0.3,
            "retry_max_seconds": 0.3,
            "request_timeout_seconds": 5,
        },
        "agent": {
            "socket": str(short_dir / "a.sock"),
            "model_dir": str(short_dir),
            "state_dir": str(short_dir / "state"),
        },
        "capture": {
            "destination": "Cloud",
            "batch_size": 8,
            "push_period_seconds": 0.05,
            "periodic_upload_period_seconds": 0.1,
            "base64_embed_limit": 1024,
            "sync_writes": True,
        },
    }
    agent = agent_process(config)
    sender = Sender(agent.socket)
    sender.start()
    rng = random.Random(20261128)
    kills = during_upload = 0
    started = time.monotonic()
    for _ in range(KILLS):
        time.sleep(rng.uniform(0.1, 0.9))
        agent.kill9()
        kills += 1
        during_upload += in_flight_batches(short_dir / "state") > 0
        agent.start()
        assert sender.error is None, sender.error
    time.sleep(0.3)
    sender.done.set()
    sender.join(60)
    assert sender.error is None, sender.error
    sent = list(sender.sent)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # bounded wait for the backlog to drain
        stored = fleet.call("GET", "/v1/devices/plant/dev-k/captures")["records"]
        if len(stored) >= len(sent):
            break
        time.sleep(0.5)
    assert agent.stop() == 0
    in_s3 = s3_records(fleet.bucket, "plant/dev-k/")
    in_db = [r["record_id"] for r in fleet.call("GET", "/v1/devices/plant/dev-k/captures")["records"]]
    lost = set(sent) - set(in_s3)
    duplicated = len(in_s3) - len(set(in_s3))
    unexpected = set(in_s3) - set(sent)
    heartbeats = fleet.call("GET", "/v1/devices/plant/dev-k/heartbeats")["heartbeat_ids"]
    print(
        f"\nkill -9: {kills} kills in {time.monotonic() - started:.1f} s ({during_upload} with a batch in flight); "
        f"records sent {len(sent)}, in S3 {len(set(in_s3))}, lost {len(lost)}, duplicated {duplicated}, "
        f"unexpected {len(unexpected)}; in the fleet database {len(in_db)}; "
        f"{sender.already_exists} retries answered ALREADY_EXISTS, {sender.retries} retried calls; "
        f"{len(heartbeats)} heartbeats, {len(heartbeats) - len(set(heartbeats))} duplicated"
    )
    assert kills >= 30 and during_upload >= 3 and len(sent) > 300
    assert not lost and duplicated == 0 and not unexpected
    assert sorted(in_db) == sorted(sent)
    assert len(set(heartbeats)) == len(heartbeats)
    described = fleet.call("GET", "/v1/devices/plant/dev-k")
    assert described["agent_metrics"]["restarts"] == kills and described["agent_metrics"]["unclean_restarts"] == kills
