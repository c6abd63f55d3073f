"""The OpenVINO backend: the model converted offline into OpenVINO's IR (a graph in XML and
its weights in a binary file), which OpenVINO's CPU plugin compiles for the device's own CPU
when the artifact loads.

Because the kernels are chosen at load, one artifact runs with the instructions each x86-64
device has (AVX2, AVX-512, AMX) rather than the build profile's. It is held to fp32 there
(see :mod:`edgekiln.runtime.executors.openvino`), the precision validation checked.
"""

from __future__ import annotations

import subprocess
import sys
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

MODEL_FILE = "model.xml"
WEIGHTS_FILE = "model.bin"
# OpenVINO also publishes aarch64 wheels, but edgekiln has neither measured nor validated
# them (its emulated aarch64 board does not carry OpenVINO), and the published figures put
# LiteRT/XNNPACK first on Cortex-A cores (evidence.toml).
_ARCHES = ("x86_64",)


@dataclass(frozen=True)
class OpenVINOOptions(BackendOptions):
    """Options of the OpenVINO backend.

    inference_threads: threads the CPU plugin runs with on the device (default: the
    profile's cores; never more than the device's usable CPUs).
    performance_hint: "latency" (one request at a time as fast as possible, what a camera
    loop or a single-stream benchmark wants) or "throughput" (OpenVINO splits the cores into
    streams for concurrent requests).
    """

    backend: ClassVar[str] = "openvino"
    inference_threads: int | None = None
    performance_hint: Literal["latency", "throughput"] = "latency"

    def check(self) -> None:
        if self.inference_threads is not None and self.inference_threads < 1:
            raise UserError(
                f"openvino option inference_threads must be a positive integer, got {self.inference_threads!r}"
            )


@register
class OpenVINOBackend(Backend):
    """OpenVINO: Intel's inference engine, whose CPU plugin picks kernels for the CPU it runs on."""

    id = "openvino"
    options_type = OpenVINOOptions
    # OpenVINO reads QuantizeLinear/DequantizeLinear pairs as its own FakeQuantize and runs
    # the layers between them in int8.
    quantization = "qdq"

    def supports(self, profile: DeviceProfile) -> str | None:
        if "openvino" not in profile.backends:
            return f"profile {profile.id} does not list the openvino backend (it lists {', '.join(profile.backends)})"
        if profile.is_cuda:
            return "OpenVINO has no CUDA device"
        if profile.cpu.arch not in _ARCHES:
            return f"edgekiln builds OpenVINO artifacts for {', '.join(_ARCHES)} CPUs only, not {profile.cpu.arch}"
        return None

    def lower(
        self,
        model: SourceModel,
        profile: DeviceProfile,
        options: OpenVINOOptions,
        root: Path,
        progress: Progress,
        calibration: Any = None,
    ) -> LoweredFiles:
        try:
            version = metadata.version("openvino")
        except metadata.PackageNotFoundError:
            raise DependencyError("openvino is not installed", hint="pip install 'edgekiln[compile]'") from None
        with progress.step("convert to OpenVINO IR"):
            _convert_in_child(model, root / MODEL_FILE)
        plugin = {
            "device": "CPU",
            "inference_precision": "f32",
            "performance_hint": options.performance_hint,
            "inference_threads": options.inference_threads or profile.cpu.cores,
        }
        return LoweredFiles(
            files={MODEL_FILE: "model", WEIGHTS_FILE: "weights"},
            runtime=RuntimeRequirements(
                arch=profile.cpu.arch,
                # IR written by one release is read by the same release or a newer one.
                python_packages=(f"openvino>={version}", "numpy"),
                library="openvino",
                library_version=version,
            ),
            compiler={"openvino": version},
            target={"plugin": plugin},
            options={**asdict(options), "plugin": plugin},
        )


# OpenVINO runs in a child process: importing it in a long-lived process that also runs TVM's
# MetaSchedule (a test session, a CI job compiling and tuning) left C++ writes aimed at a
# Python stream that had been closed since, which aborted the process. fp32 weights: the IR
# default would store them in fp16, which validation against the fp32 model is not meant to absorb.
_CONVERT = """
import sys
import openvino as ov
ov.save_model(ov.convert_model(sys.argv[1]), sys.argv[2], compress_to_fp16=False)
"""
_CONVERT_TIMEOUT_S = 600


def _convert_in_child(model: SourceModel, target: Path) -> None:
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CONVERT, str(model.path), str(target)],
            capture_output=True,
            text=True,
            timeout=_CONVERT_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise BackendError(
            f"OpenVINO did not convert {model.source_ref} within {_CONVERT_TIMEOUT_S} s",
            hint="try --backend onnxruntime",
        ) from None
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        message = " ".join(" ".join(lines[-3:]).split())
        raise BackendError(
            f"OpenVINO cannot convert {model.source_ref}: {message[:300]}",
            hint="try --backend onnxruntime or --backend litert",
        )
