"""What each dashboard page shows, read from the fleet store (and the dashboard's tables).

Every function returns plain data for a template; the charts are made here, as SVG.
"""

from __future__ import annotations

import json
from typing import Any

from edgekiln.fleet.dashboard.charts import Series, line_chart

MAX_OVERVIEW_ROWS = 1000
HISTORY_HEARTBEATS = 120
SHOWN_BATCHES = 12
SORTS = ("fleet", "device", "status", "last", "agent")
STATUSES = ("online", "offline", "never")


def deployment_plans(store: Any) -> list[dict[str, Any]]:
    """The deployments page's plans, newest first: ``{"name", "model", "version",
    "created_at", "status", "stages": [{"name", "status", "counts": {state: n}}]}``."""
    from edgekiln.fleet.dashboard import deploy_view
    from edgekiln.fleet.deployments import DeploymentStore

    return deploy_view.plans(DeploymentStore(store))


def deployment_results(
    store: Any, device_id: int | None = None
) -> tuple[dict[tuple[str, str], str], dict[tuple[str, str], list[dict[str, Any]]]]:
    """Per (fleet, device), of every device or of ``device_id`` only: its latest deployment
    state as a short word (``in-progress``, ``succeeded``, ``rolled-back``) and its history,
    newest first (``{"at", "plan", "stage", "status", "detail"}``)."""
    from edgekiln.fleet.dashboard import deploy_view
    from edgekiln.fleet.deployments import DeploymentStore

    return deploy_view.device_results(store, DeploymentStore(store), device_id)


def _status(row: dict[str, Any]) -> str:
    if row["last_heartbeat_at"] is None:
        return "never"
    return "online" if row["online"] else "offline"


def overview(
    store: Any,
    *,
    now: float,
    connected_seconds: float,
    fleet: str = "",
    status: str = "",
    model: str = "",
    sort: str = "fleet",
) -> dict[str, Any]:
    """Every device (filtered by fleet, status and model; sorted), with its models.

    The rows are the store's overview rows (:meth:`FleetStore.overview`), read unfiltered:
    the page's counts, fleets and model names are of the whole fleet, and its filters
    include "never" (no heartbeat yet), which the store's do not."""
    state, _ = deployment_results(store)
    devices = [
        {
            "fleet": r["fleet"],
            "name": r["device"],
            "agent_version": r["agent_version"] or "",
            "last_heartbeat_at": r["last_heartbeat_at"],
            "status": _status(r),
            "revoked": r["revoked"],
            "models": sorted((m["model_name"], m["model_version"]) for m in r["models"]),
            "deployment": state.get((r["fleet"], r["device"]), ""),
        }
        for r in store.overview(now=now, connected_seconds=connected_seconds)
    ]
    counts = {s: sum(1 for x in devices if x["status"] == s) for s in STATUSES}
    counts["total"] = len(devices)
    fleets = sorted({x["fleet"] for x in devices})
    model_names = sorted({name for x in devices for name, _ in x["models"]})
    shown = [
        x
        for x in devices
        if (not fleet or x["fleet"] == fleet)
        and (not status or x["status"] == status)
        and (not model or any(name == model for name, _ in x["models"]))
    ]
    keys = {
        "fleet": lambda x: (x["fleet"], x["name"]),
        "device": lambda x: (x["name"], x["fleet"]),
        "status": lambda x: (STATUSES.index(x["status"]), x["fleet"], x["name"]),
        "last": lambda x: (-(x["last_heartbeat_at"] or 0.0), x["fleet"], x["name"]),
        "agent": lambda x: (x["agent_version"], x["fleet"], x["name"]),
    }
    shown.sort(key=keys.get(sort, keys["fleet"]))
    return {
        "devices": shown[:MAX_OVERVIEW_ROWS],
        "matching": len(shown),
        "counts": counts,
        "fleets": fleets,
        "models": model_names,
    }


def device_history(store: Any, device_id: int, limit: int = HISTORY_HEARTBEATS) -> list[tuple[float, dict[str, Any]]]:
    """The device's newest ``limit`` heartbeats, oldest first: (received at, body)."""
    import sqlalchemy as sa

    h = store.heartbeats.c
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(h.received_at, h.body).where(h.device_id == device_id).order_by(h.id.desc()).limit(limit)
        ).all()
    out = []
    for received_at, body in reversed(rows):
        try:
            out.append((float(received_at), json.loads(body)))
        except ValueError:
            continue
    return out


def _metric(metrics: list[dict[str, Any]], name: str) -> float | None:
    for metric in metrics or []:
        if metric.get("metric_name") == name and isinstance(metric.get("value"), (int, float)):
            return float(metric["value"])
    return None


def device_charts(history: list[tuple[float, dict[str, Any]]]) -> dict[str, Any]:
    """Per model: inference count, latency p50/p99, errors; for the agent: CPU and memory."""

    def series(name: str, pick: Any) -> Series:
        points = []
        for at, body in history:
            value = pick(body)
            if value is not None:
                points.append((at, value))
        return Series(name, tuple(points))

    def model_metric(model: str, metric: str) -> Any:
        def pick(body: dict[str, Any]) -> float | None:
            for entry in body.get("models") or []:
                if entry.get("model_name") == model:
                    return _metric(entry.get("model_metrics"), metric)
            return None

        return pick

    names = sorted({e.get("model_name", "") for _, b in history for e in b.get("models") or []} - {""})
    models = [
        {
            "name": name,
            "charts": [
                line_chart(f"{name}: inferences", [series("count", model_metric(name, "inference_count"))]),
                line_chart(
                    f"{name}: latency",
                    [
                        series("p50", model_metric(name, "latency_p50_ms")),
                        series("p99", model_metric(name, "latency_p99_ms")),
                    ],
                    "ms",
                ),
                line_chart(f"{name}: errors", [series("errors", model_metric(name, "error_count"))]),
            ],
        }
        for name in names
    ]
    agent = [
        line_chart("agent CPU", [series("cpu", lambda b: _metric(b.get("agent_metrics"), "cpu_percent"))], "%"),
        line_chart(
            "agent memory",
            [series("rss", lambda b: _mib(_metric(b.get("agent_metrics"), "memory_rss_bytes")))],
            "MiB",
        ),
    ]
    return {"models": models, "agent": agent, "heartbeats": len(history)}


def _mib(value: float | None) -> float | None:
    return None if value is None else value / (1 << 20)


def capture_batches(store: Any, device_id: int, limit: int = SHOWN_BATCHES) -> list[dict[str, Any]]:
    """The device's newest capture batches, newest first."""
    import sqlalchemy as sa

    b = store.batches.c
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(b.id, b.key, b.record_count, b.bytes, b.received_at, b.objects)
            .where(b.device_id == device_id)
            .order_by(b.id.desc())
            .limit(limit)
        ).all()
    return [
        {
            "id": r.id,
            "name": r.key.split("/", 2)[-1],
            "records": r.record_count,
            "bytes": r.bytes,
            "received_at": r.received_at,
            "objects": len(json.loads(r.objects or "[]")),
        }
        for r in rows
    ]


def batch_key(store: Any, device_id: int, batch_id: int) -> str | None:
    import sqlalchemy as sa

    b = store.batches.c
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(b.key).where(b.id == batch_id, b.device_id == device_id)).first()
    return row[0] if row else None
