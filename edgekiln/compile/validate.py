"""Numerical validation of a lowered model against ONNX Runtime on the source model.

The artifact is run through the device runtime (``edgekiln.runtime.Model``) in a child
process: that is the code path a device takes, and it keeps the bundled runtime library
apart from the compiler's own copy loaded in this process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from edgekiln.artifact.manifest import TensorSpec, Validation
from edgekiln.compile.frontends.onnx import SourceModel
from edgekiln.errors import BackendError, InternalError


# Validation tolerance of int8 artifacts against the int8 model that passed the accuracy
# gate, as a share of the reference outputs' range. Engines round at each of the dozens of
# requantization points in their own order (TVM computes QDQ in float, ONNX Runtime in
# integer kernels), and one-step differences compound through the layers: measured up to
# 3.3 % of the logit range on EfficientNet-Lite0 (TVM against ONNX Runtime), with equal top-1.
INT8_RELATIVE_TOLERANCE = 0.05


@dataclass(frozen=True)
class ValidationOptions:
    """How strictly compile checks an artifact.

    tolerance_abs: largest allowed absolute difference of any output element.
    samples: number of inputs compared (the zoo sample image first where the model
    records preprocessing, then seeded random normal inputs).
    """

    tolerance_abs: float = 1e-4
    samples: int = 3
    seed: int = 0


def make_inputs(model: SourceModel, options: ValidationOptions) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(options.seed)
    batches: list[list[np.ndarray]] = []
    if model.preprocessing and len(model.inputs) == 1 and options.samples > 0:
        from importlib.resources import as_file

        from edgekiln import zoo
        from edgekiln.runtime.preprocess import preprocess

        with as_file(zoo.sample_image_path()) as path:
            batches.append([preprocess(path, model.preprocessing, model.inputs[0].shape)])
    while len(batches) < options.samples:
        batches.append([_random(spec, rng) for spec in model.inputs])
    return batches


def _random(spec: TensorSpec, rng: np.random.Generator) -> np.ndarray:
    if spec.dtype.startswith("float"):
        return rng.standard_normal(spec.shape).astype(spec.dtype)
    info = np.iinfo(spec.dtype)
    return rng.integers(max(info.min, -128), min(info.max, 127), size=spec.shape, dtype=spec.dtype)


def reference_outputs(model: SourceModel, batches: Sequence[Sequence[np.ndarray]]) -> list[list[np.ndarray]]:
    """Outputs of ONNX Runtime (CPU) on the canonical source model."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    names = [t.name for t in model.inputs]
    return [list(session.run(None, dict(zip(names, batch)))) for batch in batches]


def run_artifact(root: Path, batches: Sequence[Sequence[np.ndarray]], device: str = "cpu",
                 python: Sequence[str] | None = None, env: dict[str, str] | None = None) -> list[list[np.ndarray]]:
    """Run an extracted artifact on ``batches`` through the runtime, in a child process:
    this interpreter, or ``python`` (e.g. an emulated board's, with its ``env``)."""
    with tempfile.TemporaryDirectory(prefix="edgekiln-validate-") as tmp:
        inputs = Path(tmp) / "inputs.npz"
        outputs = Path(tmp) / "outputs.npz"
        np.savez(inputs, **{f"{b}_{i}": a for b, batch in enumerate(batches) for i, a in enumerate(batch)})
        cmd = [*(python or [sys.executable]), "-m", "edgekiln.compile.validate_worker", str(root), str(inputs),
               str(outputs), device]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode < 0:
            raise BackendError(f"the compiled artifact crashed on this host (signal {-proc.returncode}) "
                               "while running the validation inputs")
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            raise BackendError(f"the compiled artifact failed to run on this host: {tail}")
        meta = json.loads(proc.stdout.strip().splitlines()[-1])
        with np.load(outputs) as data:
            return [[data[f"{b}_{o}"] for o in range(meta["outputs"])] for b in range(len(batches))]


def compare(
    reference: Sequence[Sequence[np.ndarray]],
    candidate: Sequence[Sequence[np.ndarray]],
    outputs: Sequence[TensorSpec],
    options: ValidationOptions,
    executed_on: str,
) -> Validation:
    """Compare every output of every sample; raise one error listing all that fail."""
    if len(reference) != len(candidate):
        raise InternalError("validation ran a different number of samples")
    worst = [0.0] * len(outputs)
    agree = 0
    for ref, got in zip(reference, candidate):
        for i, spec in enumerate(outputs):
            if ref[i].shape != got[i].shape:
                raise BackendError(
                    f"output {spec.name!r} has shape {list(got[i].shape)}; the reference gives {list(ref[i].shape)}"
                )
            diff = float(np.max(np.abs(ref[i].astype(np.float64) - got[i].astype(np.float64)))) if ref[i].size else 0.0
            if not np.isfinite(diff):
                diff = float("inf")
            worst[i] = max(worst[i], diff)
        agree += int(np.argmax(ref[0].reshape(-1)) == np.argmax(got[0].reshape(-1)))
    failing = [
        f"{spec.name}: max abs diff {worst[i]:.3g}"
        for i, spec in enumerate(outputs)
        if not worst[i] <= options.tolerance_abs
    ]
    top1 = agree / len(reference) if reference else 0.0
    if failing:
        raise BackendError(
            f"validation against ONNX Runtime failed on {len(reference)} sample(s) with tolerance "
            f"{options.tolerance_abs:g} (abs): " + "; ".join(failing) + f"; top-1 agreement {top1:.2f}",
            hint="raise --tolerance if this precision is acceptable",
        )
    return Validation(
        status="passed",
        reference=f"onnxruntime {_ort_version()} (CPUExecutionProvider)",
        executed_on=executed_on,
        samples=len(reference),
        tolerance_abs=options.tolerance_abs,
        max_abs_diff=max(worst) if worst else 0.0,
        top1_agreement=top1,
    )


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def skipped(reason: str) -> Validation:
    return Validation(status="skipped", reason=reason)
