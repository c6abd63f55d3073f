"""The fleet API's JSON bodies (pydantic), and their conversion to store records.

Every field is bounded: numbers are finite and timestamps lie between the epoch and
:data:`MAX_TIMESTAMP`, strings have a length and hold no control characters or lone
surrogates (PostgreSQL and SQLite refuse them), names follow the one rule the agent also
applies (``edgekiln.artifact.names``).  Unknown heartbeat fields are dropped, so a newer
agent still talks to this service and nothing unvalidated is stored.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt

from edgekiln.artifact.names import MAX_NAME_LENGTH, is_valid_name
from edgekiln.fleet import records as rec
from edgekiln.fleet.options import FleetOptions

# 2100-01-01 UTC: later than any real clock, far below what overflows a float's arithmetic.
MAX_TIMESTAMP = 4_102_444_800.0
# Token lifetimes: up to ten years.
MAX_LIFETIME_SECONDS = 10 * 365 * 24 * 3600


def _unstorable(c: str) -> bool:
    """A control character or a lone surrogate: PostgreSQL and SQLite refuse them."""
    return ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) <= 0xDFFF


def _text(value: str) -> str:
    if any(_unstorable(c) for c in value):
        raise ValueError("control characters and lone surrogates are not allowed")
    return value


def _name(value: str) -> str:
    if not is_valid_name(value):
        raise ValueError(f"must be 1-{MAX_NAME_LENGTH} letters, digits and inner dashes")
    return value


def _one_line(value: str) -> str:
    """A reason as one stored line: control characters and lone surrogates become spaces and
    the text is cut to 512 characters, so that a long or multi-line reason from an agent
    never costs the whole heartbeat (a refused heartbeat would hold back its other fields)."""
    return "".join(" " if _unstorable(c) else c for c in value)[:512]


def _model_name_or_empty(value: str) -> str:
    return value if value == "" else _name(value)


Text = Annotated[str, AfterValidator(_text)]
Name = Annotated[str, AfterValidator(_name)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Timestamp = Annotated[float, Field(ge=0, le=MAX_TIMESTAMP, allow_inf_nan=False)]
Identifier = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")]
Reason = Annotated[str, Field(max_length=8192), AfterValidator(_one_line)]
Lifetime = Annotated[int, Field(ge=1, le=MAX_LIFETIME_SECONDS)]
FaultValue = StrictBool | StrictInt | Finite | Annotated[Text, Field(max_length=4096)] | None


class RegisterBody(BaseModel):
    fleet: Name
    device: Name
    description: Annotated[Text, Field(max_length=1024)] = ""
    expires_in_seconds: Lifetime | None = None


class RotateBody(BaseModel):
    expires_in_seconds: Lifetime | None = None


class Metric(BaseModel):
    model_config = ConfigDict(extra="ignore")

    dimension: Annotated[Text, Field(max_length=64)] = ""
    metric_name: Annotated[Text, Field(min_length=1, max_length=128)]
    value: Finite
    timestamp: Timestamp | None = None


class ModelStatus(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model_name: Name
    model_version: Annotated[Text, Field(max_length=64)] = ""
    latest_sample_time: Timestamp | None = None
    latest_inference: Timestamp | None = None
    model_metrics: list[Metric] = Field(default_factory=list)


class FaultBody(BaseModel):
    """A fault: its kind and any scalar fields (error text, where a file was moved)."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, FaultValue]  # type: ignore[assignment]

    kind: Annotated[Text, Field(min_length=1, max_length=64)] = "unknown"


DEPLOYMENT_STATUSES = ("DEPLOYING", "SUCCEEDED", "FAILED", "ROLLED_BACK", "FAILED_UNABLE_TO_ROLLBACK")
# At most this many deployment results in one heartbeat: an agent holds a few per model.
MAX_DEPLOYMENT_RESULTS = 64


class DeploymentResult(BaseModel):
    """Edge Manager's DeploymentResult for one model (snake_case): what the agent did with
    one deployment the fleet handed it."""

    model_config = ConfigDict(extra="ignore")

    deployment_id: Annotated[Text, Field(min_length=1, max_length=256)]
    model_handle: Name
    model_version: Annotated[int, Field(ge=1, le=2**53)]
    desired_state: Literal["DEPLOYED", "UNDEPLOYED"] = "DEPLOYED"
    state: Literal["DEPLOYED", "UNDEPLOYED"]
    status: Literal[DEPLOYMENT_STATUSES]  # type: ignore[valid-type]
    reason: Reason = ""
    rollback_failure_reason: Reason | None = None
    rollback_seconds: Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)] | None = None
    updated_at: Timestamp


class Heartbeat(BaseModel):
    """Edge Manager's SendHeartbeat fields (snake_case), plus dead-lettered capture batches
    and the results of deployments."""

    model_config = ConfigDict(extra="ignore")

    heartbeat_id: Annotated[Identifier, Field(max_length=64)]
    timestamp: Timestamp
    device_name: Annotated[Text, Field(max_length=128)] | None = None
    device_fleet_name: Annotated[Text, Field(max_length=128)] | None = None
    agent_version: Annotated[Text, Field(max_length=64)] = ""
    agent_metrics: list[Metric] = Field(default_factory=list)
    models: list[ModelStatus] = Field(default_factory=list)
    faults: list[FaultBody] = Field(default_factory=list)
    dead_letter_batches: Annotated[int, Field(ge=0, le=2**53)] | None = None
    deployment_results: list[DeploymentResult] = Field(default_factory=list, max_length=MAX_DEPLOYMENT_RESULTS)

    def record(self) -> rec.HeartbeatRecord:
        agent = {m.metric_name: m.value for m in self.agent_metrics}
        dead = self.dead_letter_batches
        if dead is None and "dead_letter_batches" in agent and 0 <= agent["dead_letter_batches"] <= 2**53:
            dead = int(agent["dead_letter_batches"])  # an agent that reports it as a metric
        models = tuple(
            rec.ModelState(
                name=m.model_name,
                version=m.model_version,
                latest_inference=m.latest_inference,
                latest_sample=m.latest_sample_time,
                metrics={x.metric_name: x.value for x in m.model_metrics},
            )
            for m in self.models
        )
        faults = tuple(rec.Fault(kind=f.kind, detail=f.model_dump()) for f in self.faults)
        return rec.HeartbeatRecord(
            heartbeat_id=self.heartbeat_id,
            sent_at=self.timestamp,
            agent_version=self.agent_version,
            agent_metrics=agent,
            models=models,
            faults=faults,
            dead_letter_batches=dead,
            body=json.dumps(self.model_dump(exclude_none=True), separators=(",", ":"), allow_nan=False),
        )


class HeartbeatsBody(BaseModel):
    heartbeats: list[Heartbeat]


class UploadsBody(BaseModel):
    keys: list[Annotated[str, Field(max_length=400)]] = Field(min_length=1, max_length=1000)


class RecordRefBody(BaseModel):
    record_id: Identifier
    model_name: Annotated[str, AfterValidator(_model_name_or_empty)] = ""

    def record(self) -> rec.RecordRef:
        return rec.RecordRef(self.record_id, self.model_name)


class CapturesBody(BaseModel):
    key: Annotated[str, Field(max_length=400)]
    objects: list[Annotated[str, Field(max_length=400)]] = Field(default_factory=list, max_length=10000)
    bytes: Annotated[int, Field(ge=0, le=2**62)] = 0
    records: list[RecordRefBody] = Field(max_length=100000)


def count_problem(body: HeartbeatsBody, options: FleetOptions) -> str | None:
    """What in ``body`` exceeds the options' per-request caps, or None."""
    if len(body.heartbeats) > options.max_heartbeats_per_request:
        return f"{len(body.heartbeats)} heartbeats in one request (at most {options.max_heartbeats_per_request})"
    for hb in body.heartbeats:
        metrics = len(hb.agent_metrics) + sum(len(m.model_metrics) for m in hb.models)
        for what, count, cap in (
            ("metrics", metrics, options.max_metrics_per_heartbeat),
            ("models", len(hb.models), options.max_models_per_heartbeat),
            ("faults", len(hb.faults), options.max_faults_per_heartbeat),
        ):
            if count > cap:
                return f"heartbeat {hb.heartbeat_id} has {count} {what} (at most {cap})"
    return None
