"""Metrics, heartbeats and delivery: what the agent sends to the fleet, and how.

The device talks to the fleet over plain HTTP(S) with the standard library only (no
boto3, no HTTP client package on the device): heartbeats and batch notices are JSON
POSTs with the device's bearer token; captured data goes to S3 through short-lived
presigned PUT URLs that the fleet hands out for the device's own prefix.  A device
therefore never holds S3 credentials and cannot reach another device's objects.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from edgekiln.errors import UserError

log = logging.getLogger(__name__)

LATENCY_WINDOW = 2048


class FleetUnavailable(UserError):
    """The fleet service (or the object store) could not be reached, or failed (5xx)."""


class FleetRejected(UserError):
    """The fleet refused a request (4xx); retrying the same request will not help."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


# -- metrics -------------------------------------------------------------------------
class ModelMetrics:
    """Inference count, errors, latency percentiles and last times for one model."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.inference_count = 0
        self.error_count = 0
        self.latest_inference: float | None = None
        self.latest_sample: float | None = None
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)

    def record(self, seconds: float, ok: bool, now: float) -> None:
        with self._lock:
            if ok:
                self.inference_count += 1
                self._latencies.append(seconds)
                self.latest_inference = now
            else:
                self.error_count += 1

    def sample(self, now: float) -> None:
        with self._lock:
            self.latest_sample = now

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            values = sorted(self._latencies)
            return {
                "inference_count": self.inference_count,
                "error_count": self.error_count,
                "latency_p50_ms": _percentile(values, 0.50) * 1e3 if values else None,
                "latency_p99_ms": _percentile(values, 0.99) * 1e3 if values else None,
                "latest_inference": self.latest_inference,
                "latest_sample": self.latest_sample,
            }


def _percentile(values: list[float], q: float) -> float:
    # Nearest-rank on the sorted window: stable, no interpolation surprises for small n.
    index = min(len(values) - 1, max(0, int(round(q * len(values) + 0.5)) - 1))
    return values[index]


class ProcessMetrics:
    """CPU use between calls, resident memory and uptime of this process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started = clock()
        self._last = (clock(), _cpu_seconds())

    def snapshot(self) -> dict[str, float]:
        now, cpu = self.clock(), _cpu_seconds()
        wall = now - self._last[0]
        percent = 100.0 * (cpu - self._last[1]) / wall if wall > 0 else 0.0
        self._last = (now, cpu)
        return {
            "cpu_percent": round(percent, 2),
            "memory_rss_bytes": _rss_bytes(),
            "uptime_seconds": round(now - self.started, 3),
        }


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass(frozen=True)
class Metric:
    """One metric of a heartbeat (Edge Manager's EdgeMetric)."""

    dimension: str
    metric_name: str
    value: float
    timestamp: float


@dataclass(frozen=True)
class ModelReport:
    """One loaded (or captured-for) model's part of a heartbeat."""

    model_name: str
    model_version: str
    latest_sample_time: float | None
    latest_inference: float | None
    model_metrics: tuple[Metric, ...]


@dataclass(frozen=True)
class Heartbeat:
    """A heartbeat with the fields of Edge Manager's SendHeartbeat (snake_case)."""

    heartbeat_id: str
    device_name: str
    device_fleet_name: str
    agent_version: str
    timestamp: float
    agent_metrics: tuple[Metric, ...]
    models: tuple[ModelReport, ...]
    faults: tuple[dict[str, Any], ...]

    def to_json(self) -> dict[str, Any]:
        """The JSON body the fleet reads (lists where the dataclass holds tuples)."""
        return json.loads(json.dumps(asdict(self)))


MODEL_METRICS = ("inference_count", "error_count", "latency_p50_ms", "latency_p99_ms")


def model_report(name: str, version: str, snapshot: dict[str, Any], now: float) -> ModelReport:
    """A model's part of a heartbeat from its :meth:`ModelMetrics.snapshot`."""
    return ModelReport(
        model_name=name,
        model_version=version,
        latest_sample_time=snapshot.get("latest_sample"),
        latest_inference=snapshot.get("latest_inference"),
        model_metrics=tuple(Metric("model", k, snapshot[k], now) for k in MODEL_METRICS if snapshot.get(k) is not None),
    )


def build_heartbeat(
    *,
    device: str,
    fleet: str,
    agent_version: str,
    now: float,
    agent: dict[str, Any],
    models: Iterable[ModelReport],
    faults: list[dict[str, Any]],
) -> Heartbeat:
    """A heartbeat stamped ``now`` (wall time); ``agent`` maps metric names to values."""
    metrics = tuple(Metric("agent", k, v, now) for k, v in sorted(agent.items()) if v is not None)
    return Heartbeat(
        heartbeat_id=uuid.uuid4().hex,
        device_name=device,
        device_fleet_name=fleet,
        agent_version=agent_version,
        timestamp=now,
        agent_metrics=metrics,
        models=tuple(models),
        faults=tuple(faults),
    )


# -- HTTP to the fleet ---------------------------------------------------------------
class FleetClient:
    """JSON over HTTP to the fleet service with the device's bearer token."""

    def __init__(self, endpoint: str, token: Callable[[], str], timeout: float = 10.0) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.token = token
        self.timeout = timeout

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body, separators=(",", ":")).encode()
        request = urllib.request.Request(
            self.endpoint + path,
            data=data,
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.token()}"},
        )
        raw = self._send(request, f"POST {path}")
        return json.loads(raw or b"{}")

    def get(self, path: str, limit: int = 1 << 20) -> dict[str, Any]:
        """GET a JSON object of at most ``limit`` bytes from the fleet."""
        request = urllib.request.Request(
            self.endpoint + path, method="GET", headers={"Authorization": f"Bearer {self.token()}"}
        )
        raw = self._send(request, f"GET {path}", limit)
        try:
            data = json.loads(raw or b"{}")
        except ValueError:
            raise FleetUnavailable(f"GET {path}: the answer is not JSON") from None
        if not isinstance(data, dict):
            raise FleetUnavailable(f"GET {path}: the answer is not a JSON object")
        return data

    def put(self, url: str, data: bytes) -> None:
        """PUT to a presigned URL (no credentials of ours: the URL carries them)."""
        request = urllib.request.Request(
            url, data=data, method="PUT", headers={"Content-Type": "application/octet-stream"}
        )
        self._send(request, "PUT object")

    def _send(self, request: urllib.request.Request, what: str, limit: int | None = None) -> bytes:
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                if limit is None:
                    return response.read()
                body = response.read(limit + 1)
                if len(body) > limit:
                    raise FleetUnavailable(f"{what}: the answer is over {limit} bytes")
                return body
        except urllib.error.HTTPError as exc:
            detail = _detail(exc)
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                raise FleetRejected(f"{what}: {exc.code} {detail}", exc.code) from None
            raise FleetUnavailable(f"{what}: {exc.code} {detail}") from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise FleetUnavailable(f"{what}: {reason}") from None


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = exc.read(2048).decode("utf-8", "replace")
        return " ".join(json.loads(body).get("detail", body).split()) if body.startswith("{") else body[:200]
    except (ValueError, OSError, AttributeError):
        return exc.reason if isinstance(exc.reason, str) else ""


# -- where capture batches go --------------------------------------------------------
class CloudSink:
    """Batches to S3 through presigned URLs from the fleet, then a notice to the fleet."""

    def __init__(self, client: FleetClient) -> None:
        self.client = client

    def deliver(self, encoded: Any, models: dict[str, str]) -> None:
        keys = [*encoded.objects, encoded.key]
        answer = self.client.post("/v1/agent/uploads", {"keys": keys})
        urls = answer.get("urls", {})
        # Large items first, the JSON Lines object last: whoever sees the batch sees all of it.
        for key, data in encoded.objects.items():
            self.client.put(urls[key], data)
        self.client.put(urls[encoded.key], encoded.body)
        self.client.post(
            "/v1/agent/captures",
            {
                "key": encoded.key,
                "objects": list(encoded.objects),
                "bytes": len(encoded.body) + sum(len(v) for v in encoded.objects.values()),
                "records": [{"record_id": rid, "model_name": models.get(rid, "")} for rid in encoded.record_ids],
            },
        )


class DiskSink:
    """Batches as files under ``root/<fleet>/<device>/``, written atomically."""

    def __init__(self, root: Path, fleet: str, device: str) -> None:
        self.root = Path(root) / fleet / device

    def deliver(self, encoded: Any, models: dict[str, str]) -> None:
        for key, data in [*encoded.objects.items(), (encoded.key, encoded.body)]:
            path = self.root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
