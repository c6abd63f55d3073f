"""int8 post-training quantization with an accuracy gate.

Flow: load calibration (and validation) data → quantize the canonical ONNX model with ONNX
Runtime's static QDQ quantizer (per-channel int8 weights, uint8 activations, MinMax
calibration on up to 100 samples by default) → evaluate fp32 and int8 on the validation
set → pass only if int8 top-1 accuracy is at least (1 - tolerance) × fp32's (MLPerf's 99 %
rule by default).  When it fails, the report names the layers whose outputs lose the most
signal (lowest SQNR between the fp32 and the int8 model); in ``auto`` mode those layers are
kept in fp32, a few at a time, until the gate passes.

Without labels, "accuracy" is agreement with the fp32 model's own top-1, so the gate
becomes "int8 agrees with fp32 on at least 99 % of the validation inputs".
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgekiln.compile.quantize.data import Dataset, load_dataset, split
from edgekiln.compile.stages import GateResult, QuantizedModel, SourceModel
from edgekiln.errors import BackendError, UserError
from edgekiln.execute.progress import NullProgress, Progress

MODES = ("int8", "int8-auto")
DEFAULT_CALIBRATION_SAMPLES = 100
DEFAULT_ACCURACY_TOLERANCE = 0.01
# Sensitivity is measured on this many validation inputs (it runs both models per input).
_SENSITIVITY_SAMPLES = 8
_REPORTED_LAYERS = 5
_AUTO_STEP = 2
_AUTO_MAX_EXCLUDED = 24


@dataclass(frozen=True)
class QuantizeOptions:
    """What ``--quantize`` and its companions ask for."""

    mode: str = "int8"
    calibration: str | None = None
    validation: str | None = None
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES
    accuracy_tolerance: float = DEFAULT_ACCURACY_TOLERANCE

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"unknown quantization {self.mode!r}; use one of {', '.join(MODES)}")
        if self.calibration is None:
            raise UserError("--quantize needs --calibration PATH (a folder of images, or a .npy/.npz file)")
        if not 0 <= self.accuracy_tolerance < 1:
            raise UserError("--accuracy-tolerance must be in [0, 1), e.g. 0.01 for MLPerf's 99 % rule")
        if self.calibration_samples < 1:
            raise UserError("--calibration-samples must be at least 1")

    @property
    def auto(self) -> bool:
        return self.mode == "int8-auto"


Evaluator = Callable[[Path, Sequence[np.ndarray]], list[np.ndarray]]


def ort_logits(model_path: Path, inputs: Sequence[np.ndarray], input_name: str) -> list[np.ndarray]:
    """First output of each input, run by ONNX Runtime on the CPU."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return [session.run(None, {input_name: x})[0] for x in inputs]


def gate(
    fp32: Sequence[np.ndarray], int8: Sequence[np.ndarray], labels: np.ndarray | None, tolerance: float
) -> tuple[float, float, float, bool]:
    """(fp32 top-1, int8 top-1, agreement, passed) for logits of the same inputs."""
    fp32_pred = np.array([int(np.argmax(o.reshape(-1))) for o in fp32])
    int8_pred = np.array([int(np.argmax(o.reshape(-1))) for o in int8])
    truth = labels if labels is not None else fp32_pred
    fp32_top1 = float(np.mean(fp32_pred == truth))
    int8_top1 = float(np.mean(int8_pred == truth))
    agreement = float(np.mean(fp32_pred == int8_pred))
    return fp32_top1, int8_top1, agreement, int8_top1 >= (1 - tolerance) * fp32_top1 - 1e-12


def quantize_onnx(
    source: SourceModel, options: QuantizeOptions, workdir: Path, progress: Progress | None = None
) -> QuantizedModel:
    """Quantize ``source`` to int8 QDQ and run the accuracy gate; raise BackendError if it fails."""
    progress = progress or NullProgress()
    if len(source.inputs) != 1:
        raise UserError("int8 quantization supports single-input models")
    spec = source.inputs[0]
    calibration, validation = load_data(source, options, progress)
    with progress.step(f"evaluate fp32 on {len(validation)} validation inputs"):
        fp32 = ort_logits(source.path, validation.inputs, spec.name)
    workdir.mkdir(parents=True, exist_ok=True)
    prepared = workdir / "model.prepared.onnx"
    _prepare(source, prepared)
    excluded: list[str] = []
    ranking: list[tuple[str, float]] | None = None
    attempts = 0
    while True:
        attempts += 1
        out = workdir / f"model.int8.{attempts}.onnx"
        with progress.step(
            f"quantize to int8 ({len(calibration)} calibration inputs"
            + (f", {len(excluded)} layers kept in fp32)" if excluded else ")")
        ):
            _quantize_static(prepared, source, calibration, out, excluded)
        with progress.step("accuracy gate: evaluate int8"):
            int8 = ort_logits(out, validation.inputs, spec.name)
            fp32_top1, int8_top1, agreement, passed = gate(fp32, int8, validation.labels, options.accuracy_tolerance)
        if passed:
            break
        if ranking is None:
            # Ranked once, on the first int8 model: re-ranking after each exclusion costs a
            # full pass of both models and rarely changes the order of the worst layers.
            with progress.step("find the most sensitive layers"):
                ranking = sensitivity(prepared, out, validation.inputs[:_SENSITIVITY_SAMPLES], spec.name)
        candidates = [name for name, _ in ranking if name not in excluded]
        if not options.auto or not candidates or len(excluded) >= _AUTO_MAX_EXCLUDED:
            break
        excluded += candidates[:_AUTO_STEP]
    sensitive = [] if passed or ranking is None else [r for r in ranking if r[0] not in excluded]
    result = GateResult(
        samples=len(validation),
        labelled=validation.labels is not None,
        fp32_top1=fp32_top1,
        int8_top1=int8_top1,
        agreement=agreement,
        tolerance=options.accuracy_tolerance,
        passed=passed,
        excluded_nodes=tuple(excluded),
        sensitive_layers=tuple(sensitive[:_REPORTED_LAYERS]),
        attempts=attempts,
    )
    if not passed:
        hint = "raise --accuracy-tolerance, give more representative --calibration data" + (
            "" if options.auto else ", or use --quantize int8-auto to keep sensitive layers in fp32"
        )
        raise BackendError(f"int8 accuracy gate failed: {result.summary()}", hint=hint)
    final = workdir / "model.int8.onnx"
    shutil.copyfile(out, final)
    quantized = SourceModel(
        name=source.name,
        path=final,
        source_format=source.source_format,
        source_ref=source.source_ref,
        source_sha256=source.source_sha256,
        inputs=source.inputs,
        outputs=source.outputs,
        opset=max(source.opset, 13),
        preprocessing=source.preprocessing,
        labels=source.labels,
        stats=source.stats,
    )
    return QuantizedModel(source=quantized, gate=result, calibration_samples=len(calibration))


def load_data(source: SourceModel, options: QuantizeOptions, progress: Progress) -> tuple[Dataset, Dataset]:
    """Calibration inputs (at most ``calibration_samples``) and the accuracy-gate inputs."""
    with progress.step(f"load calibration data from {options.calibration}"):
        assert options.calibration is not None
        calibration = load_dataset(options.calibration, source, limit=None)
        if options.validation:
            validation = load_dataset(options.validation, source, limit=None)
        else:
            calibration, validation = split(calibration)
        return calibration.head(options.calibration_samples), validation


def gate_artifact(
    source: SourceModel,
    options: QuantizeOptions,
    validation: Dataset,
    run_int8: Evaluator,
    calibration_samples: int,
    method: str,
    progress: Progress,
) -> GateResult:
    """The accuracy gate for a backend that quantizes by itself: fp32 source model on ONNX
    Runtime against the int8 artifact as the device runs it.  Layer sensitivity needs the
    int8 model as ONNX, which such a backend does not produce, so a failure reports figures only."""
    spec = source.inputs[0]
    with progress.step(f"accuracy gate: fp32 and int8 on {len(validation)} inputs"):
        fp32 = ort_logits(source.path, validation.inputs, spec.name)
        int8 = run_int8(source.path, validation.inputs)
        fp32_top1, int8_top1, agreement, passed = gate(fp32, int8, validation.labels, options.accuracy_tolerance)
    result = GateResult(
        samples=len(validation),
        labelled=validation.labels is not None,
        fp32_top1=fp32_top1,
        int8_top1=int8_top1,
        agreement=agreement,
        tolerance=options.accuracy_tolerance,
        passed=passed,
    )
    if not passed:
        raise BackendError(
            f"int8 accuracy gate failed ({method}): {result.summary()}",
            hint="raise --accuracy-tolerance or give more representative --calibration data",
        )
    return result


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over a list of inputs."""

    def __init__(self, name: str, inputs: Sequence[np.ndarray]) -> None:
        self._items = iter([{name: x} for x in inputs])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)

    def __iter__(self):  # qdq_loss_debug iterates instead of calling get_next()
        return self._items


def _prepare(source: SourceModel, out: Path) -> None:
    """Shape inference and BatchNorm folding before quantization (quantizing a BatchNorm on
    its own costs accuracy); layer names in reports and exclusions refer to this graph."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(source.path), str(out), skip_symbolic_shape=True)
    except Exception as exc:
        raise BackendError(
            f"ONNX Runtime could not prepare {source.source_ref} for quantization: {str(exc).strip()[:300]}"
        ) from None


def _quantize_static(prepared: Path, source: SourceModel, data: Dataset, out: Path, exclude: Sequence[str]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    try:
        quantize_static(
            str(prepared),
            str(out),
            _Reader(source.inputs[0].name, data.inputs),
            # uint8 activations with int8 weights (U8S8): ONNX Runtime's fast integer kernels on
            # x86-64 without VNNI; measured here on ResNet-18 at 0.41x fp32 time, where int8
            # activations (S8S8) ran at 0.97x. Saturation risks are what the gate is for.
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=list(exclude),
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    except Exception as exc:
        raise BackendError(f"ONNX Runtime could not quantize {source.source_ref}: {str(exc).strip()[:300]}") from None


def sensitivity(
    float_model: Path, qdq_model: Path, inputs: Sequence[np.ndarray], input_name: str
) -> list[tuple[str, float]]:
    """Layers (node names) ordered from most to least damaged by quantization (SQNR in dB
    of each node's output in the int8 model against the fp32 model)."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    work = qdq_model.parent
    aug_float, aug_qdq = work / "sens.float.onnx", work / "sens.qdq.onnx"
    try:
        modify_model_output_intermediate_tensors(str(float_model), str(aug_float))
        modify_model_output_intermediate_tensors(str(qdq_model), str(aug_qdq))
        float_acts = collect_activations(str(aug_float), _Reader(input_name, inputs))
        qdq_acts = collect_activations(str(aug_qdq), _Reader(input_name, inputs))
        errors = compute_activation_error(create_activation_matching(qdq_acts, float_acts))
    finally:
        aug_float.unlink(missing_ok=True)
        aug_qdq.unlink(missing_ok=True)
    producers = {out: node.name for node in onnx.load(str(float_model)).graph.node for out in node.output}
    ranked = []
    for tensor, err in errors.items():
        value = err.get("xmodel_err")
        node = producers.get(tensor)
        if node and value is not None and np.isfinite(value):
            ranked.append((node, float(value)))
    ranked.sort(key=lambda item: item[1])
    return ranked
