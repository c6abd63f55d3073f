"""The bench stage's type: :class:`BenchReport`, frozen, saved and loaded as JSON.

One report holds one :class:`ArtifactBench` per benchmarked artifact (``edgekiln bench A B``
or every combination of a suite) and the combinations that could not run here, with why.
The JSON is what CI jobs read and what the regression gate compares; ``SCHEMA`` names its
version, and loading a file of another version is an error that says so.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from edgekiln.errors import UserError
from edgekiln.execute.statistics import LatencyStats, RatioStats

SCHEMA = "edgekiln.bench/1"


@dataclass(frozen=True)
class SubjectResult:
    """One measured runtime: the candidate (the artifact) or a baseline.

    Times are per query: one model call in single-stream, ``batch`` samples in offline. A
    runtime much faster than the slowest runs ``queries_per_pair`` queries in each interleaved
    pair (balanced wall time); the ratios use ``pair_ms``, the latency figures every query.
    ``peak_rss_mb`` is the peak resident memory of the process that ran the model (the
    interpreter included); ``rss_before_load_mb`` is that process before the model loaded,
    so the difference is what the model and its runtime cost.
    """

    name: str
    role: str  # "candidate" | "baseline"
    version: str
    load_s: float | None
    first_inference_ms: float | None
    latency: LatencyStats | None
    throughput_samples_per_s: float | None
    achieved_gflops: float | None
    peak_share: float | None  # achieved / the profile's peak FP32 GFLOP/s
    peak_rss_mb: float | None
    rss_before_load_mb: float | None
    model_bytes: int | None
    times_ms: tuple[float, ...] = ()  # every measured query
    pair_ms: tuple[float, ...] = ()  # per interleaved pair: the median of this runtime's queries in it
    queries_per_pair: int = 1

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["latency"] = self.latency.to_dict() if self.latency else None
        data["times_ms"] = list(self.times_ms)
        data["pair_ms"] = list(self.pair_ms)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SubjectResult:
        values = dict(data)
        values["latency"] = LatencyStats.from_dict(data["latency"]) if data.get("latency") else None
        values["times_ms"] = tuple(float(t) for t in data.get("times_ms", ()))
        values["pair_ms"] = tuple(float(t) for t in data.get("pair_ms", ()))
        return cls(**values)


@dataclass(frozen=True)
class Comparison:
    """The candidate against one baseline: per-pair ratios candidate / baseline time."""

    baseline: str
    ratio: RatioStats

    @property
    def speedup(self) -> float:
        """How many times faster the candidate is (median pair); below 1: slower."""
        return 1.0 / self.ratio.median

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "ratio": self.ratio.to_dict(), "speedup": self.speedup}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Comparison:
        return cls(baseline=data["baseline"], ratio=RatioStats.from_dict(data["ratio"]))


@dataclass(frozen=True)
class Correctness:
    """The candidate's outputs against a reference runtime on the same inputs."""

    reference: str
    samples: int
    max_abs_diff: float
    top1_agreement: float

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Correctness:
        return cls(**data)


@dataclass(frozen=True)
class ArtifactBench:
    """Everything measured for one artifact in one run."""

    model: str
    profile: str
    backend: str
    precision: str
    device: str
    scenario: str
    batch: int  # samples per query
    calls_per_query: int
    artifact: str
    artifact_bytes: int
    runner: str  # "local" | "emulated" | "agent"
    runner_description: str
    timings_meaningful: bool
    timings_note: str | None
    macs: int | None
    flops_per_sample: float | None
    peak_gflops: float | None
    peak_source: str | None
    pairs: int
    warmup: int
    subjects: tuple[SubjectResult, ...]
    comparisons: tuple[Comparison, ...]
    correctness: Correctness | None
    correctness_note: str | None
    baseline_source: str | None
    wall_s: float
    extra: Mapping[str, Any] = field(default_factory=dict)
    # Baselines that could not run (a runtime that lacks an operator, say), with why: the
    # artifact and the other baselines are still measured.
    baselines_failed: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """What identifies this measurement across runs (the regression gate's key)."""
        return (
            f"{self.model}/{self.profile}/{self.backend}/{self.precision}/{self.device}/{self.scenario}/b{self.batch}"
        )

    @property
    def candidate(self) -> SubjectResult:
        return next(s for s in self.subjects if s.role == "candidate")

    def subject(self, name: str) -> SubjectResult | None:
        return next((s for s in self.subjects if s.name == name), None)

    def comparison(self, baseline: str) -> Comparison | None:
        return next((c for c in self.comparisons if c.baseline == baseline), None)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["key"] = self.key
        data["subjects"] = [s.to_dict() for s in self.subjects]
        data["comparisons"] = [c.to_dict() for c in self.comparisons]
        data["correctness"] = self.correctness.to_dict() if self.correctness else None
        data["extra"] = dict(self.extra)
        data["baselines_failed"] = dict(self.baselines_failed)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArtifactBench:
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        values["subjects"] = tuple(SubjectResult.from_dict(s) for s in data["subjects"])
        values["comparisons"] = tuple(Comparison.from_dict(c) for c in data["comparisons"])
        values["correctness"] = Correctness.from_dict(data["correctness"]) if data.get("correctness") else None
        values["extra"] = dict(data.get("extra") or {})
        values["baselines_failed"] = dict(data.get("baselines_failed") or {})
        return cls(**values)


@dataclass(frozen=True)
class Skipped:
    """A combination that was not benchmarked, and why (not runnable here, or it failed)."""

    key: str
    status: str  # "skipped" | "failed"
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "status": self.status, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Skipped:
        return cls(key=data["key"], status=data["status"], reason=data["reason"])


@dataclass(frozen=True)
class BenchReport:
    """The result of one benchmark run: the host, the options, and one entry per artifact."""

    created_utc: str
    edgekiln_version: str
    host: Mapping[str, Any]
    options: Mapping[str, Any]
    results: tuple[ArtifactBench, ...]
    skipped: tuple[Skipped, ...] = ()
    command: str | None = None
    schema: str = SCHEMA

    def result(self, key: str) -> ArtifactBench | None:
        return next((r for r in self.results if r.key == key), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "created_utc": self.created_utc,
            "edgekiln_version": self.edgekiln_version,
            "command": self.command,
            "host": dict(self.host),
            "options": dict(self.options),
            "results": [r.to_dict() for r in self.results],
            "skipped": [s.to_dict() for s in self.skipped],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BenchReport:
        if not isinstance(data, Mapping) or data.get("schema") != SCHEMA:
            found = data.get("schema") if isinstance(data, Mapping) else type(data).__name__
            raise UserError(f"not an edgekiln benchmark report (schema {found!r}; this edgekiln reads {SCHEMA})")
        try:
            return cls(
                created_utc=data["created_utc"],
                edgekiln_version=data["edgekiln_version"],
                host=dict(data["host"]),
                options=dict(data["options"]),
                results=tuple(ArtifactBench.from_dict(r) for r in data["results"]),
                skipped=tuple(Skipped.from_dict(s) for s in data.get("skipped", ())),
                command=data.get("command"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"a malformed benchmark report: {type(exc).__name__}: {exc}") from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BenchReport:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"benchmark report {path} does not exist") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{path} is not JSON: {exc}") from None
        return cls.from_dict(data)
