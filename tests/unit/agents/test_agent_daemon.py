"""The daemon's supervised loop, driven step by step with a fake clock."""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest

from devtools.servers import free_ports
from edgekiln.agents.client import AgentClient
from edgekiln.agents.daemon import Agent


@pytest.fixture
def started(agent_config, fake_clock, fake_loader):
    agents = []

    def start(**sections) -> Agent:
        agent = Agent(agent_config(**sections), clock=fake_clock, model_loader=fake_loader)
        agent.start()
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.stop(grace=0)


def test_disk_destination_delivers_batches_as_files(started, fake_clock, short_dir):
    agent = started(capture={"batch_size": 2, "push_period_seconds": 1, "periodic_upload_period_seconds": 5})
    with AgentClient(agent.config.agent.socket) as client:
        ids = [
            client.capture("m", input_tensors=[np.arange(4, dtype=np.float32)], inference_time=fake_clock.now)
            for _ in range(3)
        ]
        agent.step()
        assert [client.capture_status(i) for i in ids] == ["SUCCESS", "SUCCESS", "IN_PROGRESS"]
        fake_clock.advance(6)  # the partial batch goes after the periodic upload period
        agent.step()
        assert client.capture_status(ids[2]) == "SUCCESS"
    files = sorted((short_dir / "captures" / "fleet-a" / "dev-1" / "m").rglob("*.jsonl"))
    lines = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert sorted(line["record_id"] for line in lines) == sorted(ids)


def test_offline_fleet_queues_heartbeats_and_backs_off(started, fake_clock, short_dir):
    (short_dir / "token").write_text("t")
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    agent = started(
        fleet={
            "endpoint": dead,
            "token_file": str(short_dir / "token"),
            "heartbeat_period_seconds": 10,
            "retry_max_seconds": 30,
            "request_timeout_seconds": 1,
        },
        capture={"destination": "Cloud"},
    )
    with AgentClient(agent.config.agent.socket) as client:
        client.capture("m", capture_id="c1", input_tensors=[np.zeros(2, np.float32)], inference_time=fake_clock.now)
    delays = []
    for _ in range(6):
        agent.step()
        delays.append(agent._tasks["messages"].due - fake_clock.mono)
        fake_clock.advance(10)
    assert agent.outbox.message_counts().get("in-flight", 0) + agent.outbox.message_counts().get("ready", 0) == 6
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]  # exponential back-off while offline
    assert agent._tasks["batches"].failures >= 1
    assert agent.outbox.status("c1") in ("ready", "in-flight")  # queued, not lost


def test_heartbeat_has_agent_and_model_metrics(started, fake_clock, short_dir):
    agent = started()
    (short_dir / "models" / "m.tar.gz").write_bytes(b"x")
    with AgentClient(agent.config.agent.socket) as client:
        client.load_model("m.tar.gz", "m")
        client.predict("m", [np.ones((1, 4), np.float32)])
        client.capture("m", input_tensors=[np.ones(1, np.float32)], inference_time=fake_clock.now)
    agent.step()
    (message,) = agent.outbox.take_messages("heartbeat")
    hb = message.body
    assert hb["device_name"] == "dev-1" and hb["device_fleet_name"] == "fleet-a" and hb["agent_version"]
    metrics = {m["metric_name"]: m["value"] for m in hb["agent_metrics"]}
    for key in ("cpu_percent", "memory_rss_bytes", "uptime_seconds", "restarts", "capture_backlog_records"):
        assert key in metrics
    assert metrics["memory_rss_bytes"] > 10_000_000 and metrics["capture_backlog_records"] == 1
    (model,) = hb["models"]
    assert model["model_name"] == "m" and model["model_version"] == "7"
    assert model["latest_inference"] == fake_clock.now and model["latest_sample_time"] == fake_clock.now
    names = {m["metric_name"]: m["value"] for m in model["model_metrics"]}
    assert names["inference_count"] == 1 and names["error_count"] == 0 and names["latency_p50_ms"] >= 0


def test_restart_counts_unclean_stops_and_reloads_models(agent_config, fake_clock, fake_loader, short_dir):
    (short_dir / "models").mkdir(exist_ok=True)
    (short_dir / "models" / "m.tar.gz").write_bytes(b"x")
    config = agent_config()
    first = Agent(config, clock=fake_clock, model_loader=fake_loader)
    first.start()
    with AgentClient(config.agent.socket) as client:
        client.load_model("m.tar.gz", "m")
    first._server.stop(0).wait(2)  # dies without stop(): the running marker stays,
    first.outbox._db.close()
    first._lock_file.close()  # and the kernel drops the lock of a dead process
    second = Agent(config, clock=fake_clock, model_loader=fake_loader)
    second.start()
    try:
        assert (second.restarts, second.unclean_restarts) == (1, 1)
        assert [m.name for m in second.registry.list()] == ["m"]
    finally:
        second.stop(grace=0)
    third = Agent(config, clock=fake_clock, model_loader=fake_loader)
    third.start()
    third.stop(grace=0)
    assert (third.restarts, third.unclean_restarts) == (2, 1)


def test_corrupt_store_is_reported_in_the_next_heartbeat(agent_config, fake_clock, fake_loader):
    config = agent_config()
    agent = Agent(config, clock=fake_clock, model_loader=fake_loader)
    agent.start()
    agent.stop(grace=0)
    db = config.agent.state_dir / "outbox" / "outbox.db"
    db.write_bytes(os.urandom(4096) * 4)
    agent = Agent(config, clock=fake_clock, model_loader=fake_loader)
    agent.start()
    try:
        agent.step()
        bodies = [m.body for m in agent.outbox.take_messages("heartbeat")]
        faults = [f for b in bodies for f in b["faults"]]
        assert faults and faults[0]["kind"] == "store-corrupt"
        assert (config.agent.state_dir / "corrupt").is_dir()
    finally:
        agent.stop(grace=0)


def test_stop_flag_ends_the_loop(started):
    agent = started()
    thread = threading.Thread(target=agent.run)
    thread.start()
    time.sleep(0.3)
    start = time.monotonic()
    agent.request_stop()  # what the SIGTERM handler does: set a flag, nothing else
    thread.join(5)
    assert not thread.is_alive() and time.monotonic() - start < 1.0


def test_flush_flag_makes_tasks_due(started, fake_clock):
    agent = started()
    agent.step()
    assert agent._tasks["heartbeat"].due > fake_clock.mono
    agent.request_flush()
    agent.step()
    assert agent.outbox.message_counts()["ready"] == 2


def test_ttl_expiry_is_counted_and_reported(started, fake_clock):
    agent = started(capture={"ttl_seconds": 100})
    with AgentClient(agent.config.agent.socket) as client:
        cid = client.capture("m", input_tensors=[np.zeros(2, np.float32)], inference_time=fake_clock.now)
        agent.outbox.form_batches = lambda *a, **k: []  # keep it undelivered, as if offline
        fake_clock.advance(150)
        agent.step()
        assert client.capture_status(cid) == "FAILURE"
    bodies = [m.body for m in agent.outbox.take_messages("heartbeat")]
    metrics = {m["metric_name"]: m["value"] for m in bodies[-1]["agent_metrics"]}
    assert metrics["captures_expired"] == 1 and metrics["capture_backlog_records"] == 0


def test_a_second_agent_on_the_same_state_dir_is_refused(started, agent_config, fake_clock, fake_loader, short_dir):
    from edgekiln.errors import UserError

    first = started()
    other = agent_config(agent={"socket": str(short_dir / "other.sock")})
    second = Agent(other, clock=fake_clock, model_loader=fake_loader)
    with pytest.raises(UserError, match="state directory"):
        second.start()
    second.stop(grace=0)
    assert (first.state_dir / "running").exists()  # the first agent's marker stays


def test_the_loop_sleeps_between_tasks(started, fake_clock):
    agent = started()  # Disk destination, no fleet: nothing to send
    agent.step()
    assert agent.step() > 0  # the loop waits for the next task instead of spinning


@pytest.mark.parametrize("jump", [-365 * 86400.0, +30 * 365 * 86400.0])
def test_a_wall_clock_jump_does_not_stall_or_flood_heartbeats(started, fake_clock, jump):
    # A board without a real-time clock boots in 1970 (or at its build date) and jumps when
    # it learns the time: scheduling follows the monotonic clock, stamps the wall clock.
    agent = started(fleet={"heartbeat_period_seconds": 10})
    agent.step()
    fake_clock.jump_wall(jump)
    counts = []
    for _ in range(6):
        fake_clock.advance(5)
        agent.step()
        counts.append(agent.outbox.message_counts()["ready"])
    assert counts == [1, 2, 2, 3, 3, 4]  # one heartbeat per 10 s, before and after the jump
    bodies = [m.body for m in agent.outbox.take_messages("heartbeat")]
    assert bodies[-1]["timestamp"] == fake_clock.now  # what is sent carries the wall time


def _legacy_capture(agent, capture_id: str, model: str) -> None:
    """A record stored before names were checked at CaptureData (straight into the outbox)."""
    from edgekiln.agents import agent_pb2 as pb
    from edgekiln.agents.tensors import to_proto

    request = pb.CaptureDataRequest(
        model_name=model, capture_id=capture_id, input_tensors=[to_proto(np.zeros(2, np.float32), "x")]
    )
    request.inference_timestamp.seconds = 1_800_000_000
    agent.outbox.add_record(capture_id, model, request.SerializeToString())


def _refusing_sink(agent, status: int):
    """The fleet's answer to a key segment over its limit, around the real (Disk) sink."""
    from edgekiln.agents.reporter import FleetRejected

    real = agent.sink.deliver
    refused = []

    def deliver(encoded, models):
        if any(len(m) > 63 for m in models.values()):
            refused.append(encoded.key)
            raise FleetRejected(f"POST /v1/agent/uploads: {status} key segment too long", status)
        return real(encoded, models)

    agent.sink.deliver = deliver
    return refused


def test_a_batch_the_fleet_refuses_is_dead_lettered_and_later_captures_flow(started, fake_clock):
    agent = started(capture={"batch_size": 1, "push_period_seconds": 1})
    _legacy_capture(agent, "legacy", "m" * 200)
    refused = _refusing_sink(agent, 400)
    with AgentClient(agent.config.agent.socket) as client:
        ids = [
            client.capture("m", input_tensors=[np.ones(2, np.float32)], inference_time=fake_clock.now)
            for _ in range(10)
        ]
        for _ in range(15):
            agent.step()
            fake_clock.advance(1)
        assert [client.capture_status(i) for i in ids] == ["SUCCESS"] * 10
        assert client.capture_status("legacy") == "FAILURE"
    assert len(refused) == 1  # refused once, never retried
    assert (
        agent.outbox.dead_letter_dir
        / agent.outbox._conn().execute("SELECT batch_id FROM records WHERE record_id='legacy'").fetchone()[0]
        / "legacy"
    ).is_file()
    agent.queue_heartbeat()
    body = agent.outbox.take_messages("heartbeat")[-1].body
    metrics = {m["metric_name"]: m["value"] for m in body["agent_metrics"]}
    assert metrics["dead_letter_batches"] == 1 and metrics["dead_letter_records"] == 1
    assert type(metrics["dead_letter_batches"]) is int


def test_an_unauthorised_batch_is_retried_not_dead_lettered(started, fake_clock):
    agent = started(capture={"batch_size": 1, "push_period_seconds": 1})
    _legacy_capture(agent, "legacy", "m" * 200)
    refused = _refusing_sink(agent, 401)  # a token being rotated: try again later
    for _ in range(5):
        agent.step()
        fake_clock.advance(5)
    assert len(refused) >= 2 and agent.outbox.status("legacy") == "in-flight"
    assert agent.outbox.counters().get("dead_letter_batches", 0) == 0


def test_start_empties_the_model_work_directory(agent_config, fake_clock, fake_loader):
    config = agent_config()
    left = config.agent.state_dir / "work" / "m1-0123abcd" / "edgekiln-model-x"
    left.mkdir(parents=True)  # what a kill -9 left of an extracted artifact
    (left / "model.so").write_bytes(b"\x7fELF")
    agent = Agent(config, clock=fake_clock, model_loader=fake_loader)
    agent.start()
    try:
        assert list((config.agent.state_dir / "work").iterdir()) == []
        assert (config.agent.state_dir / "work").stat().st_mode & 0o777 == 0o700
    finally:
        agent.stop(grace=0)


def test_offline_heartbeats_stay_bounded_and_captures_keep_their_room(started, fake_clock, short_dir):
    # Five hours offline with a 1 MiB budget: heartbeats used to fill it until every CaptureData
    # answered RESOURCE_EXHAUSTED.
    (short_dir / "token").write_text("t")
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    agent = started(
        fleet={
            "endpoint": dead,
            "token_file": str(short_dir / "token"),
            "heartbeat_period_seconds": 30,
            "retry_max_seconds": 3600,
            "request_timeout_seconds": 0.2,
        },
        capture={
            "destination": "Cloud",
            "storage_limit_bytes": 1024 * 1024,
            "full_policy": "RejectNewData",
            "push_period_seconds": 3600,
        },
    )
    for _ in range(600):  # a heartbeat every 30 s for five hours
        agent._tasks["messages"].due = agent._tasks["batches"].due = float("inf")  # no network in this test
        fake_clock.advance(30)
        agent.step()
    counts = agent.outbox.message_counts()
    dropped = agent.outbox.counters()["heartbeats_dropped"]
    assert counts["ready"] == 256 and counts["ready"] + dropped == 600
    with AgentClient(agent.config.agent.socket) as client:
        for _ in range(20):
            client.capture("m", input_tensors=[np.zeros(4096, np.float32)], inference_time=fake_clock.now)
    assert agent.outbox.backlog()["records_ready"] == 20
    agent.queue_heartbeat()
    body = agent.outbox.take_messages("heartbeat", limit=1000)[-1].body
    assert {m["metric_name"]: m["value"] for m in body["agent_metrics"]}["heartbeats_dropped"] == dropped


class _Fleet:
    """A fleet client that takes at most ``per_post`` heartbeats (413 above) and refuses
    those whose id is in ``refused`` (422)."""

    def __init__(self, per_post: int, refused=()) -> None:
        self.per_post, self.refused, self.received = per_post, set(refused), []

    def post(self, path, body):
        from edgekiln.agents.reporter import FleetRejected

        beats = body["heartbeats"]
        if len(beats) > self.per_post:
            raise FleetRejected(f"POST {path}: 413 too many heartbeats", 413)
        if any(b["n"] in self.refused for b in beats):
            raise FleetRejected(f"POST {path}: 422 bad heartbeat", 422)
        self.received += [b["n"] for b in beats]
        return {}


def test_heartbeats_go_in_smaller_posts_after_413_and_refused_ones_are_dropped(started, fake_clock):
    agent = started()
    agent.client = _Fleet(per_post=7, refused={30})
    for n in range(60):
        agent.outbox.put_message("heartbeat", {"n": n})
    for _ in range(40):
        agent._send_messages()
    assert sorted(agent.client.received) == [n for n in range(60) if n != 30]  # none lost to the 413s
    assert agent._heartbeats_per_post <= 7
    assert agent.outbox.counters()["heartbeats_refused"] == 1 and agent.outbox.message_counts() == {"acked": 59}
