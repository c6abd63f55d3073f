"""Store and forward: offline periods, the disk budget, a corrupt store; asserted on what
is actually in S3 and in the fleet database."""

from __future__ import annotations

import collections
import time
from pathlib import Path

import numpy as np
import pytest

from devtools.servers import free_ports
from edgekiln.agents.client import AgentCallError, AgentClient


def heartbeat_recorder(agent) -> list[str]:
    """Record the id of every heartbeat the agent queues."""
    ids: list[str] = []
    put = agent.outbox.put_message

    def recording(kind, body):
        ids.append(body["heartbeat_id"])
        return put(kind, body)

    agent.outbox.put_message = recording
    # Those queued before the recorder was in place (the loop started with the agent).
    ids[:0] = [i for i in queued_heartbeat_ids(agent) if i not in ids]
    return ids


def predict_and_capture(client, model, x, seconds: float, sent: list[str], most: int = 500) -> int:
    """Predictions with capture for ``seconds``, at most ``most``; returns predictions made."""
    deadline, n = time.monotonic() + seconds, 0
    while time.monotonic() < deadline and n < most:
        (y,) = client.predict("mnv2", [x])
        sent.append(
            client.capture(
                "mnv2", input_tensors={model["inputs"][0]["name"]: x}, output_tensors={model["outputs"][0]["name"]: y}
            )
        )
        n += 1
    return n


def test_offline_then_online_delivers_every_record_exactly_once(
    agent_factory, fleet_server, mobilenet, s3_records, wait
):
    # The device is registered while the fleet is up, then the fleet goes away.
    fleet = fleet_server()
    token = fleet.register("plant", "dev-1")
    fleet.kill()
    agent = agent_factory(endpoint=fleet.endpoint, token=token, agent={"model_dirs": [str(Path(mobilenet).parent)]})
    queued = heartbeat_recorder(agent)
    sent: list[str] = []
    # A capture of one 224x224 image is about 0.6 MB, and the default disk budget (100 MiB)
    # drops the oldest beyond about 170 of them: at most 50 per phase keeps every record.
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    try:
        with AgentClient(agent.config.agent.socket) as client:
            model = client.load_model(mobilenet, "mnv2")
            predictions = predict_and_capture(client, model, x, 4.0, sent, 50)  # offline
            offline_heartbeats = len(queued)
            assert agent.outbox.backlog()["records_ready"] + agent.outbox.backlog()["records_in_flight"] == len(sent)
            fleet.start()  # online
            predictions += predict_and_capture(client, model, x, 1.5, sent, 50)
            fleet.kill()  # offline again, perhaps in the middle of a batch
            predictions += predict_and_capture(client, model, x, 2.0, sent, 50)
            fleet.start()  # and back
            wait("every capture to be delivered", lambda: all(client.capture_status(c) == "SUCCESS" for c in sent), 90)
        agent._tasks["heartbeat"].due = float("inf")  # no new heartbeats from here on
        expected = list(queued)
        wait(
            "every queued heartbeat at the fleet",
            lambda: set(expected) <= set(fleet.call("GET", "/v1/devices/plant/dev-1/heartbeats")["heartbeat_ids"]),
            60,
        )
        in_s3 = s3_records(fleet.bucket, "plant/dev-1/")
        in_db = [r["record_id"] for r in fleet.call("GET", "/v1/devices/plant/dev-1/captures")["records"]]
        at_fleet = fleet.call("GET", "/v1/devices/plant/dev-1/heartbeats")["heartbeat_ids"]
        print(
            f"\noffline/online: {predictions} predictions, {len(sent)} captures sent, {len(set(in_s3))} in S3 "
            f"({len(in_s3) - len(set(in_s3))} duplicated), {len(in_db)} in the fleet database; "
            f"{len(expected)} heartbeats queued ({offline_heartbeats} while offline), {len(at_fleet)} at the fleet"
        )
        assert offline_heartbeats >= 4 and len(sent) >= 6
        assert sorted(in_s3) == sorted(sent)  # every record, exactly once
        assert sorted(in_db) == sorted(sent)
        assert sorted(at_fleet) == sorted(expected) and len(set(at_fleet)) == len(at_fleet)
        described = fleet.call("GET", "/v1/devices/plant/dev-1")
        assert described["models"][0]["metrics"]["inference_count"] == predictions
    finally:
        fleet.stop()


def queued_heartbeat_ids(agent) -> list[str]:
    """Ids of the heartbeats in the agent's outbox (read straight from its database)."""
    import json
    import zlib

    rows = agent.outbox._conn().execute("SELECT body FROM messages WHERE kind='heartbeat'").fetchall()
    return [json.loads(zlib.decompress(r[0]))["heartbeat_id"] for r in rows]


def _disk_use(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_ten_times_the_budget_offline_keeps_to_it(agent_factory, fleet_server, s3_records, wait):
    limit = 1024 * 1024
    port = free_ports(1)[0]
    agent = agent_factory(
        endpoint=f"http://127.0.0.1:{port}",
        token="not-yet",
        capture={"storage_limit_bytes": limit, "full_policy": "OverwriteOldest", "buffer_size": 100000},
        fleet={"heartbeat_period_seconds": 0.1},
    )
    queued = heartbeat_recorder(agent)
    store = agent.config.agent.state_dir / "outbox"
    payload = np.random.default_rng(2).standard_normal(4096).astype(np.float32)  # 16 KiB a record
    sent, peak = [], 0
    with AgentClient(agent.config.agent.socket) as client:
        while len(sent) * payload.nbytes < 10 * limit:
            sent.append(client.capture("cam", input_tensors=[payload]))
            peak = max(peak, _disk_use(store))
        agent._tasks["heartbeat"].due = float("inf")  # hold heartbeats while counting
        time.sleep(0.3)
        counters = agent.outbox.counters()
        live = agent.outbox.backlog()
        heartbeats_queued = len(queued)
        stored = queued_heartbeat_ids(agent)
        print(
            f"\nbudget: {len(sent)} captures of {payload.nbytes} B against {limit} B; peak store size {peak} B; "
            f"{counters.get('overwritten', 0)} overwritten; {heartbeats_queued} heartbeats queued, "
            f"{len(stored)} kept, {counters.get('heartbeats_dropped', 0)} oldest dropped"
        )
        assert peak <= limit
        assert counters["overwritten"] == len(sent) - live["records_ready"] - live["records_in_flight"]
        assert counters["overwritten"] > 8 * len(sent) // 10
        # Heartbeats are a bounded queue of their own: the newest are kept, the oldest counted.
        assert heartbeats_queued >= 5 and set(stored) <= set(queued)
        assert queued[-len(stored) :] == stored
        assert len(stored) + counters.get("heartbeats_dropped", 0) == heartbeats_queued
        agent._tasks["heartbeat"].due = 0
        statuses = collections.Counter(client.capture_status(c) for c in sent)
        assert statuses == {"FAILURE": counters["overwritten"], "IN_PROGRESS": len(sent) - counters["overwritten"]}
        # Back online: what is left arrives, the overwritten records do not, and the fleet is told.
        fleet = fleet_server(port=port)
        (agent.config.fleet.token_file).write_text(fleet.register("plant", "dev-1"))
        wait(
            "the backlog to drain",
            lambda: (
                all(client.capture_status(c) in ("SUCCESS", "FAILURE") for c in sent)
                and agent.outbox.backlog()["messages"] == 0
            ),
            60,
        )
    delivered = [c for c in sent if agent.outbox.status(c) == "acked"]
    assert sorted(s3_records(fleet.bucket, "plant/dev-1/")) == sorted(delivered)
    assert len(delivered) == live["records_ready"] + live["records_in_flight"]
    metrics = wait(
        "a heartbeat that reports the overwrites",
        lambda: (lambda m: m if m.get("captures_overwritten") == counters["overwritten"] else None)(
            fleet.call("GET", "/v1/devices/plant/dev-1")["agent_metrics"]
        ),
        30,
    )
    assert metrics["capture_store_limit_bytes"] == limit
    assert len(fleet.call("GET", "/v1/devices/plant/dev-1/heartbeats")["heartbeat_ids"]) >= len(stored)


def test_reject_new_data_refuses_and_counts(agent_factory):
    limit = 1024 * 1024
    agent = agent_factory(
        capture={
            "storage_limit_bytes": limit,
            "full_policy": "RejectNewData",
            "periodic_upload": False,
            "batch_size": 100000,
            "buffer_size": 100000,
        }
    )
    store = agent.config.agent.state_dir / "outbox"
    payload = np.zeros(4096, np.float32)
    codes = collections.Counter()
    with AgentClient(agent.config.agent.socket) as client:
        for i in range(10 * limit // payload.nbytes):
            try:
                client.capture("cam", capture_id=f"r{i}", input_tensors=[payload])
                codes["OK"] += 1
            except AgentCallError as exc:
                codes[exc.code] += 1
            assert _disk_use(store) <= limit
        assert client.capture_status("r0") == "IN_PROGRESS"
        with pytest.raises(AgentCallError):
            client.capture_status(f"r{10 * limit // payload.nbytes - 1}")  # never stored
    assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"} and codes["RESOURCE_EXHAUSTED"] > codes["OK"] * 5
    assert agent.outbox.counters()["rejected"] == codes["RESOURCE_EXHAUSTED"]
    agent.queue_heartbeat()
    body = agent.outbox.take_messages("heartbeat", limit=1000)[-1].body
    metrics = {m["metric_name"]: m["value"] for m in body["agent_metrics"]}
    assert metrics["captures_rejected"] == codes["RESOURCE_EXHAUSTED"]


def test_a_long_name_and_a_refused_batch_do_not_stop_delivery(agent_factory, fleet_server, s3_records, wait):
    fleet = fleet_server()
    agent = agent_factory(endpoint=fleet.endpoint, token=fleet.register("plant", "dev-1"))
    x = np.arange(8, dtype=np.float32)
    with AgentClient(agent.config.agent.socket) as client:
        with pytest.raises(AgentCallError) as info:  # the fleet would refuse it as a key segment
            client.capture("m" * 200, capture_id="too-long", input_tensors={"x": x})
        assert info.value.code == "INVALID_ARGUMENT" and "1-63" in info.value.details
        # A record an older agent stored with such a name: the fleet answers 400 to its batch.
        legacy = _capture_request("legacy-1", "n" * 200, x)
        agent.outbox.add_record("legacy-1", "n" * 200, legacy.SerializeToString())
        started = time.monotonic()
        sent = [client.capture("cam", input_tensors={"x": x}) for _ in range(10)]
        wait("10 captures delivered", lambda: all(client.capture_status(c) == "SUCCESS" for c in sent), 30)
        elapsed = time.monotonic() - started
        wait("the refused batch in dead-letter", lambda: client.capture_status("legacy-1") == "FAILURE", 10)
        with pytest.raises(AgentCallError):
            client.capture_status("too-long")
    print(f"\ndead-letter: 10 captures delivered {elapsed:.1f} s after a refused batch")
    assert sorted(s3_records(fleet.bucket, "plant/dev-1/")) == sorted(sent)
    kept = list((agent.outbox.dead_letter_dir).rglob("legacy-1"))
    assert len(kept) == 1 and kept[0].read_bytes() == legacy.SerializeToString()
    metrics = wait(
        "a heartbeat that reports the dead letter",
        lambda: (lambda m: m if m.get("dead_letter_batches") == 1 else None)(
            fleet.call("GET", "/v1/devices/plant/dev-1")["agent_metrics"]
        ),
        30,
    )
    assert metrics["dead_letter_records"] == 1


def _capture_request(capture_id: str, model: str, x):
    from edgekiln.agents import agent_pb2 as pb
    from edgekiln.agents.tensors import to_proto

    request = pb.CaptureDataRequest(model_name=model, capture_id=capture_id, input_tensors=[to_proto(x, "x")])
    request.inference_timestamp.seconds = int(time.time())
    return request
