"""Runs OpenVINO artifacts: the IR compiled by OpenVINO's CPU plugin for this device's CPU."""

from __future__ import annotations

import threading
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgekiln.artifact.manifest import Manifest
from edgekiln.errors import CompatibilityError, DependencyError, IntegrityError
from edgekiln.runtime.compat import usable_cpus, version_tuple


def cpu_config(threads: int | None, hint: str = "latency") -> dict[str, Any]:
    """The CPU plugin's settings for an fp32 model: used by artifacts and by the OpenVINO
    baseline of ``edgekiln bench`` alike, so that both run the same way."""
    # fp32, the precision validation checked: on CPUs with AVX512-BF16 or AMX, OpenVINO
    # would otherwise run in bf16 and trade accuracy for speed without being asked.
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": hint.upper()}
    if threads:
        # More threads than usable CPUs make the plugin's workers wait on each other.
        config["INFERENCE_NUM_THREADS"] = max(1, min(int(threads), usable_cpus()))
    return config


def _installed_version() -> str | None:
    # The package's release ("2026.4.1"); openvino.__version__ adds a build tag.
    try:
        return metadata.version("openvino")
    except metadata.PackageNotFoundError:
        return None


class OpenVINOExecutor:
    """One compiled model and its infer request for one artifact."""

    def __init__(self, manifest: Manifest, root: Path, device: str) -> None:
        # What can be refused is refused before openvino is imported (its import is not free).
        if device == "cuda":
            raise CompatibilityError("OpenVINO artifacts run on the CPU", hint="load it with device='cpu'")
        have, needed = _installed_version(), manifest.runtime.library_version
        if needed and have and version_tuple(have) < version_tuple(needed):
            # IR is read by the release that wrote it or a newer one.
            raise CompatibilityError(
                f"the artifact needs openvino >= {needed}; this device has {have}",
                hint=f"pip install 'openvino>={needed}'",
            )
        try:
            import openvino as ov
        except ImportError:
            raise DependencyError(
                "this artifact needs openvino, which is not installed", hint="pip install 'edgekiln[openvino]'"
            ) from None
        model, weights = manifest.file("model"), manifest.file("weights")
        if model is None or weights is None:
            raise IntegrityError("the OpenVINO artifact lacks its model or weights file")
        plugin = dict(manifest.backend_options.get("plugin") or {})
        config = cpu_config(plugin.get("inference_threads"), str(plugin.get("performance_hint") or "latency"))
        try:
            core = ov.Core()
            graph = core.read_model(str(root / model.path), str(root / weights.path))
            self._compiled = core.compile_model(graph, "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise CompatibilityError(f"OpenVINO cannot load the model: {' '.join(str(exc).split())[:300]}") from None
        # Ports in the manifest's order, found by tensor name (the converter keeps the ONNX
        # names), so that a model with several inputs or outputs cannot have them swapped.
        self._inputs = _ports(self._compiled.inputs, [t.name for t in manifest.inputs])
        self._outputs = _ports(self._compiled.outputs, [t.name for t in manifest.outputs])
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request, reused

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            result = self._request.infer({p: np.ascontiguousarray(a) for p, a in zip(self._inputs, inputs)})
            # Copies: the request reuses its output buffers on the next call.
            return [np.array(result[out], copy=True) for out in self._outputs]


def _ports(ports: Sequence[Any], names: Sequence[str]) -> list[Any]:
    by_name = {name: port for port in ports for name in port.get_names()}
    if len(ports) != len(names) or any(n not in by_name for n in names):
        raise CompatibilityError(
            f"the OpenVINO model's tensors ({', '.join(sorted(by_name))}) do not match the manifest's "
            f"({', '.join(names)})",
            hint="recompile the artifact with this edgekiln",
        )
    return [by_name[n] for n in names]
