"""Heartbeat roll-up: raw heartbeats past a retention window become per-minute aggregates.

A device at the agent's default period (30 s) sends 2,880 heartbeats a day; kept raw, a fleet's
history grows without bound.  Past ``raw_retention_seconds`` (by arrival at the service: a
device's clock may be wrong) the raw rows are folded into one ``heartbeat_minutes`` row per
device and minute — how many heartbeats arrived, and per model and metric the samples, sum,
least and greatest — and rows past ``aggregate_retention_seconds`` are dropped, so what is
stored stays bounded.

Every worker of the service may run the roll-up at the same moment.  Each batch is one
transaction that deletes the raw rows it folds (``DELETE … RETURNING``), reads the minutes they
fall in, merges, and writes them back; on PostgreSQL the batch first takes a transaction-scoped
advisory lock, on SQLite the delete takes the one write lock, so batches run one at a time,
a row folded by one is gone for the next, and nothing is counted twice.  A batch that fails
rolls back whole.

Readers see raw and rolled-up data as one: :func:`device_minutes` folds the raw heartbeats of a
range with the same code and adds the stored minutes.
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
KEYS_PER_QUERY = 2000  # (device, minute) pairs per IN: 4,000 parameters, within SQLite's limit
# pg_advisory_xact_lock's key for the roll-up ("ekroll" in ASCII).
ADVISORY_LOCK = 0x656B726F6C6C

log = logging.getLogger(__name__)


def minute_of(t: float) -> int:
    """The start of ``t``'s minute, in whole seconds since the epoch."""
    return int(t // MINUTE) * MINUTE


@dataclass(frozen=True)
class RollupResult:
    """What one roll-up did: raw heartbeats folded, minute rows written, old ones dropped."""

    heartbeats: int = 0
    minutes: int = 0
    dropped: int = 0


@dataclass
class Fold:
    """Heartbeats counted per (device, minute), and per (device, minute) the metrics by
    (model, metric) as [samples, sum, least, greatest]."""

    heartbeats: dict[tuple[int, int], int] = field(default_factory=dict)
    metrics: dict[tuple[int, int], dict[tuple[str, str], list[float]]] = field(default_factory=dict)

    def add(self, device_id: int, received_at: float, body: str) -> None:
        """Add one raw heartbeat."""
        key = (device_id, minute_of(received_at))
        self.heartbeats[key] = self.heartbeats.get(key, 0) + 1
        for model, metric, value in metric_samples(body):
            self.merge(key, (model, metric), 1, value, value, value)

    def add_stored(self, device_id: int, minute: int, heartbeats: int, metrics: str) -> None:
        """Add a stored minute row (its count and its metrics' JSON)."""
        key = (device_id, minute)
        self.heartbeats[key] = self.heartbeats.get(key, 0) + heartbeats
        for model, named in json.loads(metrics).items():
            for metric, (samples, total, low, high) in named.items():
                self.merge(key, (model, metric), samples, total, low, high)

    def merge(
        self, key: tuple[int, int], name: tuple[str, str], samples: int, total: float, low: float, high: float
    ) -> None:
        metrics = self.metrics.setdefault(key, {})
        entry = metrics.get(name)
        if entry is None:
            metrics[name] = [samples, total, low, high]
        else:
            entry[0] += samples
            entry[1] += total
            entry[2] = min(entry[2], low)
            entry[3] = max(entry[3], high)

    def metrics_json(self, key: tuple[int, int]) -> str:
        """One minute's metrics as stored: ``{model: {metric: [samples, sum, min, max]}}``."""
        out: dict[str, dict[str, list[float]]] = {}
        for (model, metric), v in self.metrics.get(key, {}).items():
            out.setdefault(model, {})[metric] = [int(v[0]), v[1], v[2], v[3]]
        return json.dumps(out, separators=(",", ":"), sort_keys=True)


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
    import sqlalchemy as sa

    cutoff = minute_of(now - raw_retention_seconds)
    folded = merged = 0
    while not stop():
        with store.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK})
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
    """Add ``fold`` to the stored minutes: read the rows of its minutes, merge, write back
    (the caller holds the roll-up's lock, so nobody writes them meanwhile)."""
    import sqlalchemy as sa

    t = store.heartbeat_minutes
    keys = list(fold.heartbeats)
    for start in range(0, len(keys), KEYS_PER_QUERY):
        chunk = keys[start : start + KEYS_PER_QUERY]
        stored = sa.select(t.c.device_id, t.c.minute, t.c.heartbeats, t.c.metrics).where(
            sa.tuple_(t.c.device_id, t.c.minute).in_(chunk)
        )
        for device_id, minute, count, metrics in conn.execute(stored):
            fold.add_stored(device_id, minute, count, metrics)
    rows = [
        {"device_id": d, "minute": m, "heartbeats": n, "metrics": fold.metrics_json((d, m))}
        for (d, m), n in fold.heartbeats.items()
    ]
    if rows:
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        stmt = insert(t)
        upsert = stmt.on_conflict_do_update(
            index_elements=["device_id", "minute"],
            set_={"heartbeats": stmt.excluded.heartbeats, "metrics": stmt.excluded.metrics},
        )
        conn.execute(upsert, rows)
    return len(rows)


def _sums(v: list[float]) -> dict[str, float]:
    return {"samples": int(v[0]), "total": v[1], "minimum": v[2], "maximum": v[3]}


def _drop_aggregates(store: FleetStore, before: int) -> int:
    t = store.heartbeat_minutes
    with store.engine.begin() as conn:
        return conn.execute(t.delete().where(t.c.minute < before)).rowcount or 0


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

    h, t = store.heartbeats, store.heartbeat_minutes
    fold = Fold()
    with store.engine.connect() as conn:
        raw = _in_range(
            sa.select(h.c.received_at, h.c.body).where(h.c.device_id == device_id), h.c.received_at, since, until
        )
        for received_at, body in conn.execute(raw):
            fold.add(device_id, received_at, body)
        stored = sa.select(t.c.minute, t.c.heartbeats, t.c.metrics).where(t.c.device_id == device_id)
        for minute, count, metrics in conn.execute(_in_range(stored, t.c.minute, since, until)):
            fold.add_stored(device_id, minute, count, metrics)
    return {
        "heartbeats": [{"minute": m, "heartbeats": n} for (_, m), n in sorted(fold.heartbeats.items())],
        "metrics": [
            {"minute": m, "model_name": model, "metric_name": metric, **_sums(v)}
            for (_, m), named in sorted(fold.metrics.items())
            for (model, metric), v in sorted(named.items())
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
