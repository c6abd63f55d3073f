"""Runs ONNX Runtime artifacts with the session settings their manifest records."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgekiln.artifact.manifest import Manifest
from edgekiln.errors import CompatibilityError, DependencyError, IntegrityError
from edgekiln.runtime.compat import usable_cpus


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


class ONNXRuntimeExecutor:
    """An ONNX Runtime session for one artifact."""

    def __init__(self, manifest: Manifest, root: Path, device: str) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise DependencyError(
                "this artifact needs onnxruntime, which is not installed",
                hint=f"pip install {(manifest.runtime.python_packages or ('onnxruntime',))[0]}",
            ) from None
        needed = manifest.runtime.library_version
        if needed and _version_tuple(ort.__version__) < _version_tuple(needed):
            # Offline-optimized models may use operators only this version or newer knows.
            raise CompatibilityError(f"the artifact needs onnxruntime >= {needed}; this device has {ort.__version__}")
        model = manifest.file("model")
        if model is None:
            raise IntegrityError("the artifact has no model file")
        session = dict(manifest.backend_options.get("session") or {})
        available = set(ort.get_available_providers())
        wanted = [p for p in session.get("providers", ["CPUExecutionProvider"]) if p in available]
        if device == "cuda":
            if "CUDAExecutionProvider" not in available:
                raise CompatibilityError("device='cuda' needs onnxruntime-gpu with the CUDA execution provider")
        else:
            wanted = [p for p in wanted if p != "CUDAExecutionProvider"]
        if "CPUExecutionProvider" not in wanted:
            wanted.append("CPUExecutionProvider")
        options = ort.SessionOptions()
        threads = session.get("intra_op_num_threads")
        if threads:
            # Never more threads than this device has CPUs: oversubscribed ORT thread pools
            # spin against each other and run several times slower.
            options.intra_op_num_threads = max(1, min(int(threads), usable_cpus()))
        # The portable rewrites were applied at compile time; the hardware-specific ones
        # (NCHWc layouts, fusions for this CPU's kernels) are only valid here, at load time.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(str(root / model.path), options, providers=wanted)
        except Exception as exc:
            raise CompatibilityError(f"ONNX Runtime cannot load the model: {str(exc).strip()[:300]}") from None
        self._names = [t.name for t in manifest.inputs]
        self.providers: list[str] = self._session.get_providers()
        self._lock = threading.Lock()

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        feed: dict[str, Any] = dict(zip(self._names, inputs))
        return [np.asarray(o) for o in self._session.run(None, feed)]
