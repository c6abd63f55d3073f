"""The health gate a new model version passes before it is committed.

It runs on the new version's own worker while the old version still answers Predict:
1. the model loaded (the caller opened it);
2. the validation inputs (:func:`edgekiln.execute.inputs.make_inputs`, seeded, so the same on
   every machine) give outputs with no NaN or Inf, and, when the package recorded the
   outputs of those inputs, within the recorded tolerance of them;
3. the p50 latency of ``runs`` calls stays within the budget (the plan's, else the
   package's, else the agent's ``deploy.latency_budget_ms``; none means no latency check).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from edgekiln.errors import EdgekilnError, first_line


@dataclass(frozen=True)
class Reference:
    """Outputs recorded for the seeded validation inputs, and how close the device must come."""

    seed: int
    outputs: list[list[Any]]  # per sample, one array per output
    tolerance_abs: float


def recorded_reference(description: Any, path: Path) -> Reference | None:
    """The package's recorded outputs (its verified ``health`` description and member bytes,
    kept in staging), or None when it recorded none."""
    from edgekiln.execute.inputs import decode_outputs

    if not description or not path.is_file():
        return None
    outputs = decode_outputs(description["outputs"], path.read_bytes())
    return Reference(int(description["seed"]), outputs, float(description["tolerance_abs"]))


@dataclass(frozen=True)
class Health:
    ok: bool
    reason: str
    p50_ms: float | None = None
    max_abs_diff: float | None = None


def check_health(
    model: Any,
    *,
    samples: int,
    runs: int,
    budget_ms: float | None,
    reference: Reference | None = None,
) -> Health:
    """Judge ``model`` (anything with ``manifest`` and ``run``); never raises for the model's faults."""
    import numpy as np

    from edgekiln.execute.inputs import compare_outputs, make_inputs

    manifest = model.manifest
    count = len(reference.outputs) if reference else samples
    inputs = make_inputs(manifest.inputs, count, seed=reference.seed if reference else 0)
    try:
        outputs = [list(model.run(list(sample))) for sample in inputs]
    except (EdgekilnError, OSError, ValueError, RuntimeError) as exc:
        return Health(False, f"the model fails on its validation inputs: {first_line(exc)}")
    names = [spec.name for spec in manifest.outputs]
    for got in outputs:
        for index, array in enumerate(got):
            array = np.asarray(array)
            if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
                name = names[index] if index < len(names) else str(index)
                return Health(False, f"output {name!r} holds NaN or Inf on the validation inputs")
    worst = None
    if reference is not None:
        try:
            diff = compare_outputs(reference.outputs, outputs, names)
        except EdgekilnError as exc:
            return Health(False, f"outputs differ from the recorded ones: {exc.one_line()}")
        worst = diff.worst
        if not worst <= reference.tolerance_abs:
            return Health(
                False,
                f"outputs differ from the recorded ones by {worst:.3g} (tolerance {reference.tolerance_abs:g})",
                max_abs_diff=worst,
            )
    p50 = _p50_ms(model, inputs[0], runs)
    if p50 is None:
        return Health(False, "the model failed while it was timed")
    if budget_ms is not None and p50 > budget_ms:
        return Health(False, f"p50 latency {p50:.2f} ms is over the budget of {budget_ms:g} ms", p50, worst)
    return Health(True, "passed", p50, worst)


def _p50_ms(model: Any, sample: Sequence[Any], runs: int) -> float | None:
    times = []
    try:
        model.run(list(sample))  # warm-up, not counted
        for _ in range(runs):
            start = time.perf_counter()
            model.run(list(sample))
            times.append((time.perf_counter() - start) * 1e3)
    except (EdgekilnError, OSError, ValueError, RuntimeError):
        return None
    times.sort()
    return times[len(times) // 2]
