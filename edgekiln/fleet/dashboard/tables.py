"""The dashboard's own tables, beside the fleet's: sign-in sessions and the benchmark
results that CI jobs upload.  Created with the fleet's tables, on the same engine, so
that every worker of the service sees the same sessions and results."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from edgekiln.fleet.store import hash_token


@dataclass(frozen=True)
class Session:
    """A signed-in admin's session; the cookie holds the token, the table its hash."""

    token_hash: str
    csrf: str
    created_at: float
    expires_at: float


class DashboardTables:
    """Sessions and benchmark uploads, over the fleet store's engine."""

    def __init__(self, engine: Any) -> None:
        import sqlalchemy as sa

        self.engine = engine
        self.metadata = sa.MetaData()
        self.sessions = sa.Table(
            "dashboard_sessions",
            self.metadata,
            sa.Column("token_hash", sa.String(64), primary_key=True),
            sa.Column("csrf", sa.String(64), nullable=False),
            sa.Column("created_at", sa.Float, nullable=False),
            sa.Column("expires_at", sa.Float, nullable=False),
        )
        self.benchmarks = sa.Table(
            "benchmark_uploads",
            self.metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("target", sa.String(63), nullable=False, index=True),
            sa.Column("label", sa.String(128), nullable=False, default=""),
            sa.Column("uploaded_at", sa.Float, nullable=False),
            sa.Column("gate_passed", sa.Boolean),
            sa.Column("summary", sa.Text, nullable=False),
        )

    def create(self) -> None:
        self.metadata.create_all(self.engine)

    # -- sessions ------------------------------------------------------------------
    def open_session(self, now: float, lifetime: float) -> tuple[str, Session]:
        """A new session; returns the cookie's token (only its hash is stored) and the row."""
        token = secrets.token_urlsafe(32)
        session = Session(hash_token(token), secrets.token_urlsafe(32), now, now + lifetime)
        with self.engine.begin() as conn:
            # Expired sessions go when a new one comes, so the table stays small.
            conn.execute(self.sessions.delete().where(self.sessions.c.expires_at < now))
            conn.execute(
                self.sessions.insert().values(
                    token_hash=session.token_hash,
                    csrf=session.csrf,
                    created_at=session.created_at,
                    expires_at=session.expires_at,
                )
            )
        return token, session

    def session(self, token: str, now: float) -> Session | None:
        import sqlalchemy as sa

        if not token or len(token) > 128:
            return None
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(self.sessions).where(self.sessions.c.token_hash == hash_token(token))).first()
        if row is None or row.expires_at <= now:
            return None
        return Session(row.token_hash, row.csrf, row.created_at, row.expires_at)

    def close_session(self, session: Session) -> None:
        with self.engine.begin() as conn:
            conn.execute(self.sessions.delete().where(self.sessions.c.token_hash == session.token_hash))

    # -- benchmark uploads -----------------------------------------------------------
    def add_benchmark(self, target: str, label: str, summary: dict[str, Any], now: float) -> int:
        gate = summary.get("gate")
        with self.engine.begin() as conn:
            result = conn.execute(
                self.benchmarks.insert().values(
                    target=target,
                    label=label,
                    uploaded_at=now,
                    gate_passed=None if gate is None else bool(gate.get("passed")),
                    summary=json.dumps(summary, separators=(",", ":"), allow_nan=False),
                )
            )
            return int(result.inserted_primary_key[0])

    def benchmark_targets(self) -> list[str]:
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.select(self.benchmarks.c.target).distinct().order_by("target"))]

    def benchmark_history(self, target: str, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` uploads for ``target``, oldest first."""
        import sqlalchemy as sa

        b = self.benchmarks.c
        query = (
            sa.select(b.id, b.label, b.uploaded_at, b.summary)
            .where(b.target == target)
            .order_by(b.id.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            {"id": r.id, "label": r.label, "uploaded_at": r.uploaded_at, **json.loads(r.summary)}
            for r in reversed(rows)
        ]
