"""Capture batches: ready records grouped for delivery as one object each.

A batch forms in one transaction from ready records of one model and day (ready →
in-flight), under a key that is a function of their record ids, so a batch that was in
flight when the agent died is delivered again under the same key (an idempotent
overwrite, never a second copy).  A delivered batch's records become ``acked`` and their
payload files go; a batch the fleet refuses for good (a 4xx answer) goes with its records
to ``dead-letter``, its payloads kept aside (:mod:`edgekiln.agents.salvage`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Iterable

from edgekiln.agents.outbox_db import ACKED, DEAD_LETTER, IN_FLIGHT, READY

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Batch:
    """Capture records delivered together as one object under ``key``."""

    batch_id: str
    model: str
    day: str
    key: str
    record_ids: tuple[str, ...]


def batch_key(model: str, day: str, record_ids: Iterable[str]) -> tuple[str, str]:
    """(batch id, key) for records of one model and day: a function of the record ids."""
    digest = hashlib.sha256("\n".join(record_ids).encode()).hexdigest()[:20]
    return digest, f"{model}/{day}/{digest}.jsonl"


class BatchQueue:
    """The outbox's batch methods (mixed into Outbox: one connection, one lock).

    Needs from the outbox: ``_guard``, ``_conn``, ``_tx``, ``_bump``, ``_refresh_totals``,
    ``_move_dead_letter``, ``clock``, ``records_dir`` and ``dead_letter_dir``.
    """

    def form_batches(self, batch_size: int, *, flush_after: float | None, max_batches: int = 64) -> list[Batch]:
        """Group ready records into batches (ready → in-flight) and return them.

        Full batches always form; a partial one only when ``flush_after`` is set and its
        oldest record has waited that long.
        """
        return self._guard(lambda: self._form_batches(batch_size, flush_after, max_batches))

    def _form_batches(self, batch_size: int, flush_after: float | None, max_batches: int) -> list[Batch]:
        db = self._conn()
        now = self.clock()
        rows = db.execute(
            "SELECT record_id, model, created_at FROM records WHERE state=? ORDER BY seq", (READY,)
        ).fetchall()
        groups: dict[tuple[str, str], list[tuple[str, float]]] = {}
        for rid, model, created in rows:
            day = time.strftime("%Y-%m-%d", time.gmtime(created))
            groups.setdefault((model, day), []).append((rid, created))
        batches: list[Batch] = []
        with self._tx() as tx:
            for (model, day), members in groups.items():
                for start in range(0, len(members), batch_size):
                    if len(batches) >= max_batches:
                        break
                    chunk = members[start : start + batch_size]
                    if len(chunk) < batch_size:
                        if flush_after is None or now - chunk[0][1] < flush_after:
                            continue
                    ids = tuple(rid for rid, _ in chunk)
                    batch_id, key = batch_key(model, day, ids)
                    tx.execute(
                        "INSERT OR REPLACE INTO batches(batch_id, model, day, key, state, created_at, "
                        "updated_at) VALUES (?,?,?,?,?,?,?)",
                        (batch_id, model, day, key, IN_FLIGHT, now, now),
                    )
                    tx.executemany(
                        "UPDATE records SET state=?, batch_id=?, updated_at=? WHERE record_id=?",
                        [(IN_FLIGHT, batch_id, now, rid) for rid in ids],
                    )
                    batches.append(Batch(batch_id, model, day, key, ids))
        return batches

    def pending_batches(self, limit: int = 64) -> list[Batch]:
        """Batches in flight (formed earlier, perhaps before a restart), oldest first."""

        def query() -> list[Batch]:
            db = self._conn()
            out = []
            for batch_id, model, day, key in db.execute(
                "SELECT batch_id, model, day, key FROM batches WHERE state=? ORDER BY created_at, batch_id LIMIT ?",
                (IN_FLIGHT, limit),
            ).fetchall():
                ids = tuple(
                    r[0]
                    for r in db.execute(
                        "SELECT record_id FROM records WHERE batch_id=? AND state=? ORDER BY seq", (batch_id, IN_FLIGHT)
                    )
                )
                out.append(Batch(batch_id, model, day, key, ids))
            return out

        return self._guard(query)

    def _in_flight_ids(self, batch_id: str) -> list[str]:
        query = "SELECT record_id FROM records WHERE batch_id=? AND state=?"
        return [r[0] for r in self._conn().execute(query, (batch_id, IN_FLIGHT))]

    def ack_batch(self, batch_id: str) -> None:
        """The batch reached its destination: its records become acked (in-flight → acked)."""

        def ack() -> None:
            now = self.clock()
            ids = self._in_flight_ids(batch_id)
            with self._tx() as tx:
                tx.execute(
                    "UPDATE records SET state=?, updated_at=? WHERE batch_id=? AND state=?",
                    (ACKED, now, batch_id, IN_FLIGHT),
                )
                tx.execute("UPDATE batches SET state=?, updated_at=? WHERE batch_id=?", (ACKED, now, batch_id))
                self._bump(tx, "delivered", len(ids))
            # Files go after the commit: a crash in between leaves orphans that open() quarantines.
            for rid in ids:
                (self.records_dir / rid).unlink(missing_ok=True)
            self._refresh_totals()

        self._guard(ack)

    def dead_letter_batch(self, batch_id: str, reason: str) -> None:
        """The fleet refused the batch for good: keep its payloads aside, out of the queue."""

        def dead() -> None:
            now = self.clock()
            ids = self._in_flight_ids(batch_id)
            with self._tx() as tx:
                tx.execute(
                    "UPDATE records SET state=?, reason=?, updated_at=? WHERE batch_id=? AND state=?",
                    (DEAD_LETTER, reason[:500], now, batch_id, IN_FLIGHT),
                )
                tx.execute("UPDATE batches SET state=?, updated_at=? WHERE batch_id=?", (DEAD_LETTER, now, batch_id))
                self._bump(tx, "dead_letter_batches")
                self._bump(tx, "dead_letter_records", len(ids))
            # Moved after the commit: a crash in between leaves files that open() moves.
            self._move_dead_letter(batch_id, ids, reason)
            self._refresh_totals()

        self._guard(dead)
        log.error(
            "capture batch %s refused by the fleet (%s): kept in %s", batch_id, reason, self.dead_letter_dir / batch_id
        )
