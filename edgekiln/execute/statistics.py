"""Statistics of benchmark samples: latency percentiles and ratios of interleaved pairs.

Conventions (MLPerf LoadGen's):

- **Percentiles** use the nearest-rank definition: the p-th percentile of n sorted samples is
  the sample at 1-based rank ``ceil(p / 100 * n)``. A reported p99 is therefore a latency that
  was observed, never an interpolation between two, and with fewer than 100 samples it is
  the maximum, which is what it honestly is.
- **Ratios** are candidate time / baseline time of one interleaved pair (A B A B …): both
  halves of a pair ran seconds apart on the same machine, so load from other processes hits
  both and the ratio stays meaningful on a noisy shared machine where absolute times do not.
  Their summary is the median (robust to a disturbed pair), the geometric mean (the right
  mean for ratios), the p10–p90 range and a distribution-free 95% confidence interval of the
  median from order statistics.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

from edgekiln.errors import InternalError, UserError


def percentile(samples: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0 < p <= 100) of ``samples`` by nearest rank."""
    if not samples:
        raise UserError("no samples to take a percentile of")
    if not 0 < p <= 100:
        raise UserError(f"a percentile must be in (0, 100], got {p}")
    ordered = sorted(samples)
    # The epsilon keeps float noise (99/100*100 = 99.00000000000001) from skipping a rank.
    rank = max(1, math.ceil(p / 100.0 * len(ordered) - 1e-9))
    return float(ordered[rank - 1])


def median_ci95(samples: Sequence[float]) -> tuple[float, float]:
    """A distribution-free 95% confidence interval of the median (order statistics).

    The ranks are n/2 ∓ 1.96·√n/2 (the normal approximation of the binomial(n, ½) that
    counts samples below the median); below 6 samples no such interval is narrower than
    the whole range, so that is what comes back.
    """
    if not samples:
        raise UserError("no samples for a confidence interval")
    ordered = sorted(samples)
    n = len(ordered)
    half_width = 1.96 * math.sqrt(n) / 2.0
    lo = max(1, math.floor(n / 2.0 - half_width))
    hi = min(n, math.ceil(n / 2.0 + half_width) + 1)
    if n < 6:
        lo, hi = 1, n
    return float(ordered[lo - 1]), float(ordered[hi - 1])


def _median(ordered: Sequence[float]) -> float:
    n = len(ordered)
    mid = n // 2
    return float(ordered[mid]) if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2.0


@dataclass(frozen=True)
class LatencyStats:
    """Latency of ``n`` measured queries in milliseconds (warm-up excluded)."""

    n: int
    mean_ms: float
    stdev_ms: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def from_seconds(cls, seconds: Sequence[float]) -> LatencyStats:
        if not seconds:
            raise UserError("no latency samples were measured")
        ms = [float(s) * 1e3 for s in seconds]
        if any(not math.isfinite(v) or v < 0 for v in ms):
            raise InternalError(f"latency samples must be finite and >= 0, got {ms}")
        n = len(ms)
        mean = math.fsum(ms) / n
        stdev = math.sqrt(math.fsum((v - mean) ** 2 for v in ms) / (n - 1)) if n > 1 else 0.0
        return cls(
            n=n,
            mean_ms=mean,
            stdev_ms=stdev,
            min_ms=min(ms),
            p50_ms=percentile(ms, 50),
            p90_ms=percentile(ms, 90),
            p99_ms=percentile(ms, 99),
            max_ms=max(ms),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyStats:
        return cls(
            n=int(data["n"]),
            **{k: float(data[k]) for k in ("mean_ms", "stdev_ms", "min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms")},
        )


@dataclass(frozen=True)
class RatioStats:
    """Per-pair ratios candidate / baseline of interleaved runs (> 1: the candidate is slower).

    ``spread`` is (p90 − p10) / median: the relative width of the middle 80% of the pairs, a
    direct measure of how much the machine disturbed the comparison.
    """

    n: int
    median: float
    geomean: float
    min: float
    p10: float
    p90: float
    max: float
    ci95_low: float
    ci95_high: float
    spread: float

    @classmethod
    def from_ratios(cls, ratios: Sequence[float]) -> RatioStats:
        if not ratios:
            raise UserError("no pairs were measured")
        if any(not math.isfinite(r) or r <= 0 for r in ratios):
            raise InternalError(f"ratios must be finite and > 0, got {list(ratios)}")
        ordered = sorted(float(r) for r in ratios)
        median = _median(ordered)
        low, high = median_ci95(ordered)
        p10, p90 = _nearest_rank_low(ordered, 10), percentile(ordered, 90)
        return cls(
            n=len(ordered),
            median=median,
            geomean=math.exp(math.fsum(math.log(r) for r in ordered) / len(ordered)),
            min=ordered[0],
            p10=p10,
            p90=p90,
            max=ordered[-1],
            ci95_low=low,
            ci95_high=high,
            spread=(p90 - p10) / median,
        )

    @classmethod
    def from_pairs(cls, candidate: Sequence[float], baseline: Sequence[float]) -> RatioStats:
        """Ratios of the i-th candidate time to the i-th baseline time."""
        if len(candidate) != len(baseline):
            raise InternalError(f"{len(candidate)} candidate times but {len(baseline)} baseline times")
        if any(b <= 0 for b in baseline):
            raise InternalError("a baseline time of zero cannot be a ratio's denominator")
        return cls.from_ratios([c / b for c, b in zip(candidate, baseline)])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RatioStats:
        return cls(
            n=int(data["n"]),
            **{
                f: float(data[f])
                for f in ("median", "geomean", "min", "p10", "p90", "max", "ci95_low", "ci95_high", "spread")
            },
        )


def _nearest_rank_low(ordered: Sequence[float], p: float) -> float:
    # The lower tail mirrors the upper one: p10 is the sample at rank n + 1 - ceil(0.9 n), so
    # that p10 and p90 are symmetric in rank (for 5 samples: the 1st and the 5th).
    n = len(ordered)
    rank = n + 1 - max(1, math.ceil((100 - p) / 100.0 * n - 1e-9))
    return float(ordered[rank - 1])
