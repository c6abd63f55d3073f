"""Benchmarks of compiled artifacts against baseline runtimes, interleaved in one run.

``bench(artifacts, BenchOptions(...)) -> BenchReport`` (:mod:`.harness`); statistics in
:mod:`.statistics`, baselines in :mod:`.baselines`, Markdown and plots in :mod:`.report`,
the regression gate in :mod:`.gate`. Where a model runs and how pairs are timed is
:mod:`edgekiln.execute`. Importing this package loads nothing heavy; each name is imported
on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BenchOptions", "BenchReport", "GateThresholds", "bench", "bench_artifact"]

_WHERE = {
    "BenchOptions": "edgekiln.bench.harness",
    "bench": "edgekiln.bench.harness",
    "bench_artifact": "edgekiln.bench.harness",
    "BenchReport": "edgekiln.bench.results",
    "GateThresholds": "edgekiln.bench.gate",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'edgekiln.bench' has no attribute {name!r}")
