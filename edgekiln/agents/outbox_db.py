"""The outbox's SQLite database: the states of records, batches and messages, the schema,
the connection's settings and explicit transactions.

The database runs in WAL mode with ``synchronous=FULL`` when the outbox is durable; the
write-ahead log is checkpointed every ``checkpoint_pages`` pages and truncated to that size,
so that the outbox can charge a bounded reserve for it to its disk budget.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

READY, IN_FLIGHT, ACKED, DROPPED, DEAD_LETTER = "ready", "in-flight", "acked", "dropped", "dead-letter"
LIVE = (READY, IN_FLIGHT)

DB_NAME = "outbox.db"
PAGE_SIZE = 4096

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    record_id TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL,
    created_at REAL NOT NULL,
    size INTEGER NOT NULL,
    state TEXT NOT NULL,
    batch_id TEXT,
    reason TEXT,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_state ON records(state, seq);
CREATE INDEX IF NOT EXISTS records_by_batch ON records(batch_id);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    day TEXT NOT NULL,
    key TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    body BLOB NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_state ON messages(state, id);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def connect(path: Path, *, durable: bool, checkpoint_pages: int) -> sqlite3.Connection:
    """Open the database in WAL mode, check it and create the tables; raises
    sqlite3.DatabaseError for a database SQLite finds corrupt."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
    try:
        db.execute(f"PRAGMA page_size={PAGE_SIZE}")
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.DatabaseError(f"cannot switch the store to WAL mode ({mode})")
        db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        db.execute(f"PRAGMA wal_autocheckpoint={checkpoint_pages}")
        db.execute(f"PRAGMA journal_size_limit={checkpoint_pages * PAGE_SIZE}")
        result = db.execute("PRAGMA quick_check").fetchone()[0]
        if result != "ok":
            raise sqlite3.DatabaseError(f"database disk image is malformed ({result})")
        db.executescript(SCHEMA)
    except BaseException:
        db.close()
        raise
    return db


def bump(tx: sqlite3.Connection, name: str, n: int = 1) -> None:
    """Add ``n`` to the counter ``name`` inside the transaction ``tx``."""
    tx.execute(
        "INSERT INTO counters(name, value) VALUES (?, ?) "
        "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
        (name, n),
    )


class Transaction:
    """BEGIN IMMEDIATE … COMMIT, rolled back on an exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.db.execute("COMMIT")
        else:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
