"""Heartbeats with known metrics, and the roll-up checks run on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
import uuid

from edgekiln.fleet import rollup
from edgekiln.fleet.bodies import Heartbeat
from edgekiln.fleet.store import FleetStore

NOW = 1_800_000_000.0  # a whole minute
HOUR = 3600.0


def beat(cpu: float, latency: float, *, version: str = "1", agent: str = "0.1.0"):
    """A heartbeat with one agent metric (cpu_percent) and one model metric (latency_p50_ms)."""
    return Heartbeat(
        heartbeat_id=uuid.uuid4().hex,
        timestamp=NOW,
        agent_version=agent,
        agent_metrics=[{"metric_name": "cpu_percent", "value": cpu}],
        models=[
            {
                "model_name": "cls",
                "model_version": version,
                "model_metrics": [{"metric_name": "latency_p50_ms", "value": latency}],
            }
        ],
    ).record()


def fill(store: FleetStore, fleet: str) -> tuple:
    """Two devices; ``a`` sends 3 heartbeats in minute 0, 2 in minute 1 and 1 in minute 2,
    ``b`` one in minute 0; all arrive at NOW + offset."""
    a = store.authenticate(store.register_device(fleet, "a", now=NOW))
    b = store.authenticate(store.register_device(fleet, "b", now=NOW))
    for offset, cpu in ((0, 10), (20, 20), (40, 30), (60, 40), (90, 50), (130, 60)):
        assert store.add_heartbeats(a, [beat(cpu, cpu / 10)], NOW + offset) == (1, 0)
    store.add_heartbeats(b, [beat(99, 9.9)], NOW + 5)
    return a, b


def metric(series: dict, minute: float, model: str, name: str) -> dict:
    (point,) = [
        p for p in series["metrics"] if (p["minute"], p["model_name"], p["metric_name"]) == (minute, model, name)
    ]
    return point


def check_rollup(store: FleetStore, fleet: str) -> None:
    """Fold minutes 0 and 1 (the cutoff is minute 2 an hour ago): the series and counts that
    readers see do not change, the raw rows go, the aggregates hold the sums."""
    a, b = fill(store, fleet)
    before = store.device_minutes(fleet, "a")
    assert [(p["minute"], p["heartbeats"]) for p in before["heartbeats"]] == [(NOW, 3), (NOW + 60, 2), (NOW + 120, 1)]
    result = rollup.roll_up(store, NOW + 120 + HOUR, raw_retention_seconds=HOUR, aggregate_retention_seconds=10 * HOUR)
    assert (result.heartbeats, result.dropped) == (6, 0)  # a's 5 and b's 1 before the cutoff
    # One row per device and minute: a's minutes 0 and 1, b's minute 0.
    assert result.minutes == 3
    assert store.heartbeat_history(fleet, "a")["rolled_up"] == 5
    assert len(store.heartbeat_history(fleet, "a")["heartbeat_ids"]) == 1
    after = store.device_minutes(fleet, "a")
    assert after == before
    cpu = metric(after, NOW, "", "cpu_percent")
    assert (cpu["samples"], cpu["total"], cpu["minimum"], cpu["maximum"]) == (3, 60.0, 10.0, 30.0)
    latency = metric(after, NOW + 60, "cls", "latency_p50_ms")
    assert (latency["samples"], latency["total"], latency["minimum"], latency["maximum"]) == (2, 9.0, 4.0, 5.0)
    described = store.describe_device(fleet, "a", now=NOW + 200, connected_seconds=60)
    assert described["heartbeats_received"] == 6
    # The fleet report reads the devices' latest state, which the roll-up leaves alone.
    report = store.fleet_report(fleet, now=NOW + 200, connected_seconds=3600)
    assert report["device_stats"] == {"connected_device_count": 2, "registered_device_count": 2}
    assert [(m["model_name"], m["model_version"], m["connected_device_count"]) for m in report["model_stats"]] == [
        ("cls", "1", 2)
    ]
    # Nothing more to fold: a second run changes nothing.
    again = rollup.roll_up(store, NOW + 120 + HOUR, raw_retention_seconds=HOUR)
    assert again == rollup.RollupResult(0, 0, 0)
    assert store.device_minutes(fleet, "a") == before
    # A heartbeat that arrives in a minute already rolled up adds to its aggregate.
    store.add_heartbeats(a, [beat(5, 0.5)], NOW + 59)
    rollup.roll_up(store, NOW + 120 + HOUR, raw_retention_seconds=HOUR)
    cpu = metric(store.device_minutes(fleet, "a"), NOW, "", "cpu_percent")
    assert (cpu["samples"], cpu["total"], cpu["minimum"], cpu["maximum"]) == (4, 65.0, 5.0, 30.0)
    assert store.device_minutes(fleet, "b")["heartbeats"] == [{"minute": NOW, "heartbeats": 1}]
    # Past the aggregate retention: minute 0's rows (a and b) go, minute 1's stay.
    dropped = rollup.roll_up(
        store, NOW + 60 + 10 * HOUR, raw_retention_seconds=HOUR, aggregate_retention_seconds=10 * HOUR
    )
    assert dropped.dropped == 2
    assert [p["minute"] for p in store.device_minutes(fleet, "a")["heartbeats"]] == [NOW + 60, NOW + 120]


def check_concurrent_rollup(store: FleetStore, fleet: str, workers: int = 4) -> None:
    """Several roll-ups at once, in small batches, count every heartbeat exactly once."""
    device = store.authenticate(store.register_device(fleet, "busy", now=NOW))
    for i in range(300):
        store.add_heartbeats(device, [beat(float(i), 1.0)], NOW + i)  # minutes 0-4
    errors: list[BaseException] = []

    def run() -> None:
        try:
            rollup.roll_up(store, NOW + 300 + HOUR, raw_retention_seconds=HOUR, batch=17)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    series = store.device_minutes(fleet, "busy")
    assert [p["heartbeats"] for p in series["heartbeats"]] == [60] * 5
    cpu = [p for p in series["metrics"] if p["metric_name"] == "cpu_percent"]
    assert [p["samples"] for p in cpu] == [60] * 5
    assert sum(p["total"] for p in cpu) == sum(range(300))
    assert store.heartbeat_history(fleet, "busy") == {"heartbeat_ids": [], "rolled_up": 300}
