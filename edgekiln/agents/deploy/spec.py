"""One deployment as the device takes it: from the fleet's ``GET /v1/agent/deployments`` or
from a package dropped into the local inbox; and the result the heartbeat carries back."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from edgekiln.agents.config import FAILURE_HANDLING
from edgekiln.artifact.names import is_valid_name
from edgekiln.errors import UserError

MAX_ID_CHARS = 256
MAX_URL_CHARS = 8192
# More deployments than this in one answer are not a device's desired state.
MAX_DEPLOYMENTS = 64
# The install steps in their order (see :mod:`edgekiln.agents.deploy.manager`).
STEPS = ("download", "verify", "unpack", "switch", "health", "commit")
_SHA = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Deployment:
    """What to install: ``url`` is a presigned http(s) URL, or empty for a local package that
    sits in staging already."""

    deployment_id: str
    handle: str
    version: int
    sha256: str
    size: int
    failure_handling: str = "ROLLBACK_ON_FAILURE"
    latency_budget_ms: float | None = None
    url: str = ""
    plan: str = ""
    stage: str = ""
    local: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Deployment:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def from_fleet(item: Any, max_size: int) -> Deployment:
    """Validate one entry of the fleet's answer; UserError says what is wrong with it."""
    if not isinstance(item, Mapping):
        raise UserError("a deployment is not a JSON object")
    deployment_id = item.get("deployment_id")
    if not isinstance(deployment_id, str) or not 0 < len(deployment_id) <= MAX_ID_CHARS:
        raise UserError(f"deployment_id must be a string of 1-{MAX_ID_CHARS} characters")
    handle, version = item.get("model_handle"), item.get("model_version")
    if not is_valid_name(handle):
        raise UserError(f"model_handle {str(handle)[:80]!r} is not a valid name")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UserError(f"model_version {str(version)[:30]!r} is not a whole number >= 1")
    url, sha, size = item.get("package_url"), item.get("package_sha256"), item.get("package_size")
    if not isinstance(url, str) or not re.match(r"^https?://", url) or len(url) > MAX_URL_CHARS:
        raise UserError("package_url is not an http(s) URL")
    if not isinstance(sha, str) or not _SHA.fullmatch(sha):
        raise UserError("package_sha256 is not 64 lowercase hex digits")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= max_size:
        raise UserError(f"package_size {str(size)[:30]} is not between 1 and {max_size} (deploy.max_package_bytes)")
    handling = item.get("failure_handling") or "ROLLBACK_ON_FAILURE"
    if handling not in FAILURE_HANDLING:
        raise UserError(f"failure_handling {str(handling)[:40]!r} is not one of {', '.join(FAILURE_HANDLING)}")
    budget = item.get("latency_budget_ms")
    if budget is not None and (
        isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget <= 0
    ):
        raise UserError("latency_budget_ms is not a positive number")
    return Deployment(
        deployment_id=deployment_id,
        handle=handle,
        version=version,
        sha256=sha,
        size=size,
        failure_handling=handling,
        latency_budget_ms=None if budget is None else float(budget),
        url=url,
        plan=str(item.get("plan") or "")[:MAX_ID_CHARS],
        stage=str(item.get("stage") or "")[:MAX_ID_CHARS],
    )


def heartbeat_result(record: Mapping[str, Any]) -> dict[str, Any]:
    """A deployment log record as the heartbeat's ``deployment_results`` entry."""
    spec = record.get("spec") or {}
    status = record.get("status", "DEPLOYING")
    return {
        "deployment_id": record["deployment_id"],
        "model_handle": spec.get("handle", ""),
        "model_version": spec.get("version", 0),
        "desired_state": "DEPLOYED",
        "state": "DEPLOYED" if status == "SUCCEEDED" else "UNDEPLOYED",
        "status": status,
        "reason": _line(record.get("reason") or ""),
        "rollback_failure_reason": _line(record["rollback_failure_reason"])
        if record.get("rollback_failure_reason")
        else None,
        "rollback_seconds": record.get("rollback_seconds"),
        "updated_at": record.get("updated_at"),
    }


def _line(text: str, limit: int = 500) -> str:
    return " ".join(str(text).split())[:limit]
