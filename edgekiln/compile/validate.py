"""Numerical validation of a lowered model against ONNX Runtime on the source model.

The artifact runs through the device runtime in a worker process
(:mod:`edgekiln.execute.worker`, on this host or an emulated board): that is the code path a
device takes, and it keeps the bundled runtime library apart from the compiler's own copy
loaded in this process. Inputs and the comparison are :mod:`edgekiln.execute.inputs`, the
same as the benchmark harness's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgekiln.artifact.manifest import TensorSpec, Validation
from edgekiln.errors import BackendError
from edgekiln.execute.inputs import Samples, compare_outputs
from edgekiln.execute.inputs import make_inputs as _make_inputs
from edgekiln.execute.runners import LocalRunner, Runner, outputs_of

# Validation tolerance of int8 artifacts against the int8 model that passed the accuracy
# gate, as a share of the reference outputs' range. Engines round at each of the dozens of
# requantization points in their own order (TVM computes QDQ in float, ONNX Runtime in
# integer kernels), and one-step differences compound through the layers: measured up to
# 3.3 % of the logit range on EfficientNet-Lite0 (TVM against ONNX Runtime), with equal top-1.
INT8_RELATIVE_TOLERANCE = 0.05
# Validation tolerance of fp16 artifacts (fp16 weights and activations, fp32 accumulation)
# against the fp32 model, as a share of the reference outputs' range. fp16 keeps 11
# significant bits (a rounding step of 2^-11 ≈ 4.9e-4 relative) at every layer's output;
# the same fp16 graph built for the CPU differed from fp32 ONNX Runtime by at most 4.5e-4
# (ResNet-18) and 5.0e-4 (MobileNetV2) of the logit range with equal top-1. 1 % leaves room
# for GPU kernels that sum in another order, and still fails a wrong cast or a saturated value.
FP16_RELATIVE_TOLERANCE = 0.01


@dataclass(frozen=True)
class ValidationOptions:
    """How strictly compile checks an artifact.

    tolerance_abs, tolerance_rel: an output element passes when
    ``|artifact - reference| <= tolerance_abs + tolerance_rel * |reference|``, as numpy's
    ``allclose(artifact, reference, rtol, atol)``; the default rtol is numpy's.
    samples: number of inputs compared (the zoo sample image first where the model
    records preprocessing, then seeded random normal inputs).
    """

    tolerance_abs: float = 1e-4
    samples: int = 3
    seed: int = 0
    tolerance_rel: float = 1e-5


def make_inputs(model: Any, options: ValidationOptions) -> Samples:
    """The validation inputs of a source model (its ``inputs`` and ``preprocessing``)."""
    from edgekiln import zoo

    return _make_inputs(model.inputs, options.samples, options.seed, model.preprocessing, zoo.sample_image_path())


def reference_outputs(model: Any, batches: Sequence[Sequence[np.ndarray]]) -> Samples:
    """Outputs of ONNX Runtime (CPU) on the canonical source model (its ``path``)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    names = [t.name for t in model.inputs]
    return [list(session.run(None, dict(zip(names, batch)))) for batch in batches]


def range_tolerance(
    options: ValidationOptions, reference: Sequence[Sequence[np.ndarray]], share: float
) -> ValidationOptions:
    """``options`` with the absolute tolerance raised to ``share`` of the widest reference
    output range, for artifacts that compute in fewer bits than the reference (int8, fp16)."""
    spread = max(float(np.ptp(out)) for batch in reference for out in batch)
    floor = share * spread
    if options.tolerance_abs < floor:
        return replace(options, tolerance_abs=round(floor, 6))
    return options


def run_artifact(
    root: Path,
    batches: Sequence[Sequence[np.ndarray]],
    device: str = "cpu",
    runner: Runner | None = None,
    library: str | None = None,
) -> Samples:
    """Run an extracted artifact on ``batches`` through the runtime, in a worker process of
    ``runner`` (default: this host); ``library`` loads that TVM model library instead of the
    one the runtime would choose for this CPU."""
    subject: dict[str, Any] = {"kind": "artifact", "path": str(root), "device": device}
    if library:
        subject["library"] = library
    what = f"the compiled artifact ({library})" if library else "the compiled artifact"
    return outputs_of(runner or LocalRunner(), what, subject, [list(b) for b in batches])


def compare(
    reference: Sequence[Sequence[np.ndarray]],
    candidate: Sequence[Sequence[np.ndarray]],
    outputs: Sequence[TensorSpec],
    options: ValidationOptions,
    executed_on: str,
    reference_name: str = "ONNX Runtime",
) -> Validation:
    """Compare every output of every sample (numpy's allclose with the options'
    tolerances); raise one error listing all that fail."""
    diff = compare_outputs(reference, candidate, [spec.name for spec in outputs], rtol=options.tolerance_rel)
    failing = [
        f"{outputs[i].name}: max abs diff {diff.max_abs_diff[i]:.3g}, max rel diff {diff.max_rel_diff[i]:.3g}"
        for i in diff.failing(options.tolerance_abs, options.tolerance_rel)
    ]
    if failing:
        raise BackendError(
            f"validation against {reference_name} failed on {diff.samples} sample(s) with tolerance "
            f"{options.tolerance_abs:g} (abs) + {options.tolerance_rel:g} x |reference| (rel): "
            + "; ".join(failing)
            + f"; top-1 agreement {diff.top1_agreement:.2f}",
            hint="raise --tolerance (absolute) or --rtol (relative) if this precision is acceptable",
        )
    return Validation(
        status="passed",
        reference=f"onnxruntime {_ort_version()} (CPUExecutionProvider)",
        executed_on=executed_on,
        samples=diff.samples,
        tolerance_abs=options.tolerance_abs,
        max_abs_diff=diff.worst,
        top1_agreement=diff.top1_agreement,
        tolerance_rel=options.tolerance_rel,
        max_rel_diff=diff.worst_rel,
        warnings=tuple(constant_outputs(reference, outputs)),
    )


def constant_outputs(reference: Sequence[Sequence[np.ndarray]], outputs: Sequence[TensorSpec]) -> list[str]:
    """A warning per output that is the same for every validation input (they differ from
    one another): a model whose output does not depend on its input is almost always broken
    (a graph cut at the wrong node, weights zeroed, a constant folded in)."""
    if len(reference) < 2:
        return []
    warnings = []
    for i, spec in enumerate(outputs):
        first = np.asarray(reference[0][i])
        if first.size and all(np.array_equal(first, np.asarray(sample[i])) for sample in reference[1:]):
            warnings.append(
                f"output {spec.name!r} is the same for all {len(reference)} validation inputs: "
                "it does not depend on the input"
            )
    return warnings


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def skipped(reason: str) -> Validation:
    return Validation(status="skipped", reason=reason)
