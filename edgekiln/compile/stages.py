"""The types compile hands from stage to stage, in pipeline order.

``SourceModel`` (import: a canonical ONNX file with fixed shapes) → ``Int8Inputs``
(optional: what quantizing gave the backends: the ``QuantizedModel`` that passed the
accuracy gate, or calibration data) → ``LoweredFiles`` (one backend's
files in a staging directory) → ``StagedArtifact`` (lowered and validated, manifest
written, not yet packed) → ``CompiledArtifact`` (the packed ``.tar.gz``).

All are frozen dataclasses; the two that outlive a compile (the imported source and the
packed artifact) save and load themselves.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from edgekiln.artifact.manifest import Manifest, RuntimeRequirements, TensorSpec
from edgekiln.errors import EdgekilnError, UserError

if TYPE_CHECKING:  # quantize/ imports this module
    from edgekiln.compile.quantize import QuantizeOptions
    from edgekiln.compile.quantize.data import Dataset

InputShapes = Mapping[str, Sequence[int]] | Sequence[int] | None

SOURCE_FILE = "source.json"


@dataclass(frozen=True)
class SourceModel:
    """The first stage: a canonical ONNX file on disk with fixed shapes, and what it is."""

    name: str
    path: Path
    source_format: str  # "zoo", or the framework: "onnx", "pytorch", "tflite", "mxnet", "keras", "tensorflow"
    source_ref: str
    source_sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int
    preprocessing: Mapping[str, Any] | None = None
    labels: tuple[str, ...] | None = None
    stats: Mapping[str, Any] = field(default_factory=dict)
    # The framework's own model file when a backend can use it as it is (a .tflite for the
    # LiteRT backend), and how the canonical inputs relate to its inputs ("same" or "NHWC":
    # the canonical input is NCHW, the original's NHWC).
    original: Path | None = None
    original_input_layouts: tuple[str, ...] = ()
    # The source graph is already quantized (QDQ int8 from a quantized .tflite): validation
    # compares in quantization steps, and --quantize does not apply.
    prequantized: bool = False

    def load_onnx(self) -> Any:
        import onnx

        return onnx.load(str(self.path))

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write this description as JSON (default: ``source.json`` beside the ONNX file),
        so that an imported model can be compiled again without importing it again."""
        target = Path(path) if path is not None else self.path.parent / SOURCE_FILE
        data = asdict(self)
        data["path"] = str(self.path)
        data["original"] = None if self.original is None else str(self.original)
        target.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SourceModel:
        """Read what :meth:`save` wrote; the ONNX file it names must still exist."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(data) - known)
            if unknown:
                raise ValueError(f"unknown fields {unknown}")
            data["path"] = Path(data["path"])
            data["original"] = None if data.get("original") is None else Path(data["original"])
            data["inputs"] = tuple(TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in data["inputs"])
            data["outputs"] = tuple(TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in data["outputs"])
            data["labels"] = None if data.get("labels") is None else tuple(data["labels"])
            data["original_input_layouts"] = tuple(data.get("original_input_layouts") or ())
            model = cls(**data)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path} is not a saved source model ({type(exc).__name__}: {exc})") from None
        if not model.path.is_file():
            raise UserError(f"the ONNX file {model.path} that {path} describes does not exist")
        return model


@dataclass(frozen=True)
class GateResult:
    """fp32 against int8 on the validation set, and the verdict."""

    samples: int
    labelled: bool
    fp32_top1: float
    int8_top1: float
    agreement: float
    tolerance: float
    passed: bool
    excluded_nodes: tuple[str, ...] = ()
    sensitive_layers: tuple[tuple[str, float], ...] = ()
    attempts: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "labelled": self.labelled,
            "fp32_top1": round(self.fp32_top1, 6),
            "int8_top1": round(self.int8_top1, 6),
            "top1_agreement": round(self.agreement, 6),
            "accuracy_tolerance": self.tolerance,
            "rule": f"int8 top-1 >= {1 - self.tolerance:g} x fp32 top-1"
            + ("" if self.labelled else " (no labels: top-1 is agreement with fp32)"),
            "passed": self.passed,
            "fp32_layers": list(self.excluded_nodes),
            "most_sensitive_layers": [{"layer": n, "sqnr_db": round(v, 2)} for n, v in self.sensitive_layers],
            "attempts": self.attempts,
        }

    def summary(self) -> str:
        layers = ", ".join(f"{n} ({v:.1f} dB)" for n, v in self.sensitive_layers) or "n/a"
        what = "top-1" if self.labelled else "top-1 agreement with fp32"
        return (
            f"int8 {what} {self.int8_top1:.4f} vs fp32 {self.fp32_top1:.4f} on {self.samples} inputs "
            f"(needs >= {(1 - self.tolerance) * self.fp32_top1:.4f}); agreement {self.agreement:.4f}; "
            f"most sensitive layers: {layers}"
        )


@dataclass(frozen=True)
class QuantizedModel:
    """The optional second stage: the int8 model and how it was made."""

    source: SourceModel
    gate: GateResult
    calibration_samples: int
    method: str = "onnxruntime static QDQ, per-channel int8 weights, uint8 activations, MinMax"
    details: Mapping[str, Any] = field(default_factory=dict)

    def manifest_entry(self) -> dict[str, Any]:
        """The manifest's ``quantization`` field."""
        return {
            "mode": "int8",
            "method": self.method,
            "calibration_samples": self.calibration_samples,
            "accuracy_gate": self.gate.to_dict(),
        }


@dataclass(frozen=True)
class Int8Inputs:
    """What the quantize stage hands on: the gated int8 QDQ model for "qdq" backends (or
    why it failed, for auto to record), and the data of backends that quantize by themselves."""

    options: QuantizeOptions
    qdq: QuantizedModel | None = None
    qdq_error: EdgekilnError | None = None
    calibration: Dataset | None = None
    gate_data: Dataset | None = None


@dataclass(frozen=True)
class LoweredFiles:
    """What a backend produced: files (relative path → role) under the staging root."""

    files: Mapping[str, str]
    runtime: RuntimeRequirements
    compiler: Mapping[str, str]
    target: Mapping[str, Any]
    options: Mapping[str, Any] = field(default_factory=dict)
    # Tuning records applied (tvm): tasks tuned, their share of the FLOPs, the sources.
    tuning: Mapping[str, Any] | None = None
    # Files that need CPU features beyond ``runtime.cpu_features`` (path → flags).
    cpu_features: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class StagedArtifact:
    """One backend's build, validated, in its staging directory with its manifest.json;
    packing it is all that is left."""

    backend: str
    root: Path
    manifest: Manifest


@dataclass(frozen=True)
class CompiledArtifact:
    """The last stage: where the packed artifact is and what its manifest says."""

    path: Path
    manifest: Manifest
    size: int

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CompiledArtifact:
        from edgekiln.artifact.package import read_manifest

        path = Path(path)
        return cls(path=path, manifest=read_manifest(path), size=path.stat().st_size)

    def summary(self) -> dict[str, Any]:
        """The figures a CI job reads (``edgekiln compile --json``)."""
        m = self.manifest
        return {
            "artifact": str(self.path),
            "size_bytes": self.size,
            "model": m.model.name,
            "version": m.model.version,
            "profile": m.profile,
            "backend": m.backend,
            "backend_selection": None if m.backend_selection is None else m.backend_selection.to_dict(),
            "target_triple": m.target_triple,
            "cuda_arch": m.runtime.cuda_arch,
            "inputs": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in m.inputs],
            "outputs": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in m.outputs],
            "validation": m.to_dict()["validation"],
            "compile_seconds": m.compile_seconds,
            "quantization": m.quantization,
            "tuning": m.tuning,
        }
