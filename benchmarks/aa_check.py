"""A/A check of auto's timing: two identical ONNX Runtime workers on the same source model.

Both sides run the same runtime, model, inputs and pinned CPU threads, timed with the
machinery ``--backend auto`` uses (:mod:`edgekiln.execute.timing`: warm-up, balanced pairs,
the order flipped every other pair; :class:`edgekiln.execute.statistics.RatioStats` for the
median ratio and its 95% CI), so any distance of the ratio from 1.00 is the machinery's own
bias and noise. Run it on a quiet machine, e.g.:

    python benchmarks/aa_check.py \
        --model zoo:mobilenet_v2 --model zoo:resnet18 --pairs 40 --json benchmarks/results/aa_check.json

It reports, per model, the median ratio, its CI, whether the CI holds 1.00, and the worst
relative distance from 1.00 of the CI bounds; the sequential rule's verdict on the same
ratios says whether auto would have called the two runs tied.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edgekiln.compile.frontends import import_model
from edgekiln.compile.sequential import TimingBudget, judge
from edgekiln.execute import timing
from edgekiln.execute.host import machine_description, usable_cpus
from edgekiln.execute.inputs import make_inputs
from edgekiln.execute.runners import LocalRunner
from edgekiln.execute.statistics import RatioStats


def aa_ratios(onnx_path: Path, inputs: Any, pairs: int, threads: int, min_half_s: float) -> list[float]:
    """Per-pair ratios of two identical ONNX Runtime workers, interleaved as auto times."""
    samples = make_inputs(inputs, 3, 0)
    runner = LocalRunner()
    workers = []
    try:
        for label in ("onnxruntime-a", "onnxruntime-b"):
            worker = runner.start(label)
            workers.append(worker)
            worker.load({"kind": "onnxruntime", "model": str(onnx_path), "device": "cpu", "threads": threads}, samples)
        pair = [timing.Timed("a", workers[0]), timing.Timed("b", workers[1])]
        timing.warm_up(pair, 1, 1)
        timing.balance(pair, min_half_s)
        position: dict[int, int] = {}
        for i in range(pairs):
            timing.run_pair(pair if i % 2 == 0 else pair[::-1], 1, position, start=2)
        assert pair[0].pairs and pair[1].pairs
        return [a / b for a, b in zip(pair[0].pairs, pair[1].pairs)]
    finally:
        for worker in workers:
            worker.close()


def check(model: str, pairs: int, threads: int, min_half_s: float = timing.MIN_HALF_S) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edgekiln-aa-") as tmp:
        source = import_model(model, Path(tmp) / "source")
        started = time.monotonic()
        ratios = aa_ratios(source.path, source.inputs, pairs, threads, min_half_s)
        seconds = time.monotonic() - started
    stats = RatioStats.from_ratios(ratios)
    verdict = judge({"a": ratios, "b": [1.0] * len(ratios)}, ("a", "b"), TimingBudget(max_pairs=max(5, pairs)), 0.0)
    return {
        "model": model,
        "pairs": stats.n,
        "threads": threads,
        "min_half_ms": round(min_half_s * 1e3, 1),
        "seconds": round(seconds, 2),
        "ratio": stats.to_dict(),
        "ci_holds_1": stats.ci95_low <= 1.0 <= stats.ci95_high,
        "max_distance_from_1": round(max(abs(stats.ci95_low - 1.0), abs(stats.ci95_high - 1.0)), 4),
        "median_distance_from_1": round(abs(stats.median - 1.0), 4),
        "sequential_verdict_against_exact_1": verdict.outcome,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="zoo:NAME or a model file (repeat; default zoo:mobilenet_v2)")
    parser.add_argument("--pairs", type=int, default=40, help="interleaved pairs per model (default 40)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of both runtimes (default: usable CPUs)")
    parser.add_argument(
        "--min-half-ms",
        type=float,
        action="append",
        help="shortest half of a pair in ms (repeat to compare, in turn per model; "
        f"default {timing.MIN_HALF_S * 1e3:g})",
    )
    parser.add_argument("--json", metavar="OUT", help="write the results as JSON to OUT")
    args = parser.parse_args(argv)
    threads = args.threads or usable_cpus()
    load_before = os.getloadavg()
    halves = [ms / 1e3 for ms in args.min_half_ms or [timing.MIN_HALF_S * 1e3]]
    results = [check(m, args.pairs, threads, h) for m in (args.model or ["zoo:mobilenet_v2"]) for h in halves]
    for r in results:
        s = r["ratio"]
        print(
            f"{r['model']}: A/A ratio median {s['median']:.3f} (95% CI {s['ci95_low']:.3f}-{s['ci95_high']:.3f}, "
            f"{r['pairs']} pairs, {threads} threads, halves >= {r['min_half_ms']:g} ms, spread {s['spread']:.0%}); "
            f"CI holds 1.00: {r['ci_holds_1']}"
        )
    if args.json:
        report = {
            "command": " ".join(["benchmarks/aa_check.py", *(argv if argv is not None else sys.argv[1:])]),
            "host": machine_description(),
            "load_average": {"before": load_before, "after": os.getloadavg()},
            "results": results,
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
