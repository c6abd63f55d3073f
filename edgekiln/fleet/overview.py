"""The fleet overview's rows: every device, online or offline, its agent and its models.

Two indexed queries whatever the history's size: the devices (their last heartbeat's arrival
and agent version are kept on the device's row at ingest, so no heartbeat is read), and
the model rows of those devices; they are joined here.  At 10,000 devices this is what the
dashboard's overview page reads on every refresh.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgekiln.errors import UserError

if TYPE_CHECKING:
    from edgekiln.fleet.store import FleetStore

STATUSES = ("online", "offline")


def overview(
    store: FleetStore,
    *,
    now: float,
    connected_seconds: float,
    fleet: str | None = None,
    status: str | None = None,
    model: str | None = None,
) -> list[dict[str, Any]]:
    """One dict per device, by fleet and name: ``fleet``, ``device``, ``online`` (a heartbeat
    arrived within ``connected_seconds`` of ``now``), ``last_heartbeat_at``, ``agent_version``,
    ``revoked`` and ``models`` ([{``model_name``, ``model_version``}] by name).  ``fleet``,
    ``status`` ("online" | "offline") and ``model`` (devices that report this model) filter."""
    import sqlalchemy as sa

    if status is not None and status not in STATUSES:
        raise UserError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
    d, m = store.devices.c, store.device_models.c
    query = sa.select(d.id, d.fleet, d.name, d.last_heartbeat_at, d.agent_version, d.revoked_at).order_by(
        d.fleet, d.name
    )
    if fleet is not None:
        query = query.where(d.fleet == fleet)
    cutoff = now - connected_seconds
    if status == "online":
        query = query.where(d.last_heartbeat_at >= cutoff)
    elif status == "offline":
        query = query.where(sa.or_(d.last_heartbeat_at.is_(None), d.last_heartbeat_at < cutoff))
    if model is not None:
        query = query.where(d.id.in_(sa.select(m.device_id).where(m.model_name == model)))
    with store.engine.connect() as conn:
        devices = conn.execute(query).all()
        models: dict[int, list[dict[str, str]]] = {}
        wanted = sa.select(m.device_id, m.model_name, m.model_version).order_by(m.device_id, m.model_name)
        if fleet is not None or status is not None or model is not None:
            wanted = wanted.where(m.device_id.in_(query.with_only_columns(d.id).order_by(None).scalar_subquery()))
        for device_id, name, version in conn.execute(wanted):
            models.setdefault(device_id, []).append({"model_name": name, "model_version": version})
    return [
        {
            "fleet": fleet_name,
            "device": name,
            "online": last is not None and last >= cutoff,
            "last_heartbeat_at": last,
            "agent_version": agent,
            "revoked": revoked is not None,
            "models": models.get(device_id, []),
        }
        for device_id, fleet_name, name, last, agent, revoked in devices
    ]
