"""The ONNX Runtime backend: the model optimized offline, with session settings for the
profile (threads from its cores, execution providers it can use)."""

from __future__ import annotations

import re
import shutil
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, Literal

from edgekiln.artifact.manifest import RuntimeRequirements
from edgekiln.compile.backends.base import Backend, BackendOptions
from edgekiln.compile.backends.registry import register
from edgekiln.compile.stages import LoweredFiles, SourceModel
from edgekiln.device_profiles import DeviceProfile
from edgekiln.errors import BackendError, DependencyError, UserError
from edgekiln.execute.progress import Progress

MODEL_FILE = "model.onnx"
# onnxruntime publishes wheels for these device architectures (PyPI, 1.2x/1.3x).
_WHEEL_ARCHES = ("x86_64", "aarch64")


@dataclass(frozen=True)
class ONNXRuntimeOptions(BackendOptions):
    """Options of the ONNX Runtime backend.

    optimization: graph optimizations applied offline. "basic" only does rewrites that
    hold on any hardware, which is all ONNX Runtime recommends for a model that will run on
    another machine; "extended" adds fusions that are still portable across CPUs of the same
    kind and is the default when the device's CPU architecture is the build host's.
    intra_op_threads: threads per operator on the device (default: the profile's cores).
    """

    backend: ClassVar[str] = "onnxruntime"
    optimization: Literal["basic", "extended", "all"] | None = None
    intra_op_threads: int | None = None

    def check(self) -> None:
        if self.intra_op_threads is not None and self.intra_op_threads < 1:
            raise UserError(
                f"onnxruntime option intra_op_threads must be a positive integer, got {self.intra_op_threads!r}"
            )


def providers_for(profile: DeviceProfile) -> list[str]:
    """Execution providers in order of preference; the executor uses those present."""
    if profile.is_cuda:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if profile.cpu.arch == "aarch64":
        # XNNPACK is faster than the default CPU kernels on Arm cores, where the wheel has it.
        return ["XnnpackExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def load_error(message: str, source_ref: str) -> BackendError:
    """ONNX Runtime's failure to load a model as one error that leads with the node it names
    (ORT writes ``Node (NAME)`` or ``In Node, ("NAME", Op, ...)``) and says what to try."""
    message = " ".join(message.split())
    where = ""
    named = re.search(r"Node \(([^)]*)\)(?: Op \(([^)]*)\))?", message)
    listed = re.search(r'In Node, \("([^"]*)", (\w+)', message)
    if listed:
        where = f" at {listed.group(2)} (node {listed.group(1) or '<unnamed>'!r})"
    elif named:
        op = f"{named.group(2)} " if named.group(2) else ""
        where = f" at {op}(node {named.group(1)!r})"
    return BackendError(
        f"ONNX Runtime cannot load {source_ref}{where}: {message[:300]}",
        hint="try --backend tvm or --backend litert, or export the model with an opset this onnxruntime supports",
    )


@register
class ONNXRuntimeBackend(Backend):
    """ONNX Runtime: the portable reference engine, fast on x86-64."""

    id = "onnxruntime"
    options_type = ONNXRuntimeOptions
    quantization = "qdq"

    def supports(self, profile: DeviceProfile) -> str | None:
        if "onnxruntime" not in profile.backends:
            return (
                f"profile {profile.id} does not list the onnxruntime backend (it lists {', '.join(profile.backends)})"
            )
        if profile.cpu.arch not in _WHEEL_ARCHES:
            return f"onnxruntime publishes no {profile.cpu.arch} wheels"
        return None

    def lower(
        self,
        model: SourceModel,
        profile: DeviceProfile,
        options: ONNXRuntimeOptions,
        root: Path,
        progress: Progress,
        calibration: Any = None,
    ) -> LoweredFiles:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise DependencyError(
                f"onnxruntime is not installed ({exc})", hint="pip install 'edgekiln[compile]'"
            ) from None
        from edgekiln.runtime.compat import host_info

        level = options.optimization or ("extended" if profile.cpu.arch == host_info().arch else "basic")
        threads = options.intra_op_threads or profile.cpu.cores
        target = root / MODEL_FILE
        with progress.step(f"optimize for ONNX Runtime ({level})"):
            session_options = ort.SessionOptions()
            session_options.graph_optimization_level = {
                "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            }[level]
            session_options.optimized_model_filepath = str(target)
            try:
                ort.InferenceSession(str(model.path), session_options, providers=["CPUExecutionProvider"])
            except Exception as exc:  # ORT raises its own exception types for bad graphs
                raise load_error(str(exc), model.source_ref) from None
            if not target.exists():  # pragma: no cover - ORT always writes it
                shutil.copyfile(model.path, target)
        version = metadata.version("onnxruntime")
        package = "onnxruntime-gpu" if profile.is_cuda else "onnxruntime"
        runtime = RuntimeRequirements(
            arch=profile.cpu.arch,
            python_packages=(f"{package}>={version}", "numpy"),
            library="onnxruntime",
            library_version=version,
            cuda_arch=profile.accelerator.cuda_arch if profile.is_cuda else None,
        )
        session = {"providers": providers_for(profile), "intra_op_num_threads": threads, "optimization": level}
        return LoweredFiles(
            files={MODEL_FILE: "model"},
            runtime=runtime,
            compiler={"onnxruntime": version},
            target={"session": session},
            options={**asdict(options), "session": session},
        )
