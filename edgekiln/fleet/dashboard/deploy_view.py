"""The dashboard's view of deployments: plans with per-stage device counts, and per device
its latest deployment state and its history, read through the fleet's deployment store."""

from __future__ import annotations

from typing import Any

# The newest plans shown; describing a plan reads its stages and their devices.
MAX_PLANS = 50
# Per device, the newest deployment results kept for its history.
MAX_HISTORY = 20
# A device result's status as the overview shows it: one short word.
_WORDS = {
    "DEPLOYING": "in-progress",
    "SUCCEEDED": "succeeded",
    "FAILED": "failed",
    "ROLLED_BACK": "rolled-back",
    "FAILED_UNABLE_TO_ROLLBACK": "unable-to-roll-back",
}


def plans(deployments: Any) -> list[dict[str, Any]]:
    """The newest plans, newest first, as the deployments page renders them."""
    out = []
    for plan in reversed(deployments.list_plans(newest=MAX_PLANS)):
        config = plan["model_configs"][0]
        out.append(
            {
                "name": plan["edge_deployment_plan_name"],
                "model": config["model_handle"],
                "version": config["model_version"],
                "created_at": plan["creation_time"],
                "status": plan["status"],
                "stages": [
                    {
                        "name": stage["stage_name"],
                        "status": stage["deployment_status"]["stage_status"],
                        # Only the states some device is in: a badge per state present.
                        "counts": {k: n for k, n in stage["device_counts"].items() if n},
                    }
                    for stage in plan["stages"]
                ],
            }
        )
    return out


def device_results(store: Any, deployments: Any, device_id: int | None = None) -> tuple[dict, dict]:
    """Per (fleet, device), of every device or of ``device_id`` only: the latest result's
    short word, and the results newest first."""
    import sqlalchemy as sa

    r, d = deployments.results.c, store.devices.c
    query = (
        sa.select(d.fleet, d.name, r.deployment_id, r.status, r.reason, r.updated_at)
        .join_from(deployments.results, store.devices, r.device_id == d.id)
        .order_by(r.updated_at.desc())
    )
    if device_id is not None:
        query = query.where(r.device_id == device_id)
    state: dict[tuple[str, str], str] = {}
    history: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with store.engine.connect() as conn:
        for row in conn.execute(query):
            key = (row.fleet, row.name)
            state.setdefault(key, _WORDS.get(row.status, row.status.lower()))
            entries = history.setdefault(key, [])
            if len(entries) < MAX_HISTORY:
                # deployment ids are "plan:stage:handle:version" of names without colons
                plan, stage = (row.deployment_id.split(":") + ["", ""])[:2]
                entries.append(
                    {"at": row.updated_at, "plan": plan, "stage": stage, "status": row.status, "detail": row.reason}
                )
    return state, history
