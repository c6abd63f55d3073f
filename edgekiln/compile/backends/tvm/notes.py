"""edgekiln's small JSON notes in the tuning cache and beside tuning databases: exhausted
searches and kept plans (tuner.py), shipped records known to build (shipped_check.py).

A note only saves work: without it, the work is done again. So a note that is missing, too
big, not JSON or of the wrong shape reads as empty rather than failing a compile, and one is
replaced whole, never torn: compile's variant build writes in a child process while its
parent writes too (variants.py), so each writer stages in a file of its own.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, TypeVar

MAX_BYTES = 1 << 20

T = TypeVar("T", dict, list)


def read(path: Path, kind: type[T]) -> T:
    """The note's JSON if it is a ``kind`` (dict or list); an empty one when the note is
    missing, over ``MAX_BYTES``, malformed or of another shape."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
        if len(raw) > MAX_BYTES:
            return kind()
        data = json.loads(raw)
    except (OSError, ValueError):
        return kind()
    return data if isinstance(data, kind) else kind()


def write(path: Path, data: dict[str, Any] | list[Any]) -> None:
    """Replace the note with ``data`` in one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        staging.write_text(json.dumps(data, indent=0, sort_keys=True), encoding="utf-8")
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
