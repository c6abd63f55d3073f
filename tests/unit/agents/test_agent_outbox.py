"""The outbox: explicit states, resumption after restart, budget and policies, TTL, corruption."""

from __future__ import annotations

import os
import sqlite3

import pytest

from edgekiln.agents import outbox as ob


def make(tmp_path, clock, **kw) -> ob.Outbox:
    kw.setdefault("storage_limit_bytes", 4 * 1024 * 1024)
    kw.setdefault("max_records", 1000)
    box = ob.Outbox(tmp_path / "outbox", clock=clock, durable=False, **kw)
    box.open()
    return box


def test_record_states_ready_inflight_acked(tmp_path, fake_clock):
    box = make(tmp_path, fake_clock)
    for i in range(5):
        box.add_record(f"r{i}", "m", b"x" * 10)
    assert box.status("r0") == ob.READY
    with pytest.raises(ob.CaptureExists):
        box.add_record("r0", "m", b"again")
    batches = box.form_batches(2, flush_after=None)
    assert [len(b.record_ids) for b in batches] == [2, 2]  # the partial batch waits
    assert box.status("r0") == ob.IN_FLIGHT and box.status("r4") == ob.READY
    box.ack_batch(batches[0].batch_id)
    assert box.status("r0") == ob.ACKED and not (box.records_dir / "r0").exists()
    with pytest.raises(ob.CaptureExists):  # a delivered id stays known
        box.add_record("r0", "m", b"again")
    fake_clock.advance(10)
    late = box.form_batches(2, flush_after=5)
    assert [b.record_ids for b in late] == [("r4",)]
    assert box.counters()["delivered"] == 2


def test_batch_key_is_deterministic_and_partitioned_by_model_and_day(tmp_path, fake_clock):
    box = make(tmp_path, fake_clock)
    box.add_record("a1", "alpha", b"1")
    box.add_record("b1", "beta", b"2")
    fake_clock.advance(86400)
    box.add_record("a2", "alpha", b"3")
    batches = box.form_batches(10, flush_after=0)
    keys = sorted(b.key for b in batches)
    day0 = "2027-01-15"
    assert keys[0].startswith(f"alpha/{day0}/") and keys[1].startswith("alpha/2027-01-16/")
    assert keys[2].startswith(f"beta/{day0}/") and all(k.endswith(".jsonl") for k in keys)
    again = ob.batch_key("alpha", day0, ("a1",))
    assert again[1] == next(b.key for b in batches if b.record_ids == ("a1",))


def test_in_flight_batch_resumes_after_restart_with_the_same_key(tmp_path, fake_clock):
    box = make(tmp_path, fake_clock)
    for i in range(3):
        box.add_record(f"r{i}", "m", b"payload")
    (batch,) = box.form_batches(3, flush_after=None)
    # The agent dies here (no close): the batch was formed, maybe uploaded, never acked.
    box._db.close()
    box._db = None
    again = make(tmp_path, fake_clock)
    (resumed,) = again.pending_batches()
    assert (resumed.batch_id, resumed.key, resumed.record_ids) == (batch.batch_id, batch.key, batch.record_ids)
    assert again.read_record("r1") == b"payload"
    assert again.form_batches(3, flush_after=0) == []  # nothing is batched twice
    again.ack_batch(resumed.batch_id)
    assert again.backlog()["records_in_flight"] == 0


def test_orphan_payloads_are_removed_and_rows_without_payload_are_counted_lost(tmp_path, fake_clock):
    box = make(tmp_path, fake_clock)
    box.add_record("kept", "m", b"1")
    box.add_record("gone", "m", b"2")
    box.close()
    (box.records_dir / "orphan").write_bytes(b"never acknowledged")
    (box.records_dir / "half.tmp").write_bytes(b"torn write")
    (box.records_dir / "gone").unlink()
    again = make(tmp_path, fake_clock)
    assert sorted(p.name for p in again.records_dir.iterdir()) == ["kept"]
    assert again.status("gone") == ob.DROPPED and again.counters()["lost"] == 1


def test_overwrite_oldest_keeps_to_the_budget_and_counts(tmp_path, fake_clock):
    limit = 1024 * 1024
    box = make(tmp_path, fake_clock, storage_limit_bytes=limit, full_policy=ob.OVERWRITE_OLDEST)
    box.put_message("heartbeat", {"n": 0})
    for i in range(300):
        box.add_record(f"r{i}", "m", os.urandom(8 * 1024))
        assert _disk_use(box.root) <= limit
    overwritten = box.counters()["overwritten"]
    assert overwritten > 150
    assert box.status("r0") == ob.DROPPED and box.status("r299") == ob.READY
    assert box.backlog()["records_ready"] == 300 - overwritten
    assert box.message_counts() == {"ready": 1}  # messages are never evicted


def test_reject_new_data_and_buffer_size(tmp_path, fake_clock):
    box = make(tmp_path, fake_clock, max_records=3, full_policy=ob.REJECT_NEW)
    for i in range(3):
        box.add_record(f"r{i}", "m", b"x")
    with pytest.raises(ob.StoreFull, match="full"):
        box.add_record("r3", "m", b"x")
    assert box.status("r3") is None and box.counters()["rejected"] == 1
    overwrite = make(tmp_path / "o", fake_clock, max_records=3, full_policy=ob.OVERWRITE_OLDEST)
    for i in range(5):
        overwrite.add_record(f"r{i}", "m", b"x")
    assert overwrite.counters()["overwritten"] == 2 and overwrite.status("r0") == ob.DROPPED


def test_in_flight_records_are_not_overwritten(tmp_path, fake_clock):
    box = make(tmp_path, fake_clock, max_records=2, full_policy=ob.OVERWRITE_OLDEST)
    box.add_record("a", "m", b"x")
    box.add_record("b", "m", b"x")
    box.form_batches(2, flush_after=None)
    with pytest.raises(ob.StoreFull):
        box.add_record("c", "m", b"x")
    assert box.status("a") == ob.IN_FLIGHT


def test_a_record_larger_than_the_budget_is_refused(tmp_path, fake_clock):
    box = make(tmp_path, fake_clock, storage_limit_bytes=1024 * 1024)
    with pytest.raises(ob.StoreFull, match="does not fit"):
        box.add_record("big", "m", b"x" * 1024 * 1024)


def test_ttl_expires_ready_records_and_counts(tmp_path, fake_clock):
    box = make(tmp_path, fake_clock, ttl_seconds=100)
    box.add_record("old", "m", b"x")
    fake_clock.advance(60)
    box.add_record("new", "m", b"y")
    fake_clock.advance(50)
    assert box.expire() == 1
    assert box.status("old") == ob.DROPPED and box.status("new") == ob.READY
    assert box.counters()["expired"] == 1 and not (box.records_dir / "old").exists()
    fake_clock.advance(ob.TOMBSTONE_SECONDS + 1)
    box.expire()
    box.prune()
    assert box.status("old") is None


def test_messages_ready_inflight_acked(tmp_path, fake_clock):
    box = make(tmp_path, fake_clock)
    ids = [box.put_message("heartbeat", {"n": i}) for i in range(3)]
    taken = box.take_messages("heartbeat", limit=2)
    assert [m.body["n"] for m in taken] == [0, 1]
    assert box.message_counts() == {"in-flight": 2, "ready": 1}
    # Unacknowledged messages are taken again (after a failed send or a restart).
    again = box.take_messages("heartbeat", limit=10)
    assert [m.id for m in again] == ids
    box.ack_messages(ids[:2])
    box.prune()
    assert box.message_counts() == {"in-flight": 1}


def test_corrupt_database_is_moved_aside_not_deleted(tmp_path, fake_clock):
    box = make(tmp_path, fake_clock)
    box.add_record("r1", "m", b"data")
    box.close()
    with open(box.db_path, "r+b") as fh:  # scribble over the header and the first pages
        fh.write(os.urandom(8192))
    again = make(tmp_path, fake_clock)
    assert len(again.faults) == 1 and again.faults[0]["kind"] == "store-corrupt"
    moved = tmp_path / "corrupt"
    (aside,) = list(moved.iterdir())
    assert (aside / ob.DB_NAME).is_file() and (aside / "records" / "r1").read_bytes() == b"data"
    again.add_record("r2", "m", b"fresh")  # the new store works
    assert again.status("r2") == ob.READY


def test_corruption_while_running_is_recovered(tmp_path, fake_clock):
    box = make(tmp_path, fake_clock)
    box.add_record("r1", "m", b"data")
    boom = sqlite3.DatabaseError("database disk image is malformed")
    real = box._add_record
    calls = []

    def failing(*args):
        calls.append(1)
        if len(calls) == 1:
            raise boom
        return real(*args)

    box._add_record = failing
    box.add_record("r2", "m", b"x")
    assert box.faults and box.status("r2") == ob.READY and box.status("r1") is None


def _disk_use(root) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
