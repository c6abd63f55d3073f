"""The artifact manifest: what an artifact holds, what it needs, and how it was checked.

The manifest is the contract between the compiler (which writes it) and the runtime
(which reads it on the device).  It is plain JSON so that tools without edgekiln can read
it; the dataclasses here validate it on load so that a bad or foreign file fails with a
message that names the field, not with a KeyError deep in the runtime.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from edgekiln.artifact.paths import check_member_path
from edgekiln.errors import IntegrityError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
# A manifest is a few kB; the bound keeps a hostile one from taking memory before it is parsed.
MAX_MANIFEST_BYTES = 1 << 20
MAX_FILES = 10_000
# Elements of one tensor: 2^31 float32 values are 8 GiB, far beyond an edge model's input.
MAX_TENSOR_ELEMENTS = 1 << 31

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
        shape = tuple(self.shape)
        if len(shape) > 8 or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise IntegrityError(f"tensor {self.name!r}: shape {list(shape)[:9]} is not a list of up to 8 sizes")
        elements = 1
        for d in shape:
            elements *= d
        if elements > MAX_TENSOR_ELEMENTS:
            raise IntegrityError(f"tensor {self.name!r}: shape {list(shape)} has over 2^31 elements")
        object.__setattr__(self, "shape", shape)


# The role of a model library built for a richer CPU of the profile's class (TVM CPU variants).
VARIANT_ROLE = "model-library-variant"


@dataclass(frozen=True)
class FileEntry:
    """A member of the artifact besides the manifest, with its size and sha256."""

    path: str
    size: int
    sha256: str
    role: str  # "model-library", "runtime-library", "weights", "labels", ...
    # CPU flags (as /proc/cpuinfo spells them) this file's code needs beyond the artifact's
    # runtime.cpu_features; set on a VARIANT_ROLE file, which the runtime loads in place of
    # the "model-library" only on a CPU that has them all.
    cpu_features: tuple[str, ...] = ()


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
    # An element passes when |artifact - reference| <= tolerance_abs + tolerance_rel * |reference|
    # (numpy's allclose); max_rel_diff is over the reference's non-zero elements.
    tolerance_rel: float | None = None
    max_rel_diff: float | None = None
    # A second reference independent of the first (the onnxruntime backend's first is ONNX
    # Runtime itself): what it was, and the artifact's largest difference from it.
    second_reference: str | None = None
    second_max_abs_diff: float | None = None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class CandidateRecord:
    """One backend that ``--backend auto`` tried: built, failed (with the reason), skipped by
    the evidence rule, dropped as clearly slower, or timed (median ratio to ONNX Runtime with
    its 95% confidence interval over ``pairs`` interleaved pairs)."""

    backend: str
    status: str  # "built" | "failed" | "not measured" | "skipped" | "dropped"
    reason: str | None = None
    p50_ms: float | None = None
    ratio_to_onnxruntime: float | None = None
    pairs: int | None = None
    ci95_low: float | None = None
    ci95_high: float | None = None


@dataclass(frozen=True)
class BackendSelection:
    """How ``--backend auto`` chose the artifact's backend, and every candidate's record.

    ``outcome``: "separated", "tied", "undecided", "only one left" (timed on this host),
    "evidence" (the target could not run here: the evidence row decided), "only one built";
    ``evidence`` and ``evidence_source``: the evidence row (``class/precision``) that ordered
    the candidates and where its figures come from; ``threads``: CPU threads every runtime
    was timed with; ``processes``: worker processes per candidate and for the baseline,
    timed in turn; ``tuning_coverage``: the share of the model's FLOPs with TVM tuning
    records (None: no records). Manifests written before these fields still load.
    """

    mode: str
    chosen: str
    reason: str
    candidates: tuple[CandidateRecord, ...] = ()
    outcome: str | None = None
    evidence: str | None = None
    evidence_source: str | None = None
    threads: int | None = None
    processes: int | None = None
    tuning_coverage: float | None = None
    timing_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        # A candidate lists only the figures it has, as manifests always wrote them; so do the
        # selection's own later fields.
        data = {k: v for k, v in dataclasses.asdict(self).items() if v is not None and k != "candidates"}
        data["candidates"] = [
            {k: v for k, v in dataclasses.asdict(c).items() if v is not None} for c in self.candidates
        ]
        return data

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
_EXTRA_FIELDS = ("backend_selection", "compile_seconds", "graph", "scores", "tuning")
# What the first output holds: "probabilities" (the model ends in Softmax) or "logits".
SCORES = ("probabilities", "logits")


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
    # tvm: the tuning records applied (tasks, their share of the model's FLOPs, sources).
    tuning: Mapping[str, Any] | None = None
    scores: str | None = None  # one of SCORES; None in artifacts built before it was recorded

    def __post_init__(self) -> None:
        if self.scores is not None and self.scores not in SCORES:
            raise IntegrityError(f"manifest scores {self.scores!r} is not one of {', '.join(SCORES)}")

    def file(self, role: str) -> FileEntry | None:
        """The first file with ``role``, or None."""
        return next((f for f in self.files if f.role == role), None)

    def variant_libraries(self) -> tuple[FileEntry, ...]:
        """The model libraries built for richer CPUs, in the order the runtime tries them."""
        return tuple(f for f in self.files if f.role == VARIANT_ROLE)

    def to_dict(self) -> dict[str, Any]:
        data = _plain(dataclasses.asdict(self))
        for entry in data["files"]:
            # Written only where set, so that artifacts without variants keep their layout.
            if not entry["cpu_features"]:
                del entry["cpu_features"]
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
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        """Validate and build a manifest; any problem raises IntegrityError naming the field."""
        if not isinstance(data, Mapping):
            raise IntegrityError("manifest.json is not a JSON object")
        version = data.get("schema_version")
        if type(version) is not int or version != SCHEMA_VERSION:
            raise IntegrityError(
                f"manifest schema version {version!r} is not supported by this edgekiln "
                f"(it reads version {SCHEMA_VERSION})",
                hint="rebuild the artifact with a matching edgekiln, or upgrade edgekiln",
            )
        try:
            extra = _mapping(data.get("extra"), "extra")
            selection, graph = extra.pop("backend_selection", None), extra.pop("graph", None)
            seconds, scores = extra.pop("compile_seconds", None), extra.pop("scores", None)
            tuning = extra.pop("tuning", None)
            manifest = cls(
                model=_build(ModelInfo, data["model"]),
                profile=_text(data["profile"], "profile"),
                backend=_text(data["backend"], "backend"),
                backend_options=_mapping(data.get("backend_options"), "backend_options"),
                target_triple=_text(data["target_triple"], "target_triple"),
                edgekiln_version=_text(data["edgekiln_version"], "edgekiln_version"),
                compiler=_mapping(data.get("compiler"), "compiler"),
                runtime=_build(RuntimeRequirements, data["runtime"]),
                inputs=tuple(_build(TensorSpec, t) for t in _array(data["inputs"], "inputs", 1000)),
                outputs=tuple(_build(TensorSpec, t) for t in _array(data["outputs"], "outputs", 1000)),
                files=tuple(_build(FileEntry, f) for f in _array(data["files"], "files", MAX_FILES)),
                validation=_build(Validation, data["validation"]),
                preprocessing=_mapping(data.get("preprocessing"), "preprocessing") or None,
                labels=_optional_text(data.get("labels"), "labels"),
                quantization=_mapping(data.get("quantization"), "quantization") or None,
                created_utc=_text(data.get("created_utc", ""), "created_utc"),
                schema_version=int(version),
                extra=extra,
                backend_selection=None if selection is None else BackendSelection.from_dict(selection),
                compile_seconds=None if seconds is None else float(seconds),
                graph=None if graph is None else _build(GraphStats, graph),
                scores=_optional_text(scores, "scores"),
                tuning=None if tuning is None else _mapping(tuning, "tuning"),
            )
        except KeyError as exc:
            raise IntegrityError(f"manifest.json lacks the field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise IntegrityError(f"manifest.json has a malformed field: {str(exc)[:300]}") from None
        _check_paths(manifest)
        return manifest

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        if len(text) > MAX_MANIFEST_BYTES:
            raise IntegrityError(
                f"manifest.json is {len(text)} bytes, over the limit of {MAX_MANIFEST_BYTES}",
                hint="this is not a manifest edgekiln wrote",
            )
        try:
            data = json.loads(text)
        # ValueError covers Python's limit on digits in an integer, RecursionError deep nesting.
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise IntegrityError(f"manifest.json is not valid JSON: {str(exc)[:200]}") from None
        return cls.from_dict(data)


def _check_paths(manifest: Manifest) -> None:
    """Every path the manifest names stays inside the artifact, and labels is one of its files
    (so that its size and sha256 are checked like the others')."""
    paths = [check_member_path(f.path) for f in manifest.files]
    for entry in manifest.files:
        if entry.size < 0:
            raise IntegrityError(f"manifest.json gives {entry.path!r} a negative size")
        if not _SHA256.fullmatch(entry.sha256):
            raise IntegrityError(f"manifest.json gives {entry.path!r} a sha256 that is not 64 hex digits")
    if MANIFEST_NAME in paths:
        raise IntegrityError(f"manifest.json lists {MANIFEST_NAME} among its files")
    if len(set(paths)) != len(paths):
        raise IntegrityError("manifest.json lists a file twice")
    if manifest.labels is not None and check_member_path(manifest.labels, "labels file") not in paths:
        raise IntegrityError(f"the labels file {manifest.labels!r} is not one of the artifact's files")


_SHA256 = re.compile(r"[0-9a-f]{64}")

# The JSON types each annotation of the dataclasses above accepts (int for float: JSON has 1, not 1.0).
_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (float, int),
    "bool": (bool,),
    "tuple[str, ...]": (str,),
    "tuple[int, ...]": (int,),
}


def _build(cls: type, data: Any) -> Any:
    if not isinstance(data, Mapping):
        raise TypeError(f"{cls.__name__} must be an object, got {type(data).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise ValueError(f"{cls.__name__} has unknown fields {sorted(map(str, unknown))[:10]}")
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _typed(value, str(names[key].type), f"{cls.__name__}.{key}")
    return cls(**kwargs)


def _typed(value: Any, annotation: str, where: str) -> Any:
    """``value`` checked against a field's annotation; JSON lists become the tuples the
    frozen dataclasses hold."""
    kind, optional = annotation, False
    if kind.endswith(" | None"):
        kind, optional = kind[: -len(" | None")], True
    if value is None and optional:
        return None
    accepted = _TYPES.get(kind)
    if accepted is None:  # a field this check does not know (added later): the constructor checks it
        return tuple(value) if isinstance(value, list) else value
    if kind.startswith("tuple"):
        if not isinstance(value, list) or len(value) > 1000:
            raise TypeError(f"{where} must be a list of up to 1000 items, got {type(value).__name__}")
        items = value
    else:
        items = [value]
    for item in items:
        if not isinstance(item, accepted) or (isinstance(item, bool) and bool not in accepted):
            raise TypeError(f"{where} must be {annotation}, got {type(item).__name__}")
    return tuple(value) if kind.startswith("tuple") else value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{where} must be a string, got {type(value).__name__}")
    return value


def _optional_text(value: Any, where: str) -> str | None:
    return None if value is None else _text(value, where)


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{where} must be an object, got {type(value).__name__}")
    return dict(value)


def _array(value: Any, where: str, limit: int) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"{where} must be a list, got {type(value).__name__}")
    if len(value) > limit:
        raise ValueError(f"{where} has {len(value)} entries, over the limit of {limit}")
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
