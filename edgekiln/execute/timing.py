"""Interleaved pair timing: several workers take turns (A B A B …) on one machine.

Whatever else the machine does lands on both sides of a pair, so the per-pair ratio stays
trustworthy when absolute times do not. The halves of a pair are balanced in wall time: a
runtime K times faster than the slowest runs about K queries in its half (up to
``BALANCE_S`` of them, at most ``MAX_QUERIES_PER_PAIR``) and the pair takes their median, so
a 17 ms query is not weighed against a 2 s one on a single draw of the machine's load.
Every half lasts at least about ``MIN_HALF_S``: on a shared 2-core host one 5 ms query
ranged 2-14 ms, so a fast model's pair of single queries was mostly noise, while the median
of ten queries is not thrown by one stall.
Between one subject's turn and the next, the worker that ran is let go idle
(:meth:`~edgekiln.execute.runners.Worker.settle`), so its spinning threads do not slow the next.

The benchmark harness and compile's auto choice both time with this.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Sequence

from edgekiln.execute.progress import NullProgress
from edgekiln.execute.runners import Worker

# Without a pair count: measure until the deadline, at least MIN_PAIRS and at most MAX_PAIRS.
MIN_PAIRS = 3
MAX_PAIRS = 1000
# Balanced pairs: each half of a pair lasts about min(BALANCE_S, the slowest query).
BALANCE_S = 0.2
MAX_QUERIES_PER_PAIR = 50
# The shortest half of a pair: fast models run several queries per half (see above).
MIN_HALF_S = 0.05


@dataclass
class Timed:
    """One worker being timed, and what was measured of it."""

    name: str
    worker: Worker
    first_s: float | None = None
    warm: list[float] | None = None
    times: list[float] | None = None  # every measured query
    pairs: list[float] | None = None  # per pair: the median of its queries in that pair
    per_pair: int = 1


def warm_up(subjects: Sequence[Timed], warmup: int, calls: int) -> None:
    """Each worker's first query (the first inference), then ``warmup`` more."""
    for s in subjects:
        s.first_s = s.worker.run(1, calls)[0]
        s.warm = s.worker.run(warmup, calls, start=calls) if warmup else []
        if len(subjects) > 1:
            # The warm-up sets the queries per pair, so it runs as the pairs do: after the
            # last worker went idle. Once, ONNX Runtime warmed up beside TVM's spinning pool
            # looked 5x slower, got 2 queries a half instead of 9, and its slow first query
            # after each TVM turn then weighed half of every pair.
            s.worker.settle()


def balance(subjects: Sequence[Timed], min_half_s: float = MIN_HALF_S) -> None:
    """Queries per pair for each subject, from its warm-up (or first) query time: each half
    lasts about the slowest query, at least ``min_half_s`` and at most ``BALANCE_S``."""
    estimates = {}
    for s in subjects:
        seen = sorted(s.warm or []) or [s.first_s or 0.0]
        # The lower median: one stalled warm-up query (another process took the core)
        # must not make a fast subject look slow and leave its pairs unbalanced.
        estimates[s.name] = max(seen[(len(seen) - 1) // 2], 1e-6)
    window = min(BALANCE_S, max(min_half_s, *estimates.values()))
    for s in subjects:
        s.per_pair = max(1, min(MAX_QUERIES_PER_PAIR, round(window / estimates[s.name])))


def measure_pairs(
    subjects: Sequence[Timed],
    calls: int,
    *,
    runs: int | None = None,
    duration_s: float = 10.0,
    start: int = 0,
    label: str = "",
    progress: Any = None,
) -> int:
    """Interleave the subjects for ``runs`` pairs (or for ``duration_s``, between
    ``MIN_PAIRS`` and ``MAX_PAIRS`` pairs); returns the number of pairs measured.

    Each query is ``calls`` model calls; queries go on through the inputs from ``start``
    (where the warm-up left off). Fills each subject's ``times`` and ``pairs``.
    """
    progress = progress or NullProgress()
    balance(subjects)
    for s in subjects:
        s.times, s.pairs = [], []
    deadline = None if runs else time.monotonic() + duration_s
    pairs = 0
    position: dict[int, int] = {}
    while True:
        if runs is not None and pairs >= runs:
            break
        if runs is None and pairs >= MIN_PAIRS and (time.monotonic() >= deadline or pairs >= MAX_PAIRS):
            break
        run_pair(subjects, calls, position, start)
        pairs += 1
        note = "  ".join(
            f"{s.name} {s.pairs[-1] * 1e3:.1f} ms" + (f" (x{s.per_pair})" if s.per_pair > 1 else "") for s in subjects
        )
        progress.advance(pairs, runs, f"{label}: {note}" if label else note, unit="pair")
    return pairs


def run_pair(subjects: Sequence[Timed], calls: int, position: dict[int, int], start: int = 0) -> None:
    """One interleaved pair: each subject in turn runs its ``per_pair`` queries; appends to
    its ``times`` and ``pairs``. ``position`` holds where each worker is in its inputs (keyed
    by worker, as several ``Timed`` may share one), starting at ``start``."""
    for s in subjects:
        key = id(s.worker)
        at = position.get(key, start)
        times = s.worker.run(s.per_pair, calls, start=at)
        if len(subjects) > 1:
            s.worker.settle()  # its spinning threads would slow the next subject down
        position[key] = at + s.per_pair * calls
        s.times = [] if s.times is None else s.times
        s.pairs = [] if s.pairs is None else s.pairs
        s.times.extend(times)
        s.pairs.append(statistics.median(times))


def median_ratio(candidate: Timed, baseline: Timed) -> float:
    """The median over pairs of the candidate's time over the baseline's."""
    assert candidate.pairs and baseline.pairs
    return statistics.median(c / b for c, b in zip(candidate.pairs, baseline.pairs))
