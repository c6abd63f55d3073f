"""Heartbeat roll-up: raw heartbeats past a retention window become per-minute aggregates.

A device at the agent's default period (30 s) sends 2,880 heartbeats a day; kept raw, a fleet's
history grows without bound.  Past ``raw_retention_seconds`` (by arrival at the service: a
device's clock may be wrong) the raw rows are folded, one device and minute at a time, into
``heartbeat_minutes`` (how many arrived) and ``metric_minutes`` (per model and metric: samples,
sum, least, greatest), and aggregates past ``aggregate_retention_seconds`` are dropped, so what
is stored stays bounded.

Every worker of the service may run the roll-up at the same moment: each batch is one
transaction that *deletes* the raw rows it folds (``DELETE … RETURNING``) and merges their sums
into the aggregates (an upsert that adds), so a row folded by one worker is gone for the others
— PostgreSQL makes a concurrent delete of the same row wait and then skip it, SQLite lets one
writer in at a time — and nothing is counted twice.  A batch that fails rolls back whole.

Readers see raw and rolled-up data as one: :func:`device_minutes` folds the raw heartbeats of a
range with the same code and adds the stored aggregates.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:
    from edgekiln.fleet.store import FleetStore

MINUTE = 60
BATCH = 5000

log = logging.getLogger(__name__)


def minute_of(t: float) -> int:
    """The start of ``t``'s minute, in whole seconds since the epoch."""
    return int(t // MINUTE) * MINUTE


@dataclass(frozen=True)
class RollupResult:
    """What one roll-up did: raw heartbeats folded, aggregate rows merged, old ones dropped."""

    heartbeats: int = 0
    metric_rows: int = 0
    dropped: int = 0


@dataclass
class Fold:
    """Heartbeats summed per device and minute; metrics per device, minute, model, metric
    as [samples, sum, least, greatest]."""

    heartbeats: dict[tuple[int, int], int] = field(default_factory=dict)
    metrics: dict[tuple[int, int, str, str], list[float]] = field(default_factory=dict)

    def add(self, device_id: int, received_at: float, body: str) -> None:
        minute = minute_of(received_at)
        key = (device_id, minute)
        self.heartbeats[key] = self.heartbeats.get(key, 0) + 1
        for model, metric, value in metric_samples(body):
            self.merge((device_id, minute, model, metric), 1, value, value, value)

    def merge(self, key: tuple[int, int, str, str], samples: int, total: float, low: float, high: float) -> None:
        entry = self.metrics.get(key)
        if entry is None:
            self.metrics[key] = [samples, total, low, high]
        else:
            entry[0] += samples
            entry[1] += total
            entry[2] = min(entry[2], low)
            entry[3] = max(entry[3], high)


def metric_samples(body: str) -> Iterator[tuple[str, str, float]]:
    """(model name or "" for the agent, metric name, value) of a stored heartbeat body."""
    data = json.loads(body)
    for metric in data.get("agent_metrics", ()):
        yield "", metric["metric_name"][:128], float(metric["value"])
    for model in data.get("models", ()):
        for metric in model.get("model_metrics", ()):
            yield model["model_name"], metric["metric_name"][:128], float(metric["value"])


def roll_up(
    store: FleetStore,
    now: float,
    *,
    raw_retention_seconds: float,
    aggregate_retention_seconds: float | None = None,
    batch: int = BATCH,
    stop: Callable[[], bool] = lambda: False,
) -> RollupResult:
    """Fold every raw heartbeat that arrived before the minute ``raw_retention_seconds`` ago
    began, ``batch`` rows per transaction, then drop aggregates older than
    ``aggregate_retention_seconds`` (kept for ever when None).  ``stop`` is asked between
    batches: a service shutting down leaves the rest for the next run."""
    cutoff = minute_of(now - raw_retention_seconds)
    folded = merged = 0
    while not stop():
        with store.engine.begin() as conn:
            rows = _take(conn, store, cutoff, batch)
            fold = Fold()
            for device_id, received_at, body in rows:
                fold.add(device_id, received_at, body)
            merged += _merge(conn, store, fold)
        folded += len(rows)
        if len(rows) < batch:
            break
    dropped = 0
    if aggregate_retention_seconds is not None:
        dropped = _drop_aggregates(store, minute_of(now - aggregate_retention_seconds))
    return RollupResult(folded, merged, dropped)


def _take(conn: Any, store: FleetStore, cutoff: int, batch: int) -> list[Any]:
    """Delete up to ``batch`` of the oldest raw heartbeats before ``cutoff``; their rows."""
    import sqlalchemy as sa

    h = store.heartbeats
    oldest = sa.select(h.c.id).where(h.c.received_at < cutoff).order_by(h.c.received_at).limit(batch)
    return conn.execute(
        h.delete().where(h.c.id.in_(oldest.scalar_subquery())).returning(h.c.device_id, h.c.received_at, h.c.body)
    ).all()


def _merge(conn: Any, store: FleetStore, fold: Fold) -> int:
    """Add ``fold`` to the stored aggregates (insert, or add to the row that is there)."""
    hb_rows = [{"device_id": d, "minute": m, "heartbeats": n} for (d, m), n in fold.heartbeats.items()]
    metric_rows = [
        {"device_id": d, "minute": m, "model_name": model, "metric_name": metric, **_sums(v)}
        for (d, m, model, metric), v in fold.metrics.items()
    ]
    if hb_rows:
        t = store.heartbeat_minutes
        _upsert(conn, t, hb_rows, ("device_id", "minute"), lambda ex: {"heartbeats": t.c.heartbeats + ex.heartbeats})
    if metric_rows:
        t = store.metric_minutes
        _upsert(conn, t, metric_rows, ("device_id", "minute", "model_name", "metric_name"), _metric_sums(conn, t))
    return len(hb_rows) + len(metric_rows)


def _sums(v: list[float]) -> dict[str, float]:
    return {"samples": int(v[0]), "total": v[1], "minimum": v[2], "maximum": v[3]}


def _metric_sums(conn: Any, t: Any) -> Callable[[Any], dict[str, Any]]:
    import sqlalchemy as sa

    # Two-argument min/max are SQLite's least/greatest.
    pg = conn.dialect.name == "postgresql"
    least, greatest = (sa.func.least, sa.func.greatest) if pg else (sa.func.min, sa.func.max)
    return lambda ex: {
        "samples": t.c.samples + ex.samples,
        "total": t.c.total + ex.total,
        "minimum": least(t.c.minimum, ex.minimum),
        "maximum": greatest(t.c.maximum, ex.maximum),
    }


def _upsert(conn: Any, table: Any, rows: list[dict[str, Any]], keys: tuple[str, ...], sets: Callable) -> None:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(table)
    conn.execute(stmt.on_conflict_do_update(index_elements=list(keys), set_=sets(stmt.excluded)), rows)


def _drop_aggregates(store: FleetStore, before: int) -> int:
    dropped = 0
    with store.engine.begin() as conn:
        for table in (store.heartbeat_minutes, store.metric_minutes):
            dropped += conn.execute(table.delete().where(table.c.minute < before)).rowcount or 0
    return dropped


# -- reading raw and rolled-up data as one ---------------------------------------------
def heartbeat_count(conn: Any, store: FleetStore, device_id: int) -> int:
    """Heartbeats the device sent that are stored raw or counted in an aggregate."""
    import sqlalchemy as sa

    raw = conn.execute(
        sa.select(sa.func.count()).select_from(store.heartbeats).where(store.heartbeats.c.device_id == device_id)
    ).scalar()
    t = store.heartbeat_minutes
    rolled = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(t.c.heartbeats), 0)).where(t.c.device_id == device_id))
    return int(raw) + int(rolled.scalar())


def device_minutes(
    store: FleetStore, device_id: int, since: float | None = None, until: float | None = None
) -> dict[str, list[dict[str, Any]]]:
    """A device's heartbeats and metrics per minute of arrival in [since, until), raw and
    rolled-up together, oldest first: ``{"heartbeats": [{minute, heartbeats}], "metrics":
    [{minute, model_name, metric_name, samples, total, minimum, maximum}]}``."""
    import sqlalchemy as sa

    h, hm, mm = store.heartbeats, store.heartbeat_minutes, store.metric_minutes
    fold = Fold()
    with store.engine.connect() as conn:
        raw = sa.select(h.c.received_at, h.c.body).where(h.c.device_id == device_id)
        raw = _in_range(raw, h.c.received_at, since, until)
        for received_at, body in conn.execute(raw):
            fold.add(device_id, received_at, body)
        counts = _in_range(
            sa.select(hm.c.minute, hm.c.heartbeats).where(hm.c.device_id == device_id), hm.c.minute, since, until
        )
        for minute, n in conn.execute(counts):
            fold.heartbeats[(device_id, minute)] = fold.heartbeats.get((device_id, minute), 0) + n
        cols = (mm.c.minute, mm.c.model_name, mm.c.metric_name, mm.c.samples, mm.c.total, mm.c.minimum, mm.c.maximum)
        metrics = _in_range(sa.select(*cols).where(mm.c.device_id == device_id), mm.c.minute, since, until)
        for minute, model, metric, *sums in conn.execute(metrics):
            fold.merge((device_id, minute, model, metric), *sums)
    return {
        "heartbeats": [{"minute": m, "heartbeats": n} for (_, m), n in sorted(fold.heartbeats.items())],
        "metrics": [
            {"minute": m, "model_name": model, "metric_name": metric, **_sums(v)}
            for (_, m, model, metric), v in sorted(fold.metrics.items())
        ],
    }


def _in_range(query: Any, column: Any, since: float | None, until: float | None) -> Any:
    if since is not None:
        query = query.where(column >= since)
    if until is not None:
        query = query.where(column < until)
    return query


# -- in the service ---------------------------------------------------------------------
class RollupLoop:
    """Runs :func:`roll_up` every ``interval`` seconds (with jitter, so that several workers
    spread out) in a daemon thread, until :meth:`stop`; a failed run is logged and retried
    at the next interval."""

    def __init__(
        self,
        store: FleetStore,
        interval: float,
        run: Callable[[FleetStore, float, Callable[[], bool]], RollupResult],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.interval = interval
        self.run = run
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="edgekiln-rollup", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval * random.uniform(0.5, 1.0)):
            self.run_once()

    def run_once(self) -> RollupResult | None:
        import sqlalchemy as sa

        try:
            result = self.run(self.store, self.clock(), self._stop.is_set)
        except sa.exc.SQLAlchemyError as exc:
            log.warning(
                "heartbeat roll-up failed, retried in %g s: %s", self.interval, " ".join(str(exc).split())[:300]
            )
            return None
        if result.heartbeats or result.dropped:
            log.info("rolled up %d heartbeats, dropped %d old aggregates", result.heartbeats, result.dropped)
        return result
