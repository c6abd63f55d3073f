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
    For CUDA profiles the default is "basic": the saved model keeps standard ONNX operators
    only, and the device's CUDA execution provider applies its own fusions at load.
    intra_op_threads: threads per operator on the device (default: the profile's cores).
    cuda_graph: for CUDA profiles, ask the CUDA execution provider to capture the whole
    model in a CUDA graph (its ``enable_cuda_graph`` option; the runtime binds fixed device
    buffers for the inputs and outputs, which CUDA graphs need).
    """

    backend: ClassVar[str] = "onnxruntime"
    optimization: Literal["basic", "extended", "all"] | None = None
    intra_op_threads: int | None = None
    cuda_graph: bool = True

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
    runs_on_emulated_board = True  # the aarch64 board carries onnxruntime (emulation/recipe.py)

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

        portable = profile.is_cuda or profile.cpu.arch != host_info().arch
        level = options.optimization or ("basic" if portable else "extended")
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
        runtime = _runtime_requirements(profile, version, level)
        session: dict[str, Any] = {
            "providers": providers_for(profile),
            "intra_op_num_threads": threads,
            "optimization": level,
        }
        if profile.is_cuda:
            session["provider_options"] = cuda_provider_options(options)
        return LoweredFiles(
            files={MODEL_FILE: "model"},
            runtime=runtime,
            compiler={"onnxruntime": version},
            target={"session": session},
            options={**asdict(options), "session": session},
        )


def cuda_provider_options(options: ONNXRuntimeOptions) -> dict[str, dict[str, str]]:
    """The CUDA execution provider's options the manifest asks the device for (ORT takes
    provider option values as strings)."""
    return {"CUDAExecutionProvider": {"enable_cuda_graph": "1" if options.cuda_graph else "0"}}


def _runtime_requirements(profile: DeviceProfile, version: str, level: str) -> RuntimeRequirements:
    if not profile.is_cuda:
        return RuntimeRequirements(
            arch=profile.cpu.arch,
            python_packages=(f"onnxruntime>={version}", "numpy"),
            library="onnxruntime",
            library_version=version,
        )
    assert profile.accelerator is not None
    # The CUDA build is a separate package (onnxruntime-gpu) with its own releases, which
    # trail the CPU package's; a "basic" model holds standard ONNX operators only, so any
    # onnxruntime-gpu that knows the model's opset runs it, not only this version or newer.
    floor = f">={version}" if level != "basic" else ""
    return RuntimeRequirements(
        arch=profile.cpu.arch,
        python_packages=(f"onnxruntime-gpu{floor}", "numpy"),
        library="onnxruntime",
        library_version=version if level != "basic" else None,
        cuda_arch=profile.accelerator.cuda_arch,
        notes=(
            f"built with onnxruntime {version}; runs on onnxruntime-gpu with the CUDA execution provider"
            " (pip install 'edgekiln[gpu]')",
        ),
    )
