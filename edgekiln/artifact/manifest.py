"""The artifact manifest: what an artifact holds, what it needs, and how it was checked.

The manifest is the contract between the compiler (which writes it) and the runtime
(which reads it on the device).  It is plain JSON so that tools without edgekiln can read
it; the dataclasses here validate it on load so that a bad or foreign file fails with a
message that names the field, not with a KeyError deep in the runtime.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from edgekiln.errors import IntegrityError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"

_DTYPES = ("float32", "float16", "int8", "uint8", "int32", "int64")


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output tensor with a fixed shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise IntegrityError(f"tensor {self.name!r}: unsupported dtype {self.dtype!r}")
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))


@dataclass(frozen=True)
class FileEntry:
    """A member of the artifact besides the manifest, with its size and sha256."""

    path: str
    size: int
    sha256: str
    role: str  # "model-library", "runtime-library", "weights", "labels", ...


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    source_format: str
    source_sha256: str
    params: int | None = None
    macs: int | None = None


@dataclass(frozen=True)
class RuntimeRequirements:
    """What the device must have for the artifact to load.

    ``library`` names the bundled runtime library (None when the artifact relies on one
    the device provides); ``cuda_arch`` and ``cuda_runtime`` are set for GPU artifacts.
    """

    arch: str
    os: str = "linux"
    glibc: str | None = None
    python_packages: tuple[str, ...] = ()
    library: str | None = None
    library_version: str | None = None
    cuda_arch: str | None = None
    cuda_runtime: str | None = None
    cpu_features: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Validation:
    """How the artifact's outputs compared with the reference on the source model."""

    status: str  # "passed" | "skipped"
    reference: str | None = None
    executed_on: str | None = None
    samples: int = 0
    tolerance_abs: float | None = None
    max_abs_diff: float | None = None
    top1_agreement: float | None = None
    reason: str | None = None


@dataclass(frozen=True)
class CandidateRecord:
    """One backend that ``--backend auto`` tried: built, failed (with the reason), timed."""

    backend: str
    status: str  # "built" | "failed" | "not measured"
    reason: str | None = None
    p50_ms: float | None = None
    ratio_to_onnxruntime: float | None = None
    pairs: int | None = None


@dataclass(frozen=True)
class BackendSelection:
    """How ``--backend auto`` chose the artifact's backend, and every candidate's record."""

    mode: str
    chosen: str
    reason: str
    candidates: tuple[CandidateRecord, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        # A candidate lists only the figures it has, as manifests always wrote them.
        return {"mode": self.mode, "chosen": self.chosen, "reason": self.reason,
                "candidates": [{k: v for k, v in dataclasses.asdict(c).items() if v is not None}
                               for c in self.candidates]}

    @classmethod
    def from_dict(cls, data: Any) -> BackendSelection:
        if not isinstance(data, Mapping):
            raise TypeError(f"BackendSelection must be an object, got {type(data).__name__}")
        candidates = tuple(_build(CandidateRecord, c) for c in data.get("candidates") or ())
        return _build(cls, {**data, "candidates": candidates})


@dataclass(frozen=True)
class GraphStats:
    """Size of the source graph: parameters, multiply-accumulates, nodes, operators."""

    params: int | None = None
    macs: int | None = None
    nodes: int | None = None
    op_counts: Mapping[str, int] = field(default_factory=dict)
    opset: int | None = None


# Typed fields that manifest.json carries inside "extra", where manifests have always had
# them: tools and earlier runtimes read the same JSON.
_EXTRA_FIELDS = ("backend_selection", "compile_seconds", "graph")


@dataclass(frozen=True)
class Manifest:
    """Everything the runtime needs to know about one artifact."""

    model: ModelInfo
    profile: str
    backend: str
    backend_options: Mapping[str, Any]
    target_triple: str
    edgekiln_version: str
    compiler: Mapping[str, str]
    runtime: RuntimeRequirements
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    files: tuple[FileEntry, ...]
    validation: Validation
    preprocessing: Mapping[str, Any] | None = None
    labels: str | None = None  # path of a labels file inside the artifact
    # int8 artifacts: method, calibration sample count and the accuracy-gate figures.
    quantization: Mapping[str, Any] | None = None
    created_utc: str = ""
    schema_version: int = SCHEMA_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys this edgekiln does not know
    backend_selection: BackendSelection | None = None
    compile_seconds: float | None = None
    graph: GraphStats | None = None

    def file(self, role: str) -> FileEntry | None:
        """The first file with ``role``, or None."""
        return next((f for f in self.files if f.role == role), None)

    def to_dict(self) -> dict[str, Any]:
        data = _plain(dataclasses.asdict(self))
        extra = data.pop("extra")
        for key in _EXTRA_FIELDS:
            value = data.pop(key)
            if value is not None:
                extra[key] = value
        if self.backend_selection is not None:
            extra["backend_selection"] = self.backend_selection.to_dict()
        data["extra"] = extra
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Manifest":
        """Validate and build a manifest; any problem raises IntegrityError naming the field."""
        if not isinstance(data, Mapping):
            raise IntegrityError("manifest.json is not a JSON object")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise IntegrityError(
                f"manifest schema version {version!r} is not supported by this edgekiln "
                f"(it reads version {SCHEMA_VERSION})",
                hint="rebuild the artifact with a matching edgekiln, or upgrade edgekiln",
            )
        extra = dict(data.get("extra") or {})
        try:
            selection, graph = extra.pop("backend_selection", None), extra.pop("graph", None)
            seconds = extra.pop("compile_seconds", None)
            return cls(
                model=_build(ModelInfo, data["model"]),
                profile=str(data["profile"]),
                backend=str(data["backend"]),
                backend_options=dict(data.get("backend_options") or {}),
                target_triple=str(data["target_triple"]),
                edgekiln_version=str(data["edgekiln_version"]),
                compiler=dict(data.get("compiler") or {}),
                runtime=_build(RuntimeRequirements, data["runtime"]),
                inputs=tuple(_build(TensorSpec, t) for t in data["inputs"]),
                outputs=tuple(_build(TensorSpec, t) for t in data["outputs"]),
                files=tuple(_build(FileEntry, f) for f in data["files"]),
                validation=_build(Validation, data["validation"]),
                preprocessing=data.get("preprocessing"),
                labels=data.get("labels"),
                quantization=data.get("quantization"),
                created_utc=str(data.get("created_utc", "")),
                schema_version=int(version),
                extra=extra,
                backend_selection=None if selection is None else BackendSelection.from_dict(selection),
                compile_seconds=None if seconds is None else float(seconds),
                graph=None if graph is None else _build(GraphStats, graph),
            )
        except KeyError as exc:
            raise IntegrityError(f"manifest.json lacks the field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise IntegrityError(f"manifest.json has a malformed field: {exc}") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> "Manifest":
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise IntegrityError(f"manifest.json is not valid JSON: {exc}") from None
        return cls.from_dict(data)


def _build(cls: type, data: Any) -> Any:
    if not isinstance(data, Mapping):
        raise TypeError(f"{cls.__name__} must be an object, got {type(data).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise ValueError(f"{cls.__name__} has unknown fields {sorted(unknown)}")
    kwargs = {}
    for key, value in data.items():
        # JSON has no tuples: turn lists back into tuples for the frozen dataclasses.
        kwargs[key] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
