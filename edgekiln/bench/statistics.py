"""Benchmark statistics live in :mod:`edgekiln.execute.statistics`, beside the interleaved
timing that compile's auto choice and the benchmark harness share; this name keeps working
for the harness, the gate and scripts that import it from here."""

from edgekiln.execute.statistics import LatencyStats, RatioStats, median_ci95, percentile

__all__ = ["LatencyStats", "RatioStats", "median_ci95", "percentile"]
