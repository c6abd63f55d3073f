"""Heartbeat roll-up and the overview's rows on a real PostgreSQL server."""

from __future__ import annotations

import uuid

from edgekiln.fleet.store import FleetStore
from tests.unit.fleet.rollup_cases import NOW, beat, check_concurrent_rollup, check_rollup


def _store(url: str) -> FleetStore:
    """A store on a database of its own: a roll-up folds every device's heartbeats, and the
    server is shared with the other PostgreSQL tests."""
    import sqlalchemy as sa

    from edgekiln.fleet.database import normalize_url

    name = f"rollup_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(normalize_url(url), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    store = FleetStore(f"{url.rsplit('/', 1)[0]}/{name}")
    store.create_schema()
    return store


def test_rollup_on_postgresql(postgres):
    store = _store(postgres)
    try:
        check_rollup(store, f"pg-{uuid.uuid4().hex[:8]}")
    finally:
        store.close()


def test_concurrent_rollups_on_postgresql(postgres):
    store = _store(postgres)
    try:
        check_concurrent_rollup(store, f"pg-{uuid.uuid4().hex[:8]}", workers=6)
    finally:
        store.close()


def test_overview_on_postgresql(postgres):
    store = _store(postgres)
    fleet = f"pg-{uuid.uuid4().hex[:8]}"
    try:
        a = store.authenticate(store.register_device(fleet, "a", now=NOW))
        store.register_device(fleet, "b", now=NOW)
        store.add_heartbeats(a, [beat(1, 1, version="7", agent="2.0.0")], NOW)
        rows = store.overview(now=NOW + 1, connected_seconds=60, fleet=fleet)
        assert [(r["device"], r["online"], r["agent_version"]) for r in rows] == [
            ("a", True, "2.0.0"),
            ("b", False, None),
        ]
        assert rows[0]["models"] == [{"model_name": "cls", "model_version": "7"}]
        online = store.overview(now=NOW + 1, connected_seconds=60, fleet=fleet, status="online", model="cls")
        assert [r["device"] for r in online] == ["a"]
    finally:
        store.close()
