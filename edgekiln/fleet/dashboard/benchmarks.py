"""Benchmark suite results that CI jobs upload, per hardware target, and their page.

``edgekiln suite --upload`` sends the suite's results.json (an edgekiln
BenchReport) and, when it gated, gate.json.  The service keeps a bounded summary of each
upload — per measurement: the candidate's p50 and p99, each baseline's p50 and the median
ratio candidate / baseline — and the gate's verdict with its regressions.  The fleet does
not import edgekiln.bench (its layer may not): the summary reads the documented JSON.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, Field

from edgekiln.errors import UserError
from edgekiln.fleet.dashboard.charts import Series, line_chart

MAX_RESULTS = 500
MAX_REGRESSIONS = 50
HISTORY_UPLOADS = 30


# A hardware target: the suite's name (x86_64, rasp4b, h200) or a CI runner's label.
TARGET_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


class BenchmarkUpload(BaseModel):
    """POST /v1/benchmarks: a hardware target's suite results (and gate verdict)."""

    target: str = Field(pattern=TARGET_PATTERN)
    label: str = Field(default="", max_length=128, pattern=r"^[^\x00-\x1f\x7f]*$")
    report: dict[str, Any]
    gate: dict[str, Any] | None = None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _text(value: Any, limit: int = 200) -> str:
    return str(value)[:limit] if isinstance(value, (str, int, float)) else ""


def _result(entry: dict[str, Any]) -> dict[str, Any]:
    subjects = [s for s in entry.get("subjects") or [] if isinstance(s, dict)]
    candidate = next((s for s in subjects if s.get("role") == "candidate"), {})
    latency = candidate.get("latency") if isinstance(candidate.get("latency"), dict) else {}
    baselines = {
        _text(s.get("name"), 64): _number((s.get("latency") or {}).get("p50_ms"))
        for s in subjects
        if s.get("role") == "baseline" and isinstance(s.get("latency"), dict)
    }
    ratios = {
        _text(c.get("baseline"), 64): _number((c.get("ratio") or {}).get("median"))
        for c in entry.get("comparisons") or []
        if isinstance(c, dict) and isinstance(c.get("ratio"), dict)
    }
    return {
        "key": _text(entry.get("key"), 300),
        "candidate": _text(candidate.get("name"), 64),
        "p50_ms": _number(latency.get("p50_ms")),
        "p99_ms": _number(latency.get("p99_ms")),
        "baselines": baselines,
        "ratios": ratios,
    }


def summarize(upload: BenchmarkUpload) -> dict[str, Any]:
    """The bounded summary kept per upload; UserError when the report is not one."""
    report = upload.report
    results = report.get("results")
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise UserError("report.results must be a list of measurements (a BenchReport's results.json)")
    if len(results) > MAX_RESULTS:
        raise UserError(f"report has {len(results)} results (at most {MAX_RESULTS})")
    host = report.get("host") if isinstance(report.get("host"), dict) else {}
    summary: dict[str, Any] = {
        "created_utc": _text(report.get("created_utc"), 40),
        "edgekiln_version": _text(report.get("edgekiln_version"), 40),
        "host": _text(host.get("cpu"), 120),
        "results": [_result(r) for r in results],
        "skipped": len(report.get("skipped") or []),
        "gate": None,
    }
    if upload.gate is not None:
        regressions = [r for r in upload.gate.get("regressions") or [] if isinstance(r, dict)]
        summary["gate"] = {
            "passed": bool(upload.gate.get("passed")) and not regressions,
            "baseline": _text(upload.gate.get("baseline"), 200),
            "checked": len(upload.gate.get("checked") or []),
            "regressions": [
                {k: _text(r.get(k), 300) for k in ("key", "metric", "message")} for r in regressions[:MAX_REGRESSIONS]
            ],
        }
    return summary


def _short(key: str) -> str:
    """A chart title: model, backend, precision and batch of a gate key
    (``model/vendor/board/backend/precision/device/scenario/bN``)."""
    parts = key.split("/")
    return " · ".join([parts[0], *parts[-5:-3], parts[-1]]) if len(parts) >= 5 else key


def page(tables: Any, target: str) -> dict[str, Any]:
    """The benchmarks page for ``target`` (default: the first target)."""
    targets = tables.benchmark_targets()
    target = target if target in targets else (targets[0] if targets else "")
    history = tables.benchmark_history(target, HISTORY_UPLOADS) if target else []
    latest = history[-1] if history else None
    keys = [r["key"] for r in latest["results"]] if latest else []
    charts = []
    for key in keys:
        lines: dict[str, list[tuple[float, float]]] = {}
        for upload in history:
            for r in upload["results"]:
                if r["key"] != key:
                    continue
                if r["p50_ms"] is not None:
                    lines.setdefault(r["candidate"] or "candidate", []).append((upload["uploaded_at"], r["p50_ms"]))
                for name, p50 in r["baselines"].items():
                    if p50 is not None:
                        lines.setdefault(name, []).append((upload["uploaded_at"], p50))
        series = [Series(n, tuple(p)) for n, p in lines.items()]
        charts.append({"key": key, "chart": line_chart(_short(key), series, "ms")})
    return {"targets": targets, "target": target, "latest": latest, "uploads": len(history), "charts": charts}
