"""Serving the fleet app: in this process, or as several uvicorn worker processes.

The workers share nothing in memory, so any of them may answer any request: devices, tokens
(only their hashes, looked up on every request), heartbeats, the audit trail and its
once-a-minute refusal entries, and the roll-up's progress all live in the database; captured
objects in the object store.  What each worker needs to agree on is handed to it by the parent
in one environment variable: the options, the admin token, and the secret that signs the
local object store's upload URLs (a URL one worker signs, another verifies).  The clock is
each process's wall clock.  The parent creates the schema and the bucket once, before the
workers start, so that they do not race to create them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from edgekiln.errors import UserError
from edgekiln.fleet.options import FleetOptions

OPTIONS_ENV = "EDGEKILN_FLEET_WORKER_OPTIONS"
MAX_WORKERS = 64


def options_to_json(options: FleetOptions) -> str:
    fields = dataclasses.asdict(options)
    fields["objects_dir"] = None if options.objects_dir is None else str(options.objects_dir)
    fields["local_secret"] = options.local_secret.hex()
    return json.dumps(fields)


def options_from_json(text: str) -> FleetOptions:
    fields: dict[str, Any] = json.loads(text)
    fields["objects_dir"] = None if fields["objects_dir"] is None else Path(fields["objects_dir"])
    fields["local_secret"] = bytes.fromhex(fields["local_secret"])
    return FleetOptions(**fields)


def check_workers(workers: int) -> None:
    """Refuse a worker count outside 1..MAX_WORKERS (a UserError naming --workers)."""
    if not 1 <= workers <= MAX_WORKERS:
        raise UserError(f"--workers {workers} is not between 1 and {MAX_WORKERS}")


def worker_app() -> Any:
    """The app of one worker process (uvicorn's factory), from the parent's options."""
    from edgekiln.fleet.app import create_app

    text = os.environ.get(OPTIONS_ENV)
    if not text:
        raise UserError(f"a fleet worker needs ${OPTIONS_ENV}; start it with edgekiln fleet serve --workers N")
    return create_app(options_from_json(text), prepare=False)


def serve(options: FleetOptions, *, host: str, port: int, workers: int = 1, log_level: str = "warning") -> Any:
    """Run the service until stopped; returns the app it served (one worker) or None."""
    import uvicorn

    from edgekiln.fleet.app import build_object_store, create_app
    from edgekiln.fleet.store import FleetStore

    check_workers(workers)
    if workers == 1:
        app = create_app(options)
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
        return app
    store = FleetStore(options.database_url)
    try:
        store.create_schema()
    finally:
        store.close()
    build_object_store(options).ensure_ready()
    os.environ[OPTIONS_ENV] = options_to_json(options)
    uvicorn.run(
        f"{__name__}:worker_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=False,
    )
    return None
