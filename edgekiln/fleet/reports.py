"""The fleet service's answers shaped from the store's rows: device summaries and
descriptions, capture listings and the fleet report (Edge Manager's fields)."""

from __future__ import annotations

import json
from typing import Any


def device_summary(row: Any, now: float, connected_seconds: float) -> dict[str, Any]:
    last = row["last_heartbeat_at"]
    return {
        "fleet": row["fleet"],
        "device": row["name"],
        "description": row["description"],
        "registered_at": row["registered_at"],
        "agent_version": row["agent_version"],
        "last_heartbeat_at": last,
        "connected": last is not None and now - last <= connected_seconds,
    }


def describe(
    row: Any,
    models: list[Any],
    counts: tuple[int, int, int, int],
    faults: list[Any],
    *,
    now: float,
    connected_seconds: float,
) -> dict[str, Any]:
    """A device's description: its summary, last heartbeat, models, captures and faults;
    ``counts`` is (heartbeats, capture records, capture batches, capture bytes)."""
    heartbeat_count, capture_count, batch_count, batch_bytes = counts
    summary = device_summary(row, now, connected_seconds)
    last = json.loads(row["last_heartbeat"]) if row["last_heartbeat"] else None
    summary.update(
        {
            "dead_letter_batches": row["dead_letter_batches"],
            "token_expires_at": row["token_expires_at"],
            "revoked_at": row["revoked_at"],
            "agent_metrics": {m["metric_name"]: m["value"] for m in (last or {}).get("agent_metrics", [])},
            "last_heartbeat_sent_at": (last or {}).get("timestamp"),
            "heartbeats_received": int(heartbeat_count),
            "models": [
                {
                    "model_name": m["model_name"],
                    "model_version": m["model_version"],
                    "latest_inference": m["latest_inference"],
                    "latest_sample_time": m["latest_sample"],
                    "metrics": json.loads(m["metrics"]),
                }
                for m in models
            ],
            "captures": {"records": int(capture_count), "batches": int(batch_count), "bytes": int(batch_bytes)},
            "faults": [dict(json.loads(d), reported_at=t) for _, d, t in faults],
        }
    )
    return summary


def captures_listing(fleet: str, name: str, batches: list[Any], records: list[Any]) -> dict[str, Any]:
    return {
        "fleet": fleet,
        "device": name,
        "batches": [
            {
                "key": b["key"],
                "objects": json.loads(b["objects"]),
                "records": b["record_count"],
                "bytes": b["bytes"],
                "received_at": b["received_at"],
            }
            for b in batches
        ],
        "records": [{"record_id": r[0], "model_name": r[1], "key": r[2]} for r in records],
    }


def fleet_report(
    fleet: str, devices: list[Any], models: list[Any], *, now: float, connected_seconds: float
) -> dict[str, Any]:
    """The fields of Edge Manager's GetDeviceFleetReport from a fleet's ``devices`` (id,
    agent version, last heartbeat) and their model rows."""
    connected = {d[0] for d in devices if d[2] is not None and now - d[2] <= connected_seconds}
    versions: dict[str, int] = {}
    for _, version, _last in devices:
        if version:
            versions[version] = versions.get(version, 0) + 1
    stats: dict[tuple[str, str], dict[str, int]] = {}
    for m in models:
        entry = stats.setdefault(
            (m["model_name"], m["model_version"]),
            {
                "offline_device_count": 0,
                "connected_device_count": 0,
                "active_device_count": 0,
                "sampling_device_count": 0,
            },
        )
        online = m["device_id"] in connected
        entry["connected_device_count" if online else "offline_device_count"] += 1
        if online and m["latest_inference"] is not None and now - m["latest_inference"] <= connected_seconds:
            entry["active_device_count"] += 1
        if online and m["latest_sample"] is not None and now - m["latest_sample"] <= connected_seconds:
            entry["sampling_device_count"] += 1
    return {
        "device_fleet_name": fleet,
        "report_generated": now,
        "device_stats": {"connected_device_count": len(connected), "registered_device_count": len(devices)},
        "agent_versions": [{"version": v, "agent_count": n} for v, n in sorted(versions.items())],
        "model_stats": [
            {"model_name": name, "model_version": version, **counts}
            for (name, version), counts in sorted(stats.items())
        ],
    }
