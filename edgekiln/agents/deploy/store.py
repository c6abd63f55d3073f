"""What deployments keep on disk, each write durable (:func:`edgekiln.agents.durable.write_durable`):
a power cut leaves the old or the new content and never a torn file.

- :class:`VersionFloor`: the highest version committed per model handle (anti-rollback).
- :class:`DeploymentLog`: every deployment the device took on, its step and its result,
  and whether the fleet has accepted a heartbeat that carried that result.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from edgekiln.agents.durable import write_durable

# A deployment log far larger than any device's history means it was not written by us.
MAX_STATE_BYTES = 8 << 20
# Finished and reported deployments beyond this many (oldest first) are forgotten.
KEEP_FINISHED = 200

FINAL = ("SUCCEEDED", "FAILED", "ROLLED_BACK", "FAILED_UNABLE_TO_ROLLBACK")


def log_path(state_dir: str | Path) -> Path:
    """Where the agent with ``state_dir`` keeps its :class:`DeploymentLog` (the agent writes
    it; ``agent-ctl deploy`` and ``deployments`` read it)."""
    return Path(state_dir) / "deploy" / "deployments.json"


def read_json(path: Path, default: Any) -> Any:
    """The JSON in ``path``; ``default`` when it does not exist. A file that is not ours (too
    large, not JSON) raises ValueError: guessing would undo the anti-rollback record."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        return default
    if len(data) > MAX_STATE_BYTES:
        raise ValueError(f"{path} is over {MAX_STATE_BYTES >> 20} MiB")
    return json.loads(data)


class VersionFloor:
    """The highest version committed per handle; a package at or below it is refused (an
    equal version is the one installed already)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        raw = read_json(self.path, {})
        if not isinstance(raw, dict):
            raise ValueError(f"{self.path} is not a JSON object")
        self._versions = {str(k): int(v) for k, v in raw.items()}

    def get(self, handle: str) -> int:
        with self._lock:
            return self._versions.get(handle, 0)

    def raise_to(self, handle: str, version: int) -> None:
        with self._lock:
            if version <= self._versions.get(handle, 0):
                return
            self._versions[handle] = version
            write_durable(self.path, json.dumps(self._versions, sort_keys=True).encode())


class DeploymentLog:
    """deployment id -> its record: the deployment as the fleet gave it (``spec``), the step
    it reached (``step``), its result fields (``status``, ``reason``, ...), and ``reported``
    (the latest result reached the fleet). Every change is written before it is acted on."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        raw = read_json(self.path, {"deployments": {}})
        records = raw.get("deployments") if isinstance(raw, dict) else None
        if not isinstance(records, dict):
            raise ValueError(f"{self.path} holds no deployments object")
        self._records: dict[str, dict[str, Any]] = records

    def get(self, deployment_id: str) -> dict[str, Any] | None:
        with self._lock:
            record = self._records.get(deployment_id)
            return dict(record) if record is not None else None

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._records.values()]

    def update(self, deployment_id: str, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into the record (created if new) and write the log durably.
        A change of status marks the result as not yet reported."""
        with self._lock:
            record = dict(self._records.get(deployment_id, {"deployment_id": deployment_id}))
            if "status" in fields or "reason" in fields:
                fields.setdefault("reported", False)
            record.update(fields)
            self._records[deployment_id] = record
            self._forget_old()
            write_durable(self.path, json.dumps({"deployments": self._records}, sort_keys=True).encode())
            return dict(record)

    def _forget_old(self) -> None:
        done = [r for r in self._records.values() if r.get("status") in FINAL and r.get("reported")]
        for record in sorted(done, key=lambda r: r.get("updated_at") or 0)[: max(0, len(done) - KEEP_FINISHED)]:
            del self._records[record["deployment_id"]]

    def unreported(self, limit: int = 20) -> list[dict[str, Any]]:
        with self._lock:
            pending = [dict(r) for r in self._records.values() if not r.get("reported") and r.get("status")]
        return sorted(pending, key=lambda r: r.get("updated_at") or 0)[:limit]

    def mark_reported(self, results: list[dict[str, Any]]) -> None:
        """The fleet accepted a heartbeat carrying ``results``: those that are still the
        latest for their deployment need not be sent again."""
        with self._lock:
            changed = False
            for result in results:
                record = self._records.get(str(result.get("deployment_id")))
                if record is None or record.get("reported"):
                    continue
                if record.get("status") == result.get("status") and record.get("updated_at") == result.get(
                    "updated_at"
                ):
                    record["reported"] = True
                    changed = True
            if changed:
                write_durable(self.path, json.dumps({"deployments": self._records}, sort_keys=True).encode())
