"""The fleet database: devices, credentials, heartbeats, model status, captured records
and the audit trail of credentials.

SQLAlchemy Core over a SQLite file (the default) or PostgreSQL: the engine and the tables
are in :mod:`edgekiln.fleet.database`, the answers shaped from the rows in
:mod:`edgekiln.fleet.reports`.  Every write that a device may repeat — a heartbeat resent
after a lost answer, a batch notice after a restart — is idempotent: heartbeats are unique
per (device, heartbeat id) and captured records per (device, record id), so a retry never
makes a second row.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from typing import Any, Iterable

from edgekiln.errors import UserError
from edgekiln.fleet import overview, reports, rollup
from edgekiln.fleet.database import create_schema, define_tables, normalize_url, open_engine
from edgekiln.fleet.records import AuditEntry, Device, HeartbeatRecord, RecordRef

TOKEN_BYTES = 32


class Conflict(UserError):
    """The thing to create exists already."""


class NotFound(UserError):
    """No such device (or fleet)."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class FleetStore:
    """All the fleet's rows; one instance per process, safe to share between threads."""

    def __init__(self, url: str) -> None:
        self.url = normalize_url(url)
        self.engine = open_engine(url)
        self._define()

    def _define(self) -> None:
        tables = define_tables()
        self.metadata = tables.metadata
        self.devices, self.audit = tables.devices, tables.audit
        self.heartbeats, self.device_models, self.faults = tables.heartbeats, tables.device_models, tables.faults
        self.batches, self.captures = tables.batches, tables.captures
        self.heartbeat_minutes = tables.heartbeat_minutes

    def create_schema(self) -> None:
        create_schema(self.engine, self.metadata)

    def close(self) -> None:
        self.engine.dispose()

    # -- devices and their credentials ----------------------------------------------
    def register_device(
        self,
        fleet: str,
        name: str,
        description: str = "",
        now: float | None = None,
        *,
        expires_at: float | None = None,
        actor: str = "admin",
    ) -> str:
        """Register a device; returns its new token (only its hash is stored)."""
        import sqlalchemy as sa

        now = time.time() if now is None else now
        token = secrets.token_urlsafe(TOKEN_BYTES)
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    self.devices.insert().values(
                        fleet=fleet,
                        name=name,
                        description=description,
                        token_hash=hash_token(token),
                        registered_at=now,
                        token_expires_at=expires_at,
                    )
                )
                self._audit(conn, AuditEntry(now, actor, "register", fleet, name, _expiry(expires_at)))
        except sa.exc.IntegrityError:
            raise Conflict(f"device {fleet}/{name} is registered already") from None
        return token

    def rotate_token(
        self, fleet: str, name: str, now: float, *, expires_at: float | None = None, actor: str = "admin"
    ) -> str:
        """A new token for the device; the old one stops working at once (and a revoked
        device is enabled again with the new one)."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        with self.engine.begin() as conn:
            device = self._device(conn, fleet, name)
            conn.execute(
                self.devices.update()
                .where(self.devices.c.id == device.id)
                .values(token_hash=hash_token(token), token_expires_at=expires_at, revoked_at=None)
            )
            self._audit(conn, AuditEntry(now, actor, "rotate", fleet, name, _expiry(expires_at)))
        return token

    def revoke_token(self, fleet: str, name: str, now: float, *, actor: str = "admin") -> None:
        """Refuse the device's token from now on (its data stays)."""
        with self.engine.begin() as conn:
            device = self._device(conn, fleet, name)
            conn.execute(self.devices.update().where(self.devices.c.id == device.id).values(revoked_at=now))
            self._audit(
                conn,
                AuditEntry(now, actor, "revoke", fleet, name, "" if device.revoked_at is None else "already revoked"),
            )

    def authenticate(self, token: str) -> Device | None:
        """The device whose token this is — revoked or expired included: the caller decides."""
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(*self._device_columns()).where(self.devices.c.token_hash == hash_token(token))
            ).first()
        return Device(*row) if row else None

    def device(self, fleet: str, name: str) -> Device:
        with self.engine.connect() as conn:
            return self._device(conn, fleet, name)

    def _device_columns(self) -> tuple[Any, ...]:
        c = self.devices.c
        return c.id, c.fleet, c.name, c.registered_at, c.token_expires_at, c.revoked_at

    def _device(self, conn: Any, fleet: str, name: str) -> Device:
        import sqlalchemy as sa

        row = conn.execute(
            sa.select(*self._device_columns()).where(self.devices.c.fleet == fleet, self.devices.c.name == name)
        ).first()
        if row is None:
            raise NotFound(f"no device {fleet}/{name}")
        return Device(*row)

    # -- audit -----------------------------------------------------------------------
    def _audit(self, conn: Any, entry: AuditEntry) -> None:
        conn.execute(
            self.audit.insert().values(
                at=entry.at,
                actor=entry.actor[:160],
                action=entry.action,
                fleet=entry.fleet,
                device=entry.device,
                detail=entry.detail[:512],
            )
        )

    def record_refusal(self, device: Device, reason: str, now: float, *, every: float = 60.0) -> None:
        """Note a refused token of a known device, at most once per ``every`` seconds and
        device, so that a stolen, revoked token hammering the service cannot grow the table."""
        import sqlalchemy as sa

        with self.engine.begin() as conn:
            recent = conn.execute(
                sa.select(self.audit.c.id)
                .where(
                    self.audit.c.fleet == device.fleet,
                    self.audit.c.device == device.name,
                    self.audit.c.action == "auth-refused",
                    self.audit.c.at > now - every,
                )
                .limit(1)
            ).first()
            if recent is None:
                self._audit(
                    conn,
                    AuditEntry(
                        now, f"device {device.fleet}/{device.name}", "auth-refused", device.fleet, device.name, reason
                    ),
                )

    def audit_entries(self, fleet: str | None = None, device: str | None = None, limit: int = 1000) -> list[AuditEntry]:
        """The newest ``limit`` entries, oldest first."""
        import sqlalchemy as sa

        a = self.audit.c
        query = sa.select(a.at, a.actor, a.action, a.fleet, a.device, a.detail).order_by(a.id.desc()).limit(limit)
        if fleet:
            query = query.where(a.fleet == fleet)
        if device:
            query = query.where(a.device == device)
        with self.engine.connect() as conn:
            return [AuditEntry(*row) for row in reversed(conn.execute(query).all())]

    # -- heartbeats ------------------------------------------------------------------
    def add_heartbeats(self, device: Device, heartbeats: Iterable[HeartbeatRecord], now: float) -> tuple[int, int]:
        """Store heartbeats (deduplicated by id) in the order given; returns (new, duplicates).

        The device's state is the heartbeat that reached the service last (the last one of
        a request): the agent sends its queue oldest first, and its clock may jump (a board
        without a real-time clock boots in 1970), so the device's timestamps only describe.
        """
        import sqlalchemy as sa

        new = dup = 0
        for hb in heartbeats:
            with self.engine.begin() as conn:
                exists = conn.execute(
                    sa.select(self.heartbeats.c.id).where(
                        self.heartbeats.c.device_id == device.id, self.heartbeats.c.heartbeat_id == hb.heartbeat_id
                    )
                ).first()
                if exists:
                    dup += 1
                    continue
                # A concurrent resend of the same heartbeat fails on the unique constraint and
                # rolls back; the device retries and finds it stored.
                conn.execute(
                    self.heartbeats.insert().values(
                        device_id=device.id,
                        heartbeat_id=hb.heartbeat_id,
                        sent_at=hb.sent_at,
                        received_at=now,
                        body=hb.body,
                    )
                )
                new += 1
                values: dict[str, Any] = {
                    "last_heartbeat_at": now,
                    "agent_version": hb.agent_version,
                    "last_heartbeat": hb.body,
                }
                if hb.dead_letter_batches is not None:
                    values["dead_letter_batches"] = hb.dead_letter_batches
                self._update_models(conn, device, hb, now)
                conn.execute(self.devices.update().where(self.devices.c.id == device.id).values(**values))
                for fault in hb.faults:
                    conn.execute(
                        self.faults.insert().values(
                            device_id=device.id,
                            kind=fault.kind,
                            reported_at=now,
                            detail=json.dumps(fault.detail, separators=(",", ":"), allow_nan=False),
                        )
                    )
        return new, dup

    def _update_models(self, conn: Any, device: Device, hb: HeartbeatRecord, now: float) -> None:
        conn.execute(self.device_models.delete().where(self.device_models.c.device_id == device.id))
        for model in {m.name: m for m in hb.models}.values():  # one row per name: the last one wins
            conn.execute(
                self.device_models.insert().values(
                    device_id=device.id,
                    model_name=model.name,
                    model_version=model.version,
                    latest_inference=model.latest_inference,
                    latest_sample=model.latest_sample,
                    metrics=json.dumps(model.metrics, allow_nan=False),
                    reported_at=now,
                )
            )

    # -- captures --------------------------------------------------------------------
    def record_batch(
        self, device: Device, key: str, objects: list[str], records: list[RecordRef], size: int, now: float
    ) -> tuple[int, int]:
        """Note a delivered batch and its records; returns (new records, duplicates)."""
        import sqlalchemy as sa

        ids = [r.record_id for r in records]
        with self.engine.begin() as conn:
            if not conn.execute(
                sa.select(self.batches.c.id).where(self.batches.c.device_id == device.id, self.batches.c.key == key)
            ).first():
                conn.execute(
                    self.batches.insert().values(
                        device_id=device.id,
                        key=key,
                        objects=json.dumps(objects),
                        record_count=len(ids),
                        bytes=size,
                        received_at=now,
                    )
                )
            known: set[str] = set()
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                known.update(
                    r[0]
                    for r in conn.execute(
                        sa.select(self.captures.c.record_id).where(
                            self.captures.c.device_id == device.id, self.captures.c.record_id.in_(chunk)
                        )
                    )
                )
            fresh = [r for r in records if r.record_id not in known]
            seen: set[str] = set()
            rows = []
            for r in fresh:
                rid = r.record_id
                if rid in seen:
                    continue
                seen.add(rid)
                rows.append(
                    {
                        "device_id": device.id,
                        "record_id": rid,
                        "model_name": r.model_name,
                        "batch_key": key,
                        "received_at": now,
                    }
                )
            if rows:
                conn.execute(self.captures.insert(), rows)
        return len(rows), len(ids) - len(rows)

    # -- reading ---------------------------------------------------------------------
    def list_devices(self, fleet: str | None = None, *, now: float, connected_seconds: float) -> list[dict[str, Any]]:
        import sqlalchemy as sa

        query = sa.select(self.devices).order_by(self.devices.c.fleet, self.devices.c.name)
        if fleet:
            query = query.where(self.devices.c.fleet == fleet)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [reports.device_summary(r, now, connected_seconds) for r in rows]

    def describe_device(self, fleet: str, name: str, *, now: float, connected_seconds: float) -> dict[str, Any]:
        import sqlalchemy as sa

        device = self.device(fleet, name)
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(self.devices).where(self.devices.c.id == device.id)).mappings().one()
            models = (
                conn.execute(
                    sa.select(self.device_models)
                    .where(self.device_models.c.device_id == device.id)
                    .order_by(self.device_models.c.model_name)
                )
                .mappings()
                .all()
            )
            heartbeat_count = rollup.heartbeat_count(conn, self, device.id)
            capture_count = conn.execute(
                sa.select(sa.func.count()).select_from(self.captures).where(self.captures.c.device_id == device.id)
            ).scalar()
            batch_count, batch_bytes = conn.execute(
                sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(self.batches.c.bytes), 0)).where(
                    self.batches.c.device_id == device.id
                )
            ).one()
            faults = conn.execute(
                sa.select(self.faults.c.kind, self.faults.c.detail, self.faults.c.reported_at)
                .where(self.faults.c.device_id == device.id)
                .order_by(self.faults.c.id)
            ).all()
        counts = (heartbeat_count, capture_count, batch_count, batch_bytes)
        return reports.describe(row, models, counts, faults, now=now, connected_seconds=connected_seconds)

    def overview(
        self,
        *,
        now: float,
        connected_seconds: float,
        fleet: str | None = None,
        status: str | None = None,
        model: str | None = None,
    ) -> list[dict[str, Any]]:
        """The fleet overview's rows (see :func:`edgekiln.fleet.overview.overview`)."""
        return overview.overview(
            self, now=now, connected_seconds=connected_seconds, fleet=fleet, status=status, model=model
        )

    def device_minutes(
        self, fleet: str, name: str, since: float | None = None, until: float | None = None
    ) -> dict[str, list[dict[str, Any]]]:
        """A device's heartbeats and metrics per minute, raw and rolled-up together."""
        return rollup.device_minutes(self, self.device(fleet, name).id, since, until)

    def heartbeat_history(self, fleet: str, name: str) -> dict[str, Any]:
        """The ids of the device's raw heartbeats, oldest first, and how many more were
        rolled up into per-minute aggregates (their ids are not kept)."""
        import sqlalchemy as sa

        device = self.device(fleet, name)
        h = self.heartbeats.c
        with self.engine.connect() as conn:
            ids = [r[0] for r in conn.execute(sa.select(h.heartbeat_id).where(h.device_id == device.id).order_by(h.id))]
            total = rollup.heartbeat_count(conn, self, device.id)
        # Not one snapshot: a heartbeat that arrives between the two reads may be counted.
        return {"heartbeat_ids": ids, "rolled_up": max(0, total - len(ids))}

    def heartbeat_ids(self, fleet: str, name: str) -> list[str]:
        import sqlalchemy as sa

        device = self.device(fleet, name)
        with self.engine.connect() as conn:
            return [
                r[0]
                for r in conn.execute(
                    sa.select(self.heartbeats.c.heartbeat_id)
                    .where(self.heartbeats.c.device_id == device.id)
                    .order_by(self.heartbeats.c.id)
                )
            ]

    def list_captures(self, fleet: str, name: str) -> dict[str, Any]:
        import sqlalchemy as sa

        device = self.device(fleet, name)
        with self.engine.connect() as conn:
            batches = (
                conn.execute(
                    sa.select(self.batches).where(self.batches.c.device_id == device.id).order_by(self.batches.c.id)
                )
                .mappings()
                .all()
            )
            records = conn.execute(
                sa.select(self.captures.c.record_id, self.captures.c.model_name, self.captures.c.batch_key)
                .where(self.captures.c.device_id == device.id)
                .order_by(self.captures.c.id)
            ).all()
        return reports.captures_listing(fleet, name, batches, records)

    def fleet_report(self, fleet: str, *, now: float, connected_seconds: float) -> dict[str, Any]:
        """The fields of Edge Manager's GetDeviceFleetReport, for one fleet."""
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            devices = conn.execute(
                sa.select(self.devices.c.id, self.devices.c.agent_version, self.devices.c.last_heartbeat_at).where(
                    self.devices.c.fleet == fleet
                )
            ).all()
            if not devices:
                raise NotFound(f"no devices are registered in fleet {fleet}")
            ids = [d[0] for d in devices]
            models = (
                conn.execute(sa.select(self.device_models).where(self.device_models.c.device_id.in_(ids)))
                .mappings()
                .all()
            )
        return reports.fleet_report(fleet, devices, models, now=now, connected_seconds=connected_seconds)


def _expiry(expires_at: float | None) -> str:
    return "" if expires_at is None else f"expires at {expires_at:.0f}"
