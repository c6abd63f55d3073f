"""How the fleet service runs: one frozen, validated set of options."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from edgekiln.errors import UserError

MiB = 1 << 20
DAY = 24 * 3600


@dataclass(frozen=True)
class FleetOptions:
    """How the service runs; validated on construction.

    The ``max_*`` caps bound what one request may make the service hold or store: a body
    over ``max_body_bytes`` (``max_object_bytes`` for a PUT to the local object store) is
    refused with 413 before it is parsed, and a heartbeat request over one of the count
    caps with 413 before anything is written.
    """

    database_url: str
    admin_token: str
    object_store: str = "s3"  # "s3" or "local"
    objects_dir: Path | None = None
    s3_endpoint: str | None = None
    s3_bucket: str = "edgekiln-captures"
    s3_region: str = "us-east-1"
    presign_seconds: int = 300
    connected_seconds: float = 120.0
    local_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    # /docs and /openapi.json describe every route to whoever asks: off unless wanted.
    api_docs: bool = False
    # The dashboard's session cookie gets the Secure flag (set it behind HTTPS).
    dashboard_secure_cookie: bool = False
    max_body_bytes: int = 4 * MiB
    max_object_bytes: int = 256 * MiB
    max_heartbeats_per_request: int = 100  # the agent sends 50 at most
    max_metrics_per_heartbeat: int = 256
    max_models_per_heartbeat: int = 64
    max_faults_per_heartbeat: int = 64
    # Raw heartbeats older than this are folded into per-minute aggregates
    # (edgekiln.fleet.rollup), which are kept for aggregate_retention_seconds.
    raw_retention_seconds: float = 1 * DAY
    aggregate_retention_seconds: float = 90 * DAY
    rollup_interval_seconds: float = 60.0  # 0: no roll-up in this process

    def __post_init__(self) -> None:
        if not self.database_url:
            raise UserError("fleet: the database URL is empty (give --db sqlite:///fleet.db or postgresql://…)")
        if len(self.admin_token) < 16:
            raise UserError("fleet: the admin token must be at least 16 characters")
        if self.object_store not in ("s3", "local"):
            raise UserError(f"fleet: object store must be s3 or local, not {self.object_store!r}")
        if self.object_store == "local" and self.objects_dir is None:
            raise UserError("fleet: --objects-dir is required with the local object store")
        if self.object_store == "s3" and not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", self.s3_bucket):
            raise UserError(f"fleet: {self.s3_bucket!r} is not a valid S3 bucket name")
        if not 1 <= self.presign_seconds <= 7 * 24 * 3600:
            raise UserError("fleet: presigned URL lifetime must be between 1 s and 7 days")
        if self.connected_seconds <= 0:
            raise UserError("fleet: the connected window must be positive")
        if not 60 <= self.raw_retention_seconds < self.aggregate_retention_seconds:
            raise UserError(
                "fleet: the raw heartbeat retention must be at least 60 s and shorter than the aggregate retention"
            )
        if self.rollup_interval_seconds < 0:
            raise UserError("fleet: the roll-up interval must be 0 (off) or positive")
        for name in (
            "max_body_bytes",
            "max_object_bytes",
            "max_heartbeats_per_request",
            "max_metrics_per_heartbeat",
            "max_models_per_heartbeat",
            "max_faults_per_heartbeat",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"fleet: {name} must be a positive integer, not {value!r}")
