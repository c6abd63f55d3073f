"""The agent's disk-backed store-and-forward: capture records and messages for the fleet.

A SQLite database in WAL mode holds the index and the states; each capture record's
payload (the serialised ``CaptureDataRequest``) is a file beside it.  Everything moves
through explicit states, so that a restart — clean or after ``kill -9`` — resumes where
the previous run stopped:

* capture records: ``ready`` → ``in-flight`` (a member of a batch being delivered) →
  ``acked`` (delivered; the payload file is deleted, the row stays as a tombstone so
  that the record id stays known), or ``dropped`` (overwritten by the full policy,
  expired by the TTL);
* batches: formed in one transaction from ready records with a key that is a function of
  their record ids, so a batch that was in flight when the agent died is delivered again
  under the same key (an idempotent overwrite, never a second copy)
  (:mod:`edgekiln.agents.batches`);
* a batch the fleet refuses for good (a 4xx answer) goes with its records to
  ``dead-letter``: the payloads move to ``dead-letter/<batch>/`` (kept, not charged to the
  budget), the batch is counted, and the queue moves on;
* messages (heartbeats): a bounded queue per kind (:mod:`edgekiln.agents.messages`).

The schema, the connection's settings and the transactions are in
:mod:`edgekiln.agents.outbox_db`.

The store keeps to a disk budget (records, database and a reserve for the write-ahead
log) and a record count (the capture buffer size); when full it rejects new records or
overwrites the oldest ready ones, and counts either.  A database that SQLite finds
corrupt is moved aside (never deleted) with the payload files, and a fresh one replaces
it.  A payload file that no row accounts for (its row was lost with a damaged or deleted
write-ahead log, or its capture was never acknowledged) is moved to the quarantine
directory, never deleted.  Both raise a fault, kept for the next heartbeat, and are
counted; nothing in the quarantine directory is ever deleted by the agent.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from edgekiln.agents import outbox_db
from edgekiln.agents.batches import BatchQueue
from edgekiln.agents.messages import DEFAULT_MAX_MESSAGES, MessageQueue
from edgekiln.agents.outbox_db import (
    ACKED,
    DB_NAME,
    DEAD_LETTER,
    DROPPED,
    IN_FLIGHT,
    LIVE,
    PAGE_SIZE,
    READY,
    Transaction,
)
from edgekiln.agents.salvage import Salvage, is_corruption
from edgekiln.errors import UserError

log = logging.getLogger(__name__)

REJECT_NEW, OVERWRITE_OLDEST = "RejectNewData", "OverwriteOldest"

RECORDS_DIR = "records"
DEAD_LETTER_DIR = "dead-letter"
# Checkpoints keep the write-ahead log, and so the store's disk use, bounded: the WAL is
# checkpointed at about 1/64 of the budget (16 to 1024 pages). The budget reserves the
# WAL's ceiling and as much again for the database file, which grows by at most the pages
# a checkpoint copies into it before the next budget check.
MIN_CHECKPOINT_PAGES, MAX_CHECKPOINT_PAGES = 16, 1024
SHM_RESERVE = 32 * 1024
# Tombstones of delivered and dropped records are kept this long for status queries and
# duplicate detection, then pruned.
TOMBSTONE_SECONDS = 24 * 3600.0
# fullmatch, not match with "$": "$" also matches before a trailing newline.
RECORD_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")


class CaptureExists(UserError):
    """A capture record with this id is already stored (or was delivered or dropped)."""


class StoreFull(UserError):
    """The capture store is at its budget and the full policy is RejectNewData."""


class StoreUnavailable(UserError):
    """The store failed and could not be recovered for this call."""


class Outbox(BatchQueue, MessageQueue, Salvage):
    """The store; thread-safe (one connection behind one lock, network I/O stays outside)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        storage_limit_bytes: int,
        max_records: int,
        full_policy: str = OVERWRITE_OLDEST,
        ttl_seconds: float = 7 * 24 * 3600.0,
        quarantine_dir: str | os.PathLike[str] | None = None,
        clock: Callable[[], float] = time.time,
        durable: bool = True,
        max_messages: int = DEFAULT_MAX_MESSAGES,
    ) -> None:
        if full_policy not in (REJECT_NEW, OVERWRITE_OLDEST):
            raise UserError(f"full policy must be {REJECT_NEW} or {OVERWRITE_OLDEST}, not {full_policy!r}")
        self.root = Path(root)
        self.quarantine_dir = Path(quarantine_dir) if quarantine_dir else self.root.parent / "corrupt"
        self.storage_limit = int(storage_limit_bytes)
        self.max_records = int(max_records)
        self.full_policy = full_policy
        self.ttl = float(ttl_seconds)
        self.clock = clock
        self.durable = durable
        self.faults: list[dict[str, Any]] = []
        # Queued heartbeats may use an eighth of the budget; the rest is the captures'.
        self.max_messages = int(max_messages)
        self.message_budget_bytes = self.storage_limit // 8
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        self._live_bytes = 0
        self._live_count = 0
        self.checkpoint_pages = max(
            MIN_CHECKPOINT_PAGES, min(MAX_CHECKPOINT_PAGES, self.storage_limit // 64 // PAGE_SIZE)
        )
        self.wal_reserve = (self.checkpoint_pages + 16) * PAGE_SIZE

    # -- lifecycle -------------------------------------------------------------------
    @property
    def db_path(self) -> Path:
        return self.root / DB_NAME

    @property
    def records_dir(self) -> Path:
        return self.root / RECORDS_DIR

    @property
    def dead_letter_dir(self) -> Path:
        return self.root / DEAD_LETTER_DIR

    def open(self) -> None:
        """Open (or create) the store, moving a corrupt database aside, and recover."""
        with self._lock:
            self.root.mkdir(parents=True, exist_ok=True)
            self.records_dir.mkdir(exist_ok=True)
            try:
                self._connect()
            except sqlite3.DatabaseError as exc:
                self._quarantine(exc)
                self._connect()
            self._recover()

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                try:
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error:
                    pass
                self._db.close()
                self._db = None

    def _connect(self) -> None:
        self._db = outbox_db.connect(self.db_path, durable=self.durable, checkpoint_pages=self.checkpoint_pages)

    def _recover(self) -> None:
        """Make the files and the rows agree after an unclean stop."""
        db = self._conn()
        states = dict(db.execute("SELECT record_id, state FROM records"))
        unmatched: list[Path] = []
        for path in self.records_dir.iterdir():
            state = states.get(path.name)
            if path.name.endswith(".tmp") or state in (ACKED, DROPPED):
                # A .tmp was never renamed into place, so never acknowledged; an acked or
                # dropped record's file was about to be deleted when the agent stopped.
                path.unlink(missing_ok=True)
            elif state == DEAD_LETTER:
                self._move_dead_letter(
                    db.execute("SELECT batch_id FROM records WHERE record_id=?", (path.name,)).fetchone()[0]
                    or "unknown",
                    [path.name],
                )
            elif state not in LIVE:
                unmatched.append(path)
        if unmatched:
            self._quarantine_payloads(unmatched)
        live = [rid for rid, state in states.items() if state in LIVE]
        missing = [rid for rid in live if not (self.records_dir / rid).is_file()]
        if missing:
            now = self.clock()
            with self._tx() as tx:
                for rid in missing:
                    tx.execute(
                        "UPDATE records SET state=?, reason='missing', updated_at=? WHERE record_id=?",
                        (DROPPED, now, rid),
                    )
                self._bump(tx, "lost", len(missing))
            log.warning("capture store: %d record payloads were missing after restart", len(missing))
        self._refresh_totals()

    def _refresh_totals(self) -> None:
        count, total = (
            self._conn()
            .execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM records WHERE state IN (?, ?)", LIVE)
            .fetchone()
        )
        self._live_count, self._live_bytes = int(count), int(total)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreUnavailable("the capture store is not open")
        return self._db

    def _tx(self) -> Transaction:
        return Transaction(self._conn())

    # -- corruption (moving things aside: salvage.py) ----------------------------------
    def check(self) -> bool:
        """Read the database from disk, past this connection's page cache; a corrupt one is
        moved aside and replaced. Returns whether it was sound."""
        with self._lock:
            try:
                probe = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=5)
                try:
                    result = probe.execute("PRAGMA quick_check").fetchone()[0]
                finally:
                    probe.close()
                if result == "ok":
                    return True
                problem = sqlite3.DatabaseError(f"database disk image is malformed ({result})")
            except sqlite3.DatabaseError as exc:
                if not is_corruption(exc):
                    return True
                problem = exc
            self._quarantine(problem)
            self._connect()
            self._recover()
            return False

    def _guard(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn``; on a corrupt database move it aside, reopen and run once more."""
        with self._lock:
            try:
                return fn()
            except sqlite3.DatabaseError as exc:
                if not is_corruption(exc):
                    raise StoreUnavailable(f"capture store error: {exc}") from exc
                self._quarantine(exc)
                try:
                    self._connect()
                    self._recover()
                except sqlite3.DatabaseError as again:
                    raise StoreUnavailable(f"capture store cannot be reopened: {again}") from again
                return fn()

    # -- capture records -------------------------------------------------------------
    def add_record(self, record_id: str, model: str, payload: bytes) -> None:
        """Store one capture record; it is durable when this returns."""
        if not isinstance(record_id, str) or not RECORD_ID_RE.fullmatch(record_id):
            raise UserError(f"record id {record_id!r} is not of the expected format")
        self._guard(lambda: self._add_record(record_id, model, payload))

    def _add_record(self, record_id: str, model: str, payload: bytes) -> None:
        db = self._conn()
        if db.execute("SELECT 1 FROM records WHERE record_id=?", (record_id,)).fetchone():
            raise CaptureExists(f"capture {record_id} exists")
        need = len(payload)
        now = self.clock()
        if self.usage_bytes() + need > self.storage_limit or self._live_count >= self.max_records:
            with self._tx() as tx:
                victims, refusal = self._make_room(tx, need, now)
            # Payloads of overwritten records go once their rows say so (a crash in between
            # leaves orphan files, which open() removes, never rows without payloads).
            for rid in victims:
                (self.records_dir / rid).unlink(missing_ok=True)
            if refusal:
                raise StoreFull(refusal)
        path = self.records_dir / record_id
        tmp = path.with_name(record_id + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(payload)
            if self.durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        with self._tx() as tx:
            tx.execute(
                "INSERT INTO records(record_id, model, created_at, size, state, updated_at) VALUES (?,?,?,?,?,?)",
                (record_id, model, now, need, READY, now),
            )
        self._live_bytes += need
        self._live_count += 1

    def _make_room(self, tx: sqlite3.Connection, need: int, now: float) -> tuple[list[str], str | None]:
        """Apply the full policy until ``need`` bytes fit: (overwritten ids, refusal or None)."""
        victims: list[str] = []
        if need + self._fixed_bytes() > self.storage_limit:
            self._bump(tx, "rejected")
            return victims, (f"a capture of {need} bytes does not fit the store's budget of {self.storage_limit} bytes")
        for _ in range(self._live_count + 1):
            if self.usage_bytes() + need <= self.storage_limit and self._live_count < self.max_records:
                return victims, None
            victim = None
            if self.full_policy == OVERWRITE_OLDEST:
                victim = tx.execute(
                    "SELECT record_id, size FROM records WHERE state=? ORDER BY seq LIMIT 1", (READY,)
                ).fetchone()
            if victim is None:
                self._bump(tx, "rejected")
                return victims, (
                    f"the capture buffer is full ({self._live_count} records, "
                    f"{self.usage_bytes()} of {self.storage_limit} bytes, policy {self.full_policy})"
                )
            rid, size = victim
            tx.execute(
                "UPDATE records SET state=?, reason='overwritten', updated_at=? WHERE record_id=?", (DROPPED, now, rid)
            )
            victims.append(rid)
            self._live_bytes -= size
            self._live_count -= 1
            self._bump(tx, "overwritten")
        self._bump(tx, "rejected")
        return victims, "the capture buffer is full"

    def _fixed_bytes(self) -> int:
        try:
            main = self.db_path.stat().st_size
        except FileNotFoundError:
            main = 0
        try:
            wal = self.db_path.with_name(DB_NAME + "-wal").stat().st_size
        except FileNotFoundError:
            wal = 0
        # Reserve the WAL's ceiling, not its current size: the next commits grow it.
        return main + self.wal_reserve + max(wal, self.wal_reserve) + SHM_RESERVE

    def usage_bytes(self) -> int:
        """Disk use charged to the budget: live payloads, the database, the WAL reserve."""
        return self._live_bytes + self._fixed_bytes()

    def status(self, record_id: str) -> str | None:
        """The record's state (ready, in-flight, acked, dropped), or None if unknown."""

        def query() -> str | None:
            row = self._conn().execute("SELECT state FROM records WHERE record_id=?", (record_id,)).fetchone()
            return row[0] if row else None

        return self._guard(query)

    def read_record(self, record_id: str) -> bytes | None:
        try:
            return (self.records_dir / record_id).read_bytes()
        except FileNotFoundError:
            return None

    def drop_records(self, record_ids: Iterable[str], reason: str) -> None:
        """Drop unreadable records from a batch (counted as lost)."""
        ids = list(record_ids)
        if not ids:
            return

        def drop() -> None:
            now = self.clock()
            with self._tx() as tx:
                for rid in ids:
                    tx.execute(
                        "UPDATE records SET state=?, reason=?, updated_at=? WHERE record_id=?",
                        (DROPPED, reason, now, rid),
                    )
                self._bump(tx, "lost", len(ids))
            for rid in ids:
                (self.records_dir / rid).unlink(missing_ok=True)
            self._refresh_totals()

        self._guard(drop)

    # -- maintenance -----------------------------------------------------------------
    def expire(self) -> int:
        """Drop ready records older than the TTL; returns how many."""

        def sweep() -> int:
            now = self.clock()
            rows = (
                self._conn()
                .execute("SELECT record_id FROM records WHERE state=? AND created_at < ?", (READY, now - self.ttl))
                .fetchall()
            )
            if not rows:
                return 0
            with self._tx() as tx:
                tx.executemany(
                    "UPDATE records SET state=?, reason='expired', updated_at=? WHERE record_id=?",
                    [(DROPPED, now, r[0]) for r in rows],
                )
                self._bump(tx, "expired", len(rows))
            for (rid,) in rows:
                (self.records_dir / rid).unlink(missing_ok=True)
            self._refresh_totals()
            return len(rows)

        return self._guard(sweep)

    def prune(self, keep_seconds: float = TOMBSTONE_SECONDS) -> None:
        """Forget delivered messages and old tombstones."""

        def prune() -> None:
            cutoff = self.clock() - keep_seconds
            with self._tx() as tx:
                tx.execute("DELETE FROM messages WHERE state=?", (ACKED,))
                tx.execute("DELETE FROM records WHERE state IN (?, ?) AND updated_at < ?", (ACKED, DROPPED, cutoff))
                tx.execute("DELETE FROM batches WHERE state=? AND updated_at < ?", (ACKED, cutoff))

        self._guard(prune)

    # -- counters and figures --------------------------------------------------------
    _bump = staticmethod(outbox_db.bump)

    def bump(self, name: str, n: int = 1) -> None:
        def bump() -> None:
            with self._tx() as tx:
                self._bump(tx, name, n)

        self._guard(bump)

    def counters(self) -> dict[str, int]:
        return self._guard(lambda: dict(self._conn().execute("SELECT name, value FROM counters")))

    def backlog(self) -> dict[str, int]:
        """Records waiting for delivery and queued messages."""

        def query() -> dict[str, int]:
            db = self._conn()
            states = dict(db.execute("SELECT state, COUNT(*) FROM records WHERE state IN (?, ?) GROUP BY state", LIVE))
            messages = db.execute("SELECT COUNT(*) FROM messages WHERE state IN (?, ?)", LIVE).fetchone()[0]
            return {
                "records_ready": states.get(READY, 0),
                "records_in_flight": states.get(IN_FLIGHT, 0),
                "bytes": self._live_bytes,
                "messages": messages,
                "usage_bytes": self.usage_bytes(),
                "limit_bytes": self.storage_limit,
            }

        return self._guard(query)
