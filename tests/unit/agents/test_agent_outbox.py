"""The outbox: explicit states, resumption after restart, budget and policies, TTL, corruption."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from edgekiln.agents import outbox as ob
from edgekiln.agents import outbox_db as odb
from edgekiln.agents.batches import batch_key


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
    assert box.status("r0") == odb.READY
    with pytest.raises(ob.CaptureExists):
        box.add_record("r0", "m", b"again")
    batches = box.form_batches(2, flush_after=None)
    assert [len(b.record_ids) for b in batches] == [2, 2]  # the partial batch waits
    assert box.status("r0") == odb.IN_FLIGHT and box.status("r4") == odb.READY
    box.ack_batch(batches[0].batch_id)
    assert box.status("r0") == odb.ACKED and not (box.records_dir / "r0").exists()
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
    again = batch_key("alpha", day0, ("a1",))
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


def test_orphan_payloads_are_quarantined_and_rows_without_payload_are_counted_lost(tmp_path, fake_clock):
    box = make(tmp_path, fake_clock)
    box.add_record("sent", "m", b"3")
    (batch,) = box.form_batches(1, flush_after=None, max_batches=1)
    box.ack_batch(batch.batch_id)
    box.add_record("kept", "m", b"1")
    box.add_record("gone", "m", b"2")
    box.close()
    (box.records_dir / "orphan").write_bytes(b"no row: perhaps lost with the write-ahead log")
    (box.records_dir / "half.tmp").write_bytes(b"torn write")
    (box.records_dir / batch.record_ids[0]).write_bytes(b"delivered, deletion interrupted")
    (box.records_dir / "gone").unlink()
    again = make(tmp_path, fake_clock)
    assert sorted(p.name for p in again.records_dir.iterdir()) == ["kept"]
    assert again.status("gone") == odb.DROPPED and again.counters()["lost"] == 1
    # The payload no row accounts for is kept, reported and counted: never deleted.
    (fault,) = again.faults
    assert fault["kind"] == "store-orphans" and fault["count"] == 1
    assert (Path(fault["moved_to"]) / "orphan").read_bytes().startswith(b"no row")
    assert again.counters()["quarantined"] == 1 and again.quarantine_bytes() > 0


def test_overwrite_oldest_keeps_to_the_budget_and_counts(tmp_path, fake_clock):
    limit = 1024 * 1024
    box = make(tmp_path, fake_clock, storage_limit_bytes=limit, full_policy=ob.OVERWRITE_OLDEST)
    box.put_message("heartbeat", {"n": 0})
    for i in range(300):
        box.add_record(f"r{i}", "m", os.urandom(8 * 1024))
        assert _disk_use(box.root) <= limit
    overwritten = box.counters()["overwritten"]
    assert overwritten > 150
    assert box.status("r0") == odb.DROPPED and box.status("r299") == odb.READY
    assert box.backlog()["records_ready"] == 300 - overwritten
    assert box.message_counts() == {"ready": 1}  # the newest heartbeat is never evicted by captures


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
    assert overwrite.counters()["overwritten"] == 2 and overwrite.status("r0") == odb.DROPPED


def test_in_flight_records_are_not_overwritten(tmp_path, fake_clock):
    box = make(tmp_path, fake_clock, max_records=2, full_policy=ob.OVERWRITE_OLDEST)
    box.add_record("a", "m", b"x")
    box.add_record("b", "m", b"x")
    box.form_batches(2, flush_after=None)
    with pytest.raises(ob.StoreFull):
        box.add_record("c", "m", b"x")
    assert box.status("a") == odb.IN_FLIGHT


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
    assert box.status("old") == odb.DROPPED and box.status("new") == odb.READY
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
    assert (aside / odb.DB_NAME).is_file() and (aside / "records" / "r1").read_bytes() == b"data"
    again.add_record("r2", "m", b"fresh")  # the new store works
    assert again.status("r2") == odb.READY


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
    assert box.faults and box.status("r2") == odb.READY and box.status("r1") is None


def _disk_use(root) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_a_batch_the_fleet_refuses_is_dead_lettered_kept_and_does_not_block(tmp_path, fake_clock):
    box = make(tmp_path, fake_clock)
    box.add_record("bad-1", "m", b"refused")
    box.add_record("bad-2", "m", b"refused too")
    (batch,) = box.form_batches(2, flush_after=None)
    box.dead_letter_batch(batch.batch_id, "POST /v1/agent/uploads: 400 key segment too long")
    assert box.pending_batches() == [] and box.backlog()["records_in_flight"] == 0
    assert box.status("bad-1") == odb.DEAD_LETTER and not (box.records_dir / "bad-1").exists()
    kept = box.dead_letter_dir / batch.batch_id
    assert (kept / "bad-2").read_bytes() == b"refused too" and "400" in (kept / "reason.txt").read_text()
    assert box.counters()["dead_letter_batches"] == 1 and box.counters()["dead_letter_records"] == 2
    box.add_record("good", "m", b"ok")  # the queue moves on
    (after,) = box.form_batches(1, flush_after=None)
    assert after.record_ids == ("good",)
    box.close()
    again = make(tmp_path, fake_clock)  # and stays moved on after a restart
    assert [b.record_ids for b in again.pending_batches()] == [("good",)]
    assert again.status("bad-2") == odb.DEAD_LETTER and (kept / "bad-2").is_file()


def test_a_crash_between_dead_letter_commit_and_move_is_finished_at_open(tmp_path, fake_clock):
    box = make(tmp_path, fake_clock)
    box.add_record("bad", "m", b"refused")
    (batch,) = box.form_batches(1, flush_after=None)
    box._move_dead_letter = lambda *a, **k: None  # the agent died right after the commit
    box.dead_letter_batch(batch.batch_id, "400")
    box.close()
    again = make(tmp_path, fake_clock)
    assert (again.dead_letter_dir / batch.batch_id / "bad").read_bytes() == b"refused" and not again.faults


@pytest.mark.parametrize("damage", ["wal-header", "wal-frame", "wal-deleted"])
def test_a_damaged_wal_loses_no_acknowledged_capture(tmp_path, fake_clock, damage):
    # The image of a store at kill -9: the database with its write-ahead log, uncheckpointed.
    box = make(tmp_path / "live", fake_clock, storage_limit_bytes=64 * 1024 * 1024)
    box._conn().execute("PRAGMA wal_autocheckpoint=0")
    acknowledged = [f"cap-{i}" for i in range(50)]
    for n, rid in enumerate(acknowledged):
        box.add_record(rid, "m", rid.encode() * 10)
        if n == 29:  # the first 30 reach the database file, the rest only the log
            box._conn().execute("PRAGMA wal_checkpoint(PASSIVE)")
    image = tmp_path / "image"
    shutil.copytree(box.root, image / "outbox")
    box.close()
    wal = image / "outbox" / (odb.DB_NAME + "-wal")
    assert wal.stat().st_size > 32 + 24
    if damage == "wal-deleted":
        wal.unlink()
    else:
        with open(wal, "r+b") as fh:  # header: first 32 bytes; first frame's header after it
            fh.seek(8 if damage == "wal-header" else 32 + 24 + 100)
            fh.write(os.urandom(16))
    again = make(image, fake_clock)
    quarantined = {p.name for p in (image / "corrupt").rglob("cap-*")} if (image / "corrupt").exists() else set()
    found = {rid for rid in acknowledged if again.status(rid) in (odb.READY, odb.IN_FLIGHT)}
    assert found | quarantined == set(acknowledged)
    assert not found & quarantined and len(found) >= 30
    for rid in quarantined:
        assert next((image / "corrupt").rglob(rid)).read_bytes() == rid.encode() * 10
    if quarantined:
        assert again.faults[-1]["kind"] == "store-orphans" and again.counters()["quarantined"] == len(quarantined)


def test_queued_heartbeats_are_bounded_and_never_starve_captures(tmp_path, fake_clock):
    limit = 1024 * 1024
    box = make(tmp_path, fake_clock, storage_limit_bytes=limit, full_policy=ob.REJECT_NEW, max_messages=100)
    noise = os.urandom(600).hex()  # heartbeats that do not compress to nothing
    for i in range(400):  # offline for hours of heartbeats
        box.put_message("heartbeat", {"n": i, "noise": noise})
        fake_clock.advance(30)
    counts = box.message_counts()
    assert counts["ready"] <= 100
    assert box.counters()["heartbeats_dropped"] == 400 - counts["ready"]
    assert [m.body["n"] for m in box.take_messages("heartbeat", limit=1)][0] == 400 - counts["ready"]
    for i in range(40):  # captures still fit: half the budget is theirs
        box.add_record(f"r{i}", "m", os.urandom(8 * 1024))
    assert _disk_use(box.root) <= limit and box.backlog()["records_ready"] == 40


def test_quarantine_is_never_pruned_and_its_size_is_reported(tmp_path, fake_clock):
    box = make(tmp_path, fake_clock)
    for i in range(7):  # more than the five the store used to keep
        box.add_record(f"r{i}", "m", b"data" * 100)
        box.close()
        with open(box.db_path, "r+b") as fh:
            fh.write(os.urandom(8192))
        box = make(tmp_path, fake_clock)
        fake_clock.advance(1)
    aside = sorted(p for p in (tmp_path / "corrupt").iterdir() if p.name.startswith("outbox-"))
    assert len(aside) == 7 and len(box.faults) == 1  # each start reports its own
    assert all((p / "records").is_dir() for p in aside)
    assert box.quarantine_bytes() >= 7 * 400
