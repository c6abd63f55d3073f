"""A second, independent reference for artifacts that ONNX Runtime itself runs.

The onnxruntime backend's artifact is checked against ONNX Runtime on the source model: the
same engine twice, so a difference of 0 proves little (an ONNX Runtime bug would be in both).
This compares it with an engine that shares no code with ONNX Runtime, the cheapest one at
hand:

1. PyTorch eager over the same graph (:mod:`edgekiln.execute.torch_graph`), in a worker
   process, when torch is installed and the graph uses only the operators it maps;
2. else onnx's own reference evaluator (``onnx.reference``, numpy, no ONNX Runtime), for
   graphs small enough for it (it is slow: numpy loops) on the first sample only.

The manifest names which one ran and the largest difference (``Validation.second_reference``,
``second_max_abs_diff``); when neither can run it says why.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edgekiln.artifact.manifest import TensorSpec
from edgekiln.compile.stages import SourceModel
from edgekiln.errors import BackendError
from edgekiln.execute.inputs import Samples, compare_outputs
from edgekiln.execute.runners import LocalRunner, outputs_of

# Multiply-accumulates up to which onnx's reference evaluator is quick enough (a few seconds).
REFERENCE_EVALUATOR_MAX_MACS = 50_000_000
# Operators that onnx's reference evaluator computes otherwise than the ONNX specification:
# its LRN (onnx 1.23) differs by up to 0.4 on inputs of magnitude 10 from the specification's
# formula, which ONNX Runtime, TVM and LiteRT all match to 4e-6. With these in the graph it
# is no reference.
REFERENCE_EVALUATOR_DIVERGES = frozenset({"LRN"})


@dataclass(frozen=True)
class SecondCheck:
    """What the second reference was (or why there was none) and the largest difference."""

    reference: str
    max_abs_diff: float | None = None


def check(
    source: SourceModel,
    batches: Samples,
    candidate: Samples,
    outputs: Sequence[TensorSpec],
    atol: float,
    rtol: float,
) -> SecondCheck:
    """Compare ``candidate`` (the artifact's outputs on ``batches``) with a second reference
    under the same tolerances; raise BackendError listing the outputs that differ."""
    found = _reference_outputs(source, batches)
    if isinstance(found, SecondCheck):
        return found
    name, reference = found
    diff = compare_outputs(reference, candidate[: len(reference)], [o.name for o in outputs], rtol=rtol)
    failing = [f"{outputs[i].name}: max abs diff {diff.max_abs_diff[i]:.3g}" for i in diff.failing(atol, rtol)]
    if failing:
        raise BackendError(
            f"validation against a second reference, {name}, failed on {diff.samples} sample(s) with "
            f"tolerance {atol:g} (abs) + {rtol:g} x |reference| (rel): " + "; ".join(failing),
            hint="ONNX Runtime and this engine disagree on the model; raise --tolerance/--rtol if "
            "this precision is acceptable, or try another backend",
        )
    return SecondCheck(f"{name} on {diff.samples} sample(s)", diff.worst)


def _reference_outputs(source: SourceModel, batches: Samples) -> tuple[str, Samples] | SecondCheck:
    import onnx

    model = onnx.load(str(source.path))
    ops = {node.op_type for node in model.graph.node}
    from edgekiln.execute.torch_graph import SUPPORTED_OPS

    unsupported = sorted(ops - set(SUPPORTED_OPS))
    if importlib.util.find_spec("torch") is not None and not unsupported:
        subject = {"kind": "torch", "model": str(source.path), "device": "cpu"}
        reference = outputs_of(LocalRunner(), "the PyTorch reference", subject, [list(b) for b in batches])
        import torch

        return f"torch {torch.__version__} eager (CPU) over the same graph", reference
    macs = source.stats.get("macs")
    if macs is None or macs > REFERENCE_EVALUATOR_MAX_MACS:
        why = "torch is not installed" if not unsupported else f"PyTorch's mapping lacks {', '.join(unsupported[:5])}"
        return SecondCheck(
            f"none: {why}, and the model ({macs or 'unknown'} MACs) is too large for onnx's reference evaluator"
        )
    diverges = sorted(ops & REFERENCE_EVALUATOR_DIVERGES)
    if diverges:
        return SecondCheck(
            f"none: onnx's reference evaluator computes {', '.join(diverges)} otherwise than the ONNX specification"
        )
    from onnx.reference import ReferenceEvaluator

    try:
        results = ReferenceEvaluator(model).run(None, {s.name: a for s, a in zip(source.inputs, batches[0])})
    # The evaluator lacks some operators and attributes: that leaves the artifact with one
    # reference, said in the manifest, and is no reason to fail the compile.
    except Exception as exc:  # noqa: BLE001
        return SecondCheck(f"none: onnx's reference evaluator cannot run the model ({str(exc)[:160]})")
    return f"onnx {onnx.__version__} reference evaluator", [[np.asarray(r) for r in results]]
