"""The fleet database: devices, credentials, heartbeats, model status, captured records
and the audit trail of credentials.

SQLAlchemy Core over a SQLite file (the default) or PostgreSQL (``postgresql://…``,
through psycopg 3).  Every write that a device may repeat — a heartbeat resent after a
lost answer, a batch notice after a restart — is idempotent: heartbeats are unique per
(device, heartbeat id) and captured records per (device, record id), so a retry never
makes a second row.  A SQLite file and its directory are private to the service (0600,
0700): they hold token hashes and everything the devices reported.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any, Iterable

from edgekiln.errors import UserError
from edgekiln.fleet.records import AuditEntry, Device, HeartbeatRecord, RecordRef

TOKEN_BYTES = 32
# Columns added after the first release: created on an older database at start.
_ADDED_DEVICE_COLUMNS = {"token_expires_at": "FLOAT", "revoked_at": "FLOAT", "dead_letter_batches": "BIGINT"}


class Conflict(UserError):
    """The thing to create exists already."""


class NotFound(UserError):
    """No such device (or fleet)."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def normalize_url(url: str) -> str:
    """Pick the drivers edgekiln installs: psycopg 3 for PostgreSQL."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


class FleetStore:
    """All the fleet's rows; one instance per process, safe to share between threads."""

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        self.url = normalize_url(url)
        kwargs: dict[str, Any] = {"future": True}
        if self.url.startswith("sqlite"):
            _private_sqlite_file(self.url)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
        try:
            self.engine = sa.create_engine(self.url, **kwargs)
        except (sa.exc.ArgumentError, ImportError) as exc:
            raise UserError(f"database URL {url!r} is not usable: {exc}") from None
        if self.url.startswith("sqlite"):

            @sa.event.listens_for(self.engine, "connect")
            def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.close()

        self._define()

    def _define(self) -> None:
        import sqlalchemy as sa

        md = sa.MetaData()
        self.devices = sa.Table(
            "devices",
            md,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("fleet", sa.String(63), nullable=False),
            sa.Column("name", sa.String(63), nullable=False),
            sa.Column("description", sa.String(1024), nullable=False, default=""),
            sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
            sa.Column("registered_at", sa.Float, nullable=False),
            sa.Column("agent_version", sa.String(64)),
            sa.Column("last_heartbeat_at", sa.Float),
            sa.Column("last_heartbeat", sa.Text),
            sa.Column("token_expires_at", sa.Float),
            sa.Column("revoked_at", sa.Float),
            sa.Column("dead_letter_batches", sa.BigInteger),
            sa.UniqueConstraint("fleet", "name", name="uq_device_fleet_name"),
        )
        self.heartbeats = sa.Table(
            "heartbeats",
            md,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("device_id", sa.Integer, sa.ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
            sa.Column("heartbeat_id", sa.String(64), nullable=False),
            sa.Column("sent_at", sa.Float, nullable=False),
            sa.Column("received_at", sa.Float, nullable=False),
            sa.Column("body", sa.Text, nullable=False),
            sa.UniqueConstraint("device_id", "heartbeat_id", name="uq_heartbeat"),
        )
        self.device_models = sa.Table(
            "device_models",
            md,
            sa.Column("device_id", sa.Integer, sa.ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
            sa.Column("model_name", sa.String(128), primary_key=True),
            sa.Column("model_version", sa.String(64), nullable=False, default=""),
            sa.Column("latest_inference", sa.Float),
            sa.Column("latest_sample", sa.Float),
            sa.Column("metrics", sa.Text, nullable=False),
            sa.Column("reported_at", sa.Float, nullable=False),
        )
        self.batches = sa.Table(
            "capture_batches",
            md,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("device_id", sa.Integer, sa.ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
            sa.Column("key", sa.String(512), nullable=False),
            sa.Column("objects", sa.Text, nullable=False),
            sa.Column("record_count", sa.Integer, nullable=False),
            sa.Column("bytes", sa.BigInteger, nullable=False),
            sa.Column("received_at", sa.Float, nullable=False),
            sa.UniqueConstraint("device_id", "key", name="uq_batch"),
        )
        self.captures = sa.Table(
            "captures",
            md,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("device_id", sa.Integer, sa.ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
            sa.Column("record_id", sa.String(128), nullable=False),
            sa.Column("model_name", sa.String(128), nullable=False),
            sa.Column("batch_key", sa.String(512), nullable=False),
            sa.Column("received_at", sa.Float, nullable=False),
            sa.UniqueConstraint("device_id", "record_id", name="uq_capture"),
        )
        self.faults = sa.Table(
            "faults",
            md,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("device_id", sa.Integer, sa.ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
            sa.Column("kind", sa.String(64), nullable=False),
            sa.Column("detail", sa.Text, nullable=False),
            sa.Column("reported_at", sa.Float, nullable=False),
        )
        self.audit = sa.Table(
            "audit",
            md,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("at", sa.Float, nullable=False),
            sa.Column("actor", sa.String(160), nullable=False),
            sa.Column("action", sa.String(32), nullable=False),
            sa.Column("fleet", sa.String(63), nullable=False),
            sa.Column("device", sa.String(63), nullable=False),
            sa.Column("detail", sa.String(512), nullable=False, default=""),
        )
        self.metadata = md

    def create_schema(self) -> None:
        import sqlalchemy as sa

        try:
            self.metadata.create_all(self.engine)
            present = {c["name"] for c in sa.inspect(self.engine).get_columns("devices")}
            with self.engine.begin() as conn:
                for column, kind in _ADDED_DEVICE_COLUMNS.items():
                    if column not in present:
                        conn.execute(sa.text(f"ALTER TABLE devices ADD COLUMN {column} {kind}"))
        except sa.exc.OperationalError as exc:
            raise UserError(
                f"cannot open the fleet database {self.engine.url.render_as_string(hide_password=True)}: "
                f"{' '.join(str(exc.orig).split())}"
            ) from None

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
        return [self._device_summary(r, now, connected_seconds) for r in rows]

    @staticmethod
    def _device_summary(row: Any, now: float, connected_seconds: float) -> dict[str, Any]:
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
            heartbeat_count = conn.execute(
                sa.select(sa.func.count()).select_from(self.heartbeats).where(self.heartbeats.c.device_id == device.id)
            ).scalar()
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
        summary = self._device_summary(row, now, connected_seconds)
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


def _expiry(expires_at: float | None) -> str:
    return "" if expires_at is None else f"expires at {expires_at:.0f}"


def _private_sqlite_file(url: str) -> None:
    """Create a SQLite database file 0600 in a directory made 0700, or tighten an existing
    file to 0600; SQLite gives its -wal and -shm files the database file's mode."""
    path = url.split("///", 1)[1] if "///" in url else ""
    if not path or path.startswith(":memory:") or path.startswith("file:"):
        return
    path = path.split("?", 1)[0]
    target = Path(path)
    if not target.parent.exists():
        make_private_dirs(target.parent, 0o700)
    fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    os.chmod(target, 0o600)


def make_private_dirs(path: Path, mode: int) -> None:
    """``mkdir -p`` in which every directory it creates gets ``mode`` (os.makedirs gives the
    parents it creates the default mode)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)  # the umask may take bits off, never adds any
        except FileExistsError:
            continue
