"""Messages for the fleet (heartbeats) in the outbox's database: a bounded queue per kind.

Messages move ``ready`` → ``in-flight`` → ``acked``; the fleet de-duplicates by the id
inside each message.  While the fleet is away a device keeps producing heartbeats, and
every one of them grows the database that the capture budget pays for: so each kind keeps
at most ``max_messages`` messages and ``message_budget_bytes`` of them, and the oldest
go first (counted as ``<kind>s_dropped``).  Captures are never starved by heartbeats.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import Any, Iterable

READY, IN_FLIGHT, ACKED = "ready", "in-flight", "acked"
DEFAULT_MAX_MESSAGES = 256


@dataclass(frozen=True)
class Message:
    id: int
    kind: str
    body: dict[str, Any]
    created_at: float


class MessageQueue:
    """The outbox's message methods (mixed into Outbox: one connection, one lock).

    Needs from the outbox: ``_guard``, ``_conn``, ``_tx``, ``_bump``, ``clock``,
    ``max_messages`` and ``message_budget_bytes``.
    """

    max_messages: int
    message_budget_bytes: int

    def put_message(self, kind: str, body: dict[str, Any]) -> int:
        """Queue a message for the fleet, dropping the oldest of its kind over the bound."""
        blob = zlib.compress(json.dumps(body, separators=(",", ":")).encode())

        def put() -> int:
            now = self.clock()
            with self._tx() as tx:
                cur = tx.execute(
                    "INSERT INTO messages(kind, body, state, created_at, updated_at) VALUES (?,?,?,?,?)",
                    (kind, blob, READY, now, now),
                )
                self._bound(tx, kind)
            return int(cur.lastrowid)

        return self._guard(put)

    def _bound(self, tx: Any, kind: str) -> None:
        rows = tx.execute(
            "SELECT id, LENGTH(body) FROM messages WHERE kind=? AND state IN (?, ?) ORDER BY id DESC",
            (kind, READY, IN_FLIGHT),
        ).fetchall()
        kept = total = 0
        drop: list[tuple[int]] = []
        for message_id, size in rows:  # newest first: keep the newest that fit, drop all older
            if not drop and (kept == 0 or (kept < self.max_messages and total + size <= self.message_budget_bytes)):
                kept += 1
                total += size
            else:
                drop.append((message_id,))
        if drop:
            tx.executemany("DELETE FROM messages WHERE id=?", drop)
            self._bump(tx, f"{kind}s_dropped", len(drop))

    def take_messages(self, kind: str, limit: int = 50) -> list[Message]:
        """The oldest undelivered messages of ``kind`` (ready or in-flight), now in-flight."""

        def take() -> list[Message]:
            now = self.clock()
            rows = (
                self._conn()
                .execute(
                    "SELECT id, body, created_at FROM messages WHERE kind=? AND state IN (?, ?) ORDER BY id LIMIT ?",
                    (kind, READY, IN_FLIGHT, limit),
                )
                .fetchall()
            )
            with self._tx() as tx:
                tx.executemany(
                    "UPDATE messages SET state=?, attempts=attempts+1, updated_at=? WHERE id=?",
                    [(IN_FLIGHT, now, r[0]) for r in rows],
                )
            return [Message(r[0], kind, json.loads(zlib.decompress(r[1])), r[2]) for r in rows]

        return self._guard(take)

    def ack_messages(self, ids: Iterable[int]) -> None:
        ids = list(ids)

        def ack() -> None:
            now = self.clock()
            with self._tx() as tx:
                tx.executemany("UPDATE messages SET state=?, updated_at=? WHERE id=?", [(ACKED, now, i) for i in ids])

        if ids:
            self._guard(ack)

    def drop_messages(self, ids: Iterable[int], kind: str) -> None:
        """Forget messages the fleet refused for good (counted as ``<kind>s_refused``)."""
        ids = list(ids)

        def drop() -> None:
            with self._tx() as tx:
                tx.executemany("DELETE FROM messages WHERE id=?", [(i,) for i in ids])
                self._bump(tx, f"{kind}s_refused", len(ids))

        if ids:
            self._guard(drop)

    def message_counts(self) -> dict[str, int]:
        def query() -> dict[str, int]:
            return {
                state: n for state, n in self._conn().execute("SELECT state, COUNT(*) FROM messages GROUP BY state")
            }

        return self._guard(query)
