"""The fleet database: the engine, the tables (SQLAlchemy Core) and their creation.

SQLAlchemy Core over a SQLite file (the default) or PostgreSQL (``postgresql://…``,
through psycopg 3).  A SQLite file and its directory are private to the service (0600,
0700): they hold token hashes and everything the devices reported.  Columns added after
the first release are added to an older database when the service starts
(``create_schema``); nothing is ever dropped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekiln.errors import UserError
from edgekiln.fleet import deploy_tables

# Columns added after the first release: created on an older database at start.
ADDED_DEVICE_COLUMNS = {"token_expires_at": "FLOAT", "revoked_at": "FLOAT", "dead_letter_batches": "BIGINT"}


# PostgreSQL connections one service process keeps open, and opens beyond that in a burst.
POOL_SIZE = 20
POOL_OVERFLOW = 10


def normalize_url(url: str) -> str:
    """Pick the drivers edgekiln installs: psycopg 3 for PostgreSQL."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def open_engine(url: str) -> Any:
    """A SQLAlchemy engine for ``url``: a SQLite file (made private, in WAL mode, with
    foreign keys) or PostgreSQL through psycopg 3."""
    import sqlalchemy as sa

    normalized = normalize_url(url)
    kwargs: dict[str, Any] = {"future": True}
    if normalized.startswith("sqlite"):
        _private_sqlite_file(normalized)
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        kwargs["pool_pre_ping"] = True
        # Requests run in a pool of 40 threads: with SQLAlchemy's default of 5 kept connections
        # most of them would open and close a connection (a new PostgreSQL backend) each time.
        kwargs["pool_size"] = POOL_SIZE
        kwargs["max_overflow"] = POOL_OVERFLOW
    try:
        engine = sa.create_engine(normalized, **kwargs)
    except (sa.exc.ArgumentError, ImportError) as exc:
        raise UserError(f"database URL {url!r} is not usable: {exc}") from None
    if normalized.startswith("sqlite"):

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    return engine


@dataclass(frozen=True)
class Tables:
    """The fleet's tables, all in ``metadata``."""

    metadata: Any
    devices: Any
    audit: Any
    heartbeats: Any
    device_models: Any
    faults: Any
    batches: Any
    captures: Any
    heartbeat_minutes: Any


def define_tables() -> Tables:
    import sqlalchemy as sa

    md = sa.MetaData()
    devices, audit = _device_tables(sa, md)
    heartbeats, device_models, faults = _report_tables(sa, md)
    batches, captures = _capture_tables(sa, md)
    deploy_tables.define(sa, md)  # in md.tables; read by edgekiln.fleet.deployments
    (heartbeat_minutes,) = _rollup_tables(sa, md)
    return Tables(md, devices, audit, heartbeats, device_models, faults, batches, captures, heartbeat_minutes)


def _device_tables(sa: Any, md: Any) -> tuple[Any, ...]:
    """Devices with their credentials, and the audit trail of those credentials."""
    return (
        sa.Table(
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
        ),
        sa.Table(
            "audit",
            md,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("at", sa.Float, nullable=False),
            sa.Column("actor", sa.String(160), nullable=False),
            sa.Column("action", sa.String(32), nullable=False),
            sa.Column("fleet", sa.String(63), nullable=False),
            sa.Column("device", sa.String(63), nullable=False),
            sa.Column("detail", sa.String(512), nullable=False, default=""),
        ),
    )


def _report_tables(sa: Any, md: Any) -> tuple[Any, ...]:
    """What the devices' heartbeats report: the heartbeats, model status and faults."""
    return (
        sa.Table(
            "heartbeats",
            md,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("device_id", sa.Integer, sa.ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
            sa.Column("heartbeat_id", sa.String(64), nullable=False),
            sa.Column("sent_at", sa.Float, nullable=False),
            sa.Column("received_at", sa.Float, nullable=False),
            sa.Column("body", sa.Text, nullable=False),
            sa.UniqueConstraint("device_id", "heartbeat_id", name="uq_heartbeat"),
            # The roll-up picks the heartbeats past the retention window by arrival.
            sa.Index("ix_heartbeats_received_at", "received_at"),
        ),
        sa.Table(
            "device_models",
            md,
            sa.Column("device_id", sa.Integer, sa.ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
            sa.Column("model_name", sa.String(128), primary_key=True),
            sa.Column("model_version", sa.String(64), nullable=False, default=""),
            sa.Column("latest_inference", sa.Float),
            sa.Column("latest_sample", sa.Float),
            sa.Column("metrics", sa.Text, nullable=False),
            sa.Column("reported_at", sa.Float, nullable=False),
        ),
        sa.Table(
            "faults",
            md,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("device_id", sa.Integer, sa.ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
            sa.Column("kind", sa.String(64), nullable=False),
            sa.Column("detail", sa.Text, nullable=False),
            sa.Column("reported_at", sa.Float, nullable=False),
            sa.Index("ix_faults_device", "device_id"),
        ),
    )


def _capture_tables(sa: Any, md: Any) -> tuple[Any, ...]:
    """Delivered capture batches and the records in them."""
    return (
        sa.Table(
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
        ),
        sa.Table(
            "captures",
            md,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("device_id", sa.Integer, sa.ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
            sa.Column("record_id", sa.String(128), nullable=False),
            sa.Column("model_name", sa.String(128), nullable=False),
            sa.Column("batch_key", sa.String(512), nullable=False),
            sa.Column("received_at", sa.Float, nullable=False),
            sa.UniqueConstraint("device_id", "record_id", name="uq_capture"),
        ),
    )


def _rollup_tables(sa: Any, md: Any) -> tuple[Any, ...]:
    """Heartbeats past the raw retention window, folded into one row per device and minute
    of arrival: how many arrived, and per model and metric how many samples, their sum,
    least and greatest (JSON ``{model: {metric: [samples, sum, min, max]}}``, model "" for
    the agent's own metrics) — one narrow row where the raw heartbeats were two or more."""
    return (
        sa.Table(
            "heartbeat_minutes",
            md,
            sa.Column("device_id", sa.Integer, sa.ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
            sa.Column("minute", sa.BigInteger, primary_key=True),
            sa.Column("heartbeats", sa.BigInteger, nullable=False),
            sa.Column("metrics", sa.Text, nullable=False),
            sa.Index("ix_heartbeat_minutes_minute", "minute"),
        ),
    )


def create_schema(engine: Any, metadata: Any) -> None:
    """Create missing tables, the columns an older database lacks, and the indexes added
    to tables that existed before them."""
    import sqlalchemy as sa

    try:
        metadata.create_all(engine)
        present = {c["name"] for c in sa.inspect(engine).get_columns("devices")}
        with engine.begin() as conn:
            for column, kind in ADDED_DEVICE_COLUMNS.items():
                if column not in present:
                    conn.execute(sa.text(f"ALTER TABLE devices ADD COLUMN {column} {kind}"))
        for table in metadata.sorted_tables:
            for index in table.indexes:
                index.create(engine, checkfirst=True)
    except sa.exc.OperationalError as exc:
        raise UserError(
            f"cannot open the fleet database {engine.url.render_as_string(hide_password=True)}: "
            f"{' '.join(str(exc.orig).split())}"
        ) from None


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
