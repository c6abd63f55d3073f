"""What the outbox keeps when something goes wrong: never deleted, always reported.

* a database SQLite finds corrupt moves aside with its WAL and payloads
  (``<quarantine>/outbox-<time>-<pid>/``);
* payload files no row accounts for move to ``<quarantine>/orphans-<time>-<pid>/``;
* payloads of batches the fleet refused for good move to ``dead-letter/<batch>/``.

Each raises a fault for the next heartbeat or a counter.  Nothing here is ever pruned:
the quarantine's size is reported (``quarantine_bytes``) so that an operator can act.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time
from pathlib import Path

log = logging.getLogger(__name__)

DB_FILES = ("outbox.db", "outbox.db-wal", "outbox.db-shm")


class Salvage:
    """Mixed into Outbox; uses its ``root``, ``records_dir``, ``dead_letter_dir``,
    ``quarantine_dir``, ``faults``, ``clock``, ``_db``, ``_tx`` and ``_bump``."""

    def _quarantine_payloads(self, paths: list[Path]) -> None:
        """Keep payloads that no row accounts for: the row may have been lost with a damaged
        write-ahead log after CaptureData answered OK, so they are moved, never deleted."""
        target = self._new_quarantine_dir("orphans")
        for path in paths:
            shutil.move(str(path), str(target / path.name))
        with self._tx() as tx:
            self._bump(tx, "quarantined", len(paths))
        self.faults.append(
            {"kind": "store-orphans", "count": len(paths), "moved_to": str(target), "time": self.clock()}
        )
        log.error(
            "capture store: %d payloads without a record (a damaged or lost write-ahead log?) moved to %s",
            len(paths),
            target,
        )

    def _new_quarantine_dir(self, what: str) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self.clock()))
        target = self.quarantine_dir / f"{what}-{stamp}-{os.getpid()}"
        n = 0
        while target.exists():
            n += 1
            target = self.quarantine_dir / f"{what}-{stamp}-{os.getpid()}-{n}"
        target.mkdir(parents=True)
        return target

    def _quarantine(self, exc: BaseException) -> None:
        """Move the database, its WAL and the payloads aside and note the fault."""
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None
        target = self._new_quarantine_dir("outbox")
        for source in [self.root / name for name in DB_FILES] + [self.records_dir]:
            if source.exists():
                shutil.move(str(source), str(target / source.name))
        self.records_dir.mkdir(parents=True, exist_ok=True)
        fault = {
            "kind": "store-corrupt",
            "error": " ".join(str(exc).split()),
            "moved_to": str(target),
            "time": self.clock(),
        }
        self.faults.append(fault)
        log.error("capture store %s is corrupt (%s); moved it to %s and started a new one", self.db_path, exc, target)

    def quarantine_bytes(self) -> int:
        """Bytes kept in the quarantine directory (never deleted by the agent: reported)."""
        total = 0
        for path in self.quarantine_dir.rglob("*") if self.quarantine_dir.is_dir() else ():
            try:
                total += path.stat().st_size if path.is_file() else 0
            except OSError:
                pass
        return total

    def _move_dead_letter(self, batch_id: str, record_ids: list[str], reason: str | None = None) -> None:
        target = self.dead_letter_dir / batch_id
        target.mkdir(parents=True, exist_ok=True)
        if reason is not None:
            (target / "reason.txt").write_text(reason + "\n", encoding="utf-8")
        for rid in record_ids:
            source = self.records_dir / rid
            if source.exists():
                os.replace(source, target / rid)


def is_corruption(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(word in text for word in ("malformed", "not a database", "corrupt", "disk image"))
