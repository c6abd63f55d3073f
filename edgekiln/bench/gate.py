"""The regression gate: a fresh benchmark report against a stored one, with ratio thresholds.

For every measurement (``ArtifactBench.key``) in the stored report:

- **ratio** to each baseline runtime present in both (the median of interleaved per-pair
  ratios, measured within one run, so machine load mostly cancels): regressed when the new
  median exceeds the stored one by more than ``ratio`` (default 15%);
- **latency** of the candidate (p50, single-stream) or its **throughput** (offline) against
  the stored absolute figure: regressed beyond ``latency`` (default 25%) or ``throughput``
  (default 20%). Absolute figures move with a shared machine's load, hence the looser bound;
  they catch what a ratio cannot (the baseline runtime got slower by as much);
- **accuracy**: top-1 agreement with the reference dropped by more than ``top1_drop``, or
  the max abs difference grew more than tenfold (and beyond 1e-4);
- a stored measurement that is missing or failed in the new report is a regression unless
  ``allow_missing``.

``edgekiln gate CURRENT.json STORED.json`` prints the verdict and exits 1 on a regression,
one line for each (``python -m edgekiln.bench.gate`` does the same, for older CI jobs).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Sequence

from edgekiln.bench.results import ArtifactBench, BenchReport
from edgekiln.errors import EdgekilnError, UserError


@dataclass(frozen=True)
class GateThresholds:
    """Allowed relative worsening per metric (0.15 = 15%)."""

    ratio: float = 0.15
    latency: float = 0.25
    throughput: float = 0.20
    top1_drop: float = 0.01
    allow_missing: bool = False

    def __post_init__(self) -> None:
        for name in ("ratio", "latency", "throughput", "top1_drop"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise UserError(f"gate threshold {name} must be a number >= 0, got {value!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateThresholds:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown gate thresholds {unknown}; valid: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Finding:
    """One metric of one measurement, compared."""

    key: str
    metric: str
    stored: float | None
    current: float | None
    limit: float | None
    regressed: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GateResult:
    baseline: str
    thresholds: GateThresholds
    checked: tuple[Finding, ...]
    not_compared: tuple[str, ...]

    @property
    def regressions(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.checked if f.regressed)

    @property
    def passed(self) -> bool:
        return not self.regressions

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "passed": self.passed,
            "thresholds": self.thresholds.to_dict(),
            "regressions": [f.to_dict() for f in self.regressions],
            "checked": [f.to_dict() for f in self.checked],
            "not_compared": list(self.not_compared),
        }

    def summary(self) -> str:
        """One line per regression (or one line saying it passed)."""
        if self.passed:
            return f"regression gate passed: {len(self.checked)} checks against {self.baseline}"
        head = f"regression gate FAILED against {self.baseline}: {len(self.regressions)} regression(s)"
        return "\n".join([head] + [f"  REGRESSED {f.key} {f.metric}: {f.message}" for f in self.regressions])


def _worse_above(
    key: str, metric: str, stored: float, current: float, allowed: float, unit: str, note: str = ""
) -> Finding:
    limit = stored * (1 + allowed)
    change = current / stored - 1 if stored else float("inf")
    regressed = current > limit
    message = (
        f"{current:.4g}{unit} against {stored:.4g}{unit} stored ({change:+.0%}; "
        f"allowed +{allowed:.0%}, limit {limit:.4g}{unit}){note}"
    )
    return Finding(key, metric, stored, current, limit, regressed, message)


def check(
    current: BenchReport,
    stored: BenchReport,
    thresholds: GateThresholds | None = None,
    baseline_name: str = "stored report",
) -> GateResult:
    """Compare ``current`` with ``stored``; see the module's docstring for the rules."""
    t = thresholds or GateThresholds()
    findings: list[Finding] = []
    not_compared: list[str] = []
    failed = {s.key: s for s in current.skipped}
    for old in stored.results:
        new = current.result(old.key)
        if new is None:
            reason = failed[old.key].reason if old.key in failed else "absent from the new report"
            if t.allow_missing:
                not_compared.append(f"{old.key}: {reason}")
            else:
                findings.append(Finding(old.key, "present", None, None, None, True, f"not measured now: {reason}"))
            continue
        if old.timings_meaningful and new.timings_meaningful:
            findings += _ratio_findings(old, new, t, not_compared)
            candidate = _candidate_finding(old, new, t)
            if candidate is not None:
                findings.append(candidate)
        else:
            not_compared.append(f"{old.key}: timings not meaningful (emulated); accuracy only")
        findings += _correctness_findings(old, new, t)
    for new in current.results:
        if stored.result(new.key) is None:
            not_compared.append(f"{new.key}: new, nothing stored to compare with")
    return GateResult(baseline=baseline_name, thresholds=t, checked=tuple(findings), not_compared=tuple(not_compared))


def _ratio_findings(
    old: ArtifactBench, new: ArtifactBench, t: GateThresholds, not_compared: list[str]
) -> list[Finding]:
    """One finding per stored baseline comparison; one the new report lacks goes to ``not_compared``."""
    findings: list[Finding] = []
    for c_old in old.comparisons:
        c_new = new.comparison(c_old.baseline)
        if c_new is None:
            not_compared.append(f"{old.key}: no {c_old.baseline} comparison in the new report")
            continue
        versions = ""
        old_base, new_base = old.subject(c_old.baseline), new.subject(c_old.baseline)
        if old_base and new_base and old_base.version != new_base.version:
            versions = f"; note: {c_old.baseline} changed from {old_base.version} to {new_base.version}"
        q = c_new.ratio
        findings.append(
            _worse_above(
                old.key,
                f"ratio to {c_old.baseline}",
                c_old.ratio.median,
                q.median,
                t.ratio,
                "x",
                f"; new 95% CI {q.ci95_low:.4g}-{q.ci95_high:.4g} over {q.n} pairs{versions}",
            )
        )
    return findings


def _candidate_finding(old: ArtifactBench, new: ArtifactBench, t: GateThresholds) -> Finding | None:
    """Throughput for the offline scenario, p50 latency otherwise; None when either side lacks it."""
    old_c, new_c = old.candidate, new.candidate
    if old.scenario == "offline":
        if old_c.throughput_samples_per_s and new_c.throughput_samples_per_s:
            stored_tp, current_tp = old_c.throughput_samples_per_s, new_c.throughput_samples_per_s
            limit = stored_tp * (1 - t.throughput)
            return Finding(
                old.key,
                "throughput",
                stored_tp,
                current_tp,
                limit,
                current_tp < limit,
                f"{current_tp:.4g} samples/s against {stored_tp:.4g} stored "
                f"({current_tp / stored_tp - 1:+.0%}; allowed -{t.throughput:.0%})",
            )
    elif old_c.latency and new_c.latency:
        return _worse_above(old.key, "p50 latency", old_c.latency.p50_ms, new_c.latency.p50_ms, t.latency, " ms")
    return None


def _correctness_findings(old: ArtifactBench, new: ArtifactBench, t: GateThresholds) -> list[Finding]:
    """Top-1 agreement and max abs difference, when both reports measured correctness."""
    if not (old.correctness and new.correctness):
        return []
    drop = old.correctness.top1_agreement - new.correctness.top1_agreement
    limit = max(10 * old.correctness.max_abs_diff, 1e-4)
    return [
        Finding(
            old.key,
            "top-1 agreement",
            old.correctness.top1_agreement,
            new.correctness.top1_agreement,
            old.correctness.top1_agreement - t.top1_drop,
            drop > t.top1_drop + 1e-12,
            f"{new.correctness.top1_agreement:.3f} against {old.correctness.top1_agreement:.3f} stored "
            f"(allowed drop {t.top1_drop:.3f})",
        ),
        Finding(
            old.key,
            "max abs diff",
            old.correctness.max_abs_diff,
            new.correctness.max_abs_diff,
            limit,
            new.correctness.max_abs_diff > limit,
            f"{new.correctness.max_abs_diff:.3g} against {old.correctness.max_abs_diff:.3g} stored (limit {limit:.3g})",
        ),
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The gate's arguments (``edgekiln gate``; also ``python -m edgekiln.bench.gate``)."""
    parser.add_argument("current", help="the new report (edgekiln bench --json, or a suite's results.json)")
    parser.add_argument("stored", help="the stored baseline report")
    defaults = GateThresholds()
    for name in ("ratio", "latency", "throughput", "top1_drop"):
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=float,
            default=getattr(defaults, name),
            help=f"allowed relative worsening (default {getattr(defaults, name)})",
        )
    parser.add_argument("--allow-missing", action="store_true", help="a stored measurement may be absent")
    parser.add_argument("--json", metavar="OUT", help="write the verdict as JSON")


def run(args: argparse.Namespace) -> int:
    """Check, write ``--json``, print the verdict (one line per regression); 1 on a regression."""
    thresholds = GateThresholds(
        ratio=args.ratio,
        latency=args.latency,
        throughput=args.throughput,
        top1_drop=args.top1_drop,
        allow_missing=args.allow_missing,
    )
    result = check(BenchReport.load(args.current), BenchReport.load(args.stored), thresholds, args.stored)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result.to_dict(), f, indent=2)
    print(result.summary())
    return 0 if result.passed else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m edgekiln.bench.gate``: the same as ``edgekiln gate``, kept for older CI jobs."""
    parser = argparse.ArgumentParser(
        prog="python -m edgekiln.bench.gate",
        description="Compare a benchmark report with a stored one; exit 1 on a regression (see: edgekiln gate).",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except EdgekilnError as exc:
        print(f"gate: error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
