"""Typed records that cross between the fleet's API and its database.

The API validates JSON bodies into these (``edgekiln.fleet.bodies``); the store reads and
writes them.  Nothing here imports FastAPI, pydantic or SQLAlchemy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Scalar = str | int | float | bool | None


@dataclass(frozen=True)
class Device:
    id: int
    fleet: str
    name: str
    registered_at: float
    token_expires_at: float | None = None
    revoked_at: float | None = None


@dataclass(frozen=True)
class ModelState:
    """One model as a heartbeat reports it."""

    name: str
    version: str = ""
    latest_inference: float | None = None
    latest_sample: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Fault:
    """A fault the agent reports: its kind and the fields it sent (scalars only)."""

    kind: str
    detail: dict[str, Scalar] = field(default_factory=dict)


@dataclass(frozen=True)
class HeartbeatRecord:
    """One validated heartbeat; ``body`` is its canonical JSON, kept as history."""

    heartbeat_id: str
    sent_at: float
    agent_version: str = ""
    agent_metrics: dict[str, float] = field(default_factory=dict)
    models: tuple[ModelState, ...] = ()
    faults: tuple[Fault, ...] = ()
    dead_letter_batches: int | None = None
    body: str = "{}"


@dataclass(frozen=True)
class RecordRef:
    """A captured record the device delivered in a batch."""

    record_id: str
    model_name: str = ""


@dataclass(frozen=True)
class AuditEntry:
    """Who did what to which device's credential, and when."""

    at: float
    actor: str
    action: str
    fleet: str
    device: str
    detail: str = ""
