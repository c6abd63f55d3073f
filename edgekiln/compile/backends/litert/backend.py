"""The LiteRT backend: a ``.tflite`` model (fp32, or full-integer int8) written directly
from ONNX, run on the device by ``ai-edge-litert`` with its default XNNPACK delegate.

Neither TensorFlow nor PyTorch is involved: ``convert.py`` maps ONNX operators onto TFLite
builtins, ``quantize.py`` calibrates and quantizes, ``writer.py`` serializes with the
``tflite`` package's flatbuffer schema classes.  See README "LiteRT backend" for why.
"""

from __future__ import annotations

import collections
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from edgekiln import __version__
from edgekiln.artifact.manifest import RuntimeRequirements
from edgekiln.compile.backends.base import Backend, BackendOptions
from edgekiln.compile.backends.registry import register
from edgekiln.compile.stages import LoweredFiles, SourceModel
from edgekiln.device_profiles import DeviceProfile
from edgekiln.errors import DependencyError, UserError
from edgekiln.execute.progress import Progress

if TYPE_CHECKING:
    from edgekiln.compile.backends.litert.graph import Graph
    from edgekiln.compile.quantize.data import Dataset

MODEL_FILE = "model.tflite"
# The ai-edge-litert release artifacts are made for and validated with; a device installs it.
LITERT_VERSION = "2.3.0"
# ai-edge-litert publishes Linux wheels for these architectures (manylinux_2_27).
_WHEEL_ARCHES = ("x86_64", "aarch64")


@dataclass(frozen=True)
class LiteRTOptions(BackendOptions):
    """Options of the LiteRT backend.

    quantize: None for an fp32 model, "int8" for full-integer int8 (int8 input and output
    too; the runtime quantizes and dequantizes at the boundary).  ``--quantize int8`` asks
    for the same with an accuracy gate, and hands the calibration inputs to lower() itself.
    calibration: int8 only: a folder of images (preprocessed as the model records) or a
    .npy/.npz file of input tensors.
    calibration_samples: at most this many calibration inputs are used (default 100).
    calibration_method: "minmax" (default, as TFLite's converter) or "percentile".
    num_threads: interpreter threads on the device (default: the profile's cores).
    """

    backend: ClassVar[str] = "litert"
    quantize: Literal["int8"] | None = None
    calibration: str | None = None
    calibration_samples: int = 100
    calibration_method: Literal["minmax", "percentile"] = "minmax"
    num_threads: int | None = None

    def check(self) -> None:
        if self.quantize and self.calibration is None:
            raise UserError(
                "int8 quantization needs calibration data",
                hint="give a folder of images or a .npy/.npz file (litert option calibration)",
            )
        if self.calibration is not None and not self.quantize:
            raise UserError("litert option calibration only applies with quantize='int8'")
        for key in ("calibration_samples", "num_threads"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise UserError(f"litert option {key} must be a positive integer, got {value!r}")


def litert_version() -> str:
    """The ai-edge-litert version the device should install: the build host's, if present."""
    try:
        return metadata.version("ai-edge-litert")
    except metadata.PackageNotFoundError:
        return LITERT_VERSION


@register
class LiteRTBackend(Backend):
    """LiteRT (TensorFlow Lite) with XNNPACK: the published leader on Arm boards."""

    id = "litert"
    runs_on_emulated_board = True  # the aarch64 board carries ai-edge-litert (emulation/recipe.py)
    options_type = LiteRTOptions
    quantization = "self"

    def supports(self, profile: DeviceProfile) -> str | None:
        if "litert" not in profile.backends:
            return f"profile {profile.id} does not list the litert backend (it lists {', '.join(profile.backends)})"
        if profile.is_cuda:
            return "LiteRT artifacts run on the CPU; the profile is for a GPU"
        return None

    def lower(
        self,
        model: SourceModel,
        profile: DeviceProfile,
        options: LiteRTOptions,
        root: Path,
        progress: Progress,
        calibration: Dataset | None = None,
    ) -> LoweredFiles:
        try:
            import flatbuffers  # noqa: F401
            import tflite  # noqa: F401
        except ImportError as exc:
            raise DependencyError(
                f"the LiteRT backend needs the tflite schema package ({exc})", hint="pip install 'edgekiln[compile]'"
            ) from None
        threads = options.num_threads or profile.cpu.cores
        int8 = calibration is not None or options.quantize == "int8"
        if model.original is not None and model.original.suffix == ".tflite" and not int8:
            written = _copy_source(model, root, progress)
        else:
            written = _convert(model, options, root, progress, calibration, int8)
        target = {"kind": "litert", "arch": profile.cpu.arch, "delegate": "xnnpack", "num_threads": threads}
        return LoweredFiles(
            files={MODEL_FILE: "model"},
            runtime=_runtime(profile),
            compiler=written.compiler,
            target=target,
            options=_manifest_options(options, written, int8, threads),
        )


@dataclass(frozen=True)
class _Written:
    """What lower() records in the manifest about the .tflite it wrote."""

    compiler: dict[str, str]
    input_layouts: list[str]
    output_layouts: list[str]
    operators: dict[str, int]
    quantization: dict[str, Any] | None = None


def _copy_source(model: SourceModel, root: Path, progress: Progress) -> _Written:
    """A TFLite source is already what this backend builds: the artifact carries the file
    itself, bit for bit, rather than a rewrite of its ONNX translation."""
    import tflite

    assert model.original is not None
    with progress.step(f"use the source .tflite as {MODEL_FILE}"):
        content = model.original.read_bytes()
        (root / MODEL_FILE).write_bytes(content)
    return _Written(
        compiler={"source-tflite": "unchanged", "tflite-schema": tflite.__version__},
        input_layouts=list(model.original_input_layouts) or ["same"] * len(model.inputs),
        output_layouts=["same"] * len(model.outputs),
        operators=_tflite_operators(content),
    )


def _convert(
    model: SourceModel, options: LiteRTOptions, root: Path, progress: Progress, calibration: Dataset | None, int8: bool
) -> _Written:
    """Convert the ONNX model, quantize it for int8, and write the .tflite."""
    import tflite

    from edgekiln.compile.backends.litert import convert, writer

    compiler = {"edgekiln-tflite-writer": __version__, "tflite-schema": tflite.__version__}
    quantization = None
    with progress.step("convert ONNX to TFLite operators"):
        graph = convert.convert(model.load_onnx(), model.source_ref)
    if int8:
        graph, quantization = _quantize(graph, model, options, progress, calibration)
        compiler["ai-edge-litert"] = litert_version()
    with progress.step(f"write {MODEL_FILE}"):
        content = writer.write(
            graph,
            [t.name for t in model.inputs],
            [t.name for t in model.outputs],
            description=f"edgekiln {__version__}: {model.name}",
        )
        (root / MODEL_FILE).write_bytes(content)
    return _Written(
        compiler=compiler,
        input_layouts=list(graph.input_layouts),
        output_layouts=list(graph.output_layouts),
        operators=dict(sorted(collections.Counter(op.kind for op in graph.ops).items())),
        quantization=quantization,
    )


def _quantize(
    graph: Graph, model: SourceModel, options: LiteRTOptions, progress: Progress, calibration: Dataset | None
) -> tuple[Graph, dict[str, Any]]:
    """``graph`` calibrated and quantized to full-integer int8, and the manifest's record of it."""
    from edgekiln.compile.backends.litert import quantize

    _need_runtime()
    inputs = _calibration_inputs(model, options, progress) if calibration is None else [[x] for x in calibration.inputs]
    graph = quantize.prepare(graph)
    ranges = quantize.calibrate(graph, inputs, options.calibration_method, progress=progress)
    graph = quantize.quantize(graph, ranges)

    def params(name: str) -> dict[str, Any]:
        q = graph.tensors[name].quant
        return {"scale": float(q.scale[0]), "zero_point": int(q.zero_point[0])}

    return graph, {
        "scheme": "full-integer int8: per-channel symmetric weights, per-tensor asymmetric activations, int32 biases",
        "calibration_method": ranges.method,
        "calibration_samples": ranges.samples,
        "inputs": [params(n) for n in graph.inputs],
        "outputs": [params(n) for n in graph.outputs],
    }


def _runtime(profile: DeviceProfile) -> RuntimeRequirements:
    notes = []
    if profile.cpu.arch not in _WHEEL_ARCHES:
        notes.append(
            f"ai-edge-litert publishes no {profile.cpu.arch} wheels: the device needs a LiteRT/TFLite "
            "Python runtime built for it (ai_edge_litert or tflite_runtime, with XNNPACK)"
        )
    return RuntimeRequirements(
        arch=profile.cpu.arch,
        glibc=_wheel_glibc() if profile.cpu.arch in _WHEEL_ARCHES else None,
        python_packages=(f"ai-edge-litert=={litert_version()}", "numpy"),
        library=None,
        library_version=litert_version(),
        notes=tuple(notes),
    )


def _manifest_options(options: LiteRTOptions, written: _Written, int8: bool, threads: int) -> dict[str, Any]:
    quantization = written.quantization
    manifest_options = {
        **asdict(options),
        "quantize": "int8" if int8 else None,
        "calibration_samples": quantization["calibration_samples"] if quantization else options.calibration_samples,
        # The name only: a build host's directory layout does not belong in the artifact.
        "calibration": Path(options.calibration).name if options.calibration else None,
        "num_threads": threads,
        "precision": "int8" if int8 else "float32",
        "delegate": "xnnpack",
        # How each .tflite input/output relates to the manifest's (the source's) tensor.
        "input_layouts": written.input_layouts,
        "output_layouts": written.output_layouts,
        "operators": written.operators,
    }
    if quantization:
        manifest_options["quantization"] = quantization
    return manifest_options


def _tflite_operators(content: bytes) -> dict[str, int]:
    """How often each builtin operator occurs in a .tflite file."""
    import tflite

    names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    model = tflite.Model.GetRootAsModel(content, 0)
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        # Codes above 127 live in BuiltinCode; DeprecatedBuiltinCode keeps the small ones.
        codes.append(names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM"))
    counts: collections.Counter[str] = collections.Counter()
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        for o in range(graph.OperatorsLength()):
            counts[codes[graph.Operators(o).OpcodeIndex()]] += 1
    return dict(sorted(counts.items()))


def _need_runtime() -> None:
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError as exc:
        raise DependencyError(
            f"int8 calibration runs the model in LiteRT, and ai-edge-litert is not installed ({exc})",
            hint="pip install 'edgekiln[compile]'",
        ) from None


def _calibration_inputs(model: SourceModel, options: LiteRTOptions, progress: Progress) -> list[list[Any]]:
    from edgekiln.compile.quantize.data import load_dataset

    if len(model.inputs) != 1:
        raise UserError("int8 quantization supports single-input models")
    assert options.calibration is not None
    with progress.step(f"load calibration data from {options.calibration}"):
        data = load_dataset(options.calibration, model, limit=options.calibration_samples)
    return [[x] for x in data.inputs]


def _wheel_glibc() -> str | None:
    """The glibc that ai-edge-litert's manylinux wheels need (from the installed wheel's tag)."""
    try:
        wheel = metadata.distribution("ai-edge-litert").read_text("WHEEL") or ""
    except metadata.PackageNotFoundError:
        return "2.27"  # the manylinux_2_27 tag of the 2.3.0 wheels
    for line in wheel.splitlines():
        if line.startswith("Tag:") and "manylinux_" in line:
            major, minor = line.split("manylinux_", 1)[1].split("_")[:2]
            return f"{major}.{minor}"
    return None
