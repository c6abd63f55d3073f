"""Runs ONNX Runtime artifacts with the session settings their manifest records."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgekiln.artifact.manifest import Manifest
from edgekiln.errors import CompatibilityError, DependencyError, IntegrityError
from edgekiln.runtime.compat import usable_cpus, version_tuple


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
        if needed and version_tuple(ort.__version__) < version_tuple(needed):
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
                raise DependencyError(
                    f"device='cuda' needs onnxruntime-gpu; onnxruntime {ort.__version__} here has no CUDA provider",
                    hint="pip uninstall onnxruntime; pip install 'edgekiln[gpu]' (both install the onnxruntime module)",
                )
        else:
            wanted = [p for p in wanted if p != "CUDAExecutionProvider"]
        if "CPUExecutionProvider" not in wanted:
            wanted.append("CPUExecutionProvider")
        options = ort.SessionOptions()
        # Threads stop spinning when run() returns: by default they spin on and hold the cores
        # from whatever runs next on the device (the agent, another model; a TVM model run right
        # after took 2.2x its time on 2 cores), and ONNX Runtime's own time back to back is the
        # same either way (ResNet-18: 18.7-19.1 ms).
        options.add_session_config_entry("session.force_spinning_stop", "1")
        threads = session.get("intra_op_num_threads")
        if threads:
            # Never more threads than this device has CPUs: oversubscribed ORT thread pools
            # spin against each other and run several times slower.
            options.intra_op_num_threads = max(1, min(int(threads), usable_cpus()))
        # The portable rewrites were applied at compile time; the hardware-specific ones
        # (NCHWc layouts, fusions for this CPU's kernels) are only valid here, at load time.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        provider_options = session.get("provider_options") or {}
        providers = [(p, dict(provider_options[p])) if p in provider_options else p for p in wanted]
        try:
            self._session = ort.InferenceSession(str(root / model.path), options, providers=providers)
            cuda_options = provider_options.get("CUDAExecutionProvider", {})
            graph = device == "cuda" and cuda_options.get("enable_cuda_graph") == "1"
            self._graph = _CudaGraphRun(ort, self._session, manifest) if graph else None
        except Exception as exc:
            raise CompatibilityError(f"ONNX Runtime cannot load the model: {str(exc).strip()[:300]}") from None
        self._names = [t.name for t in manifest.inputs]
        self.providers: list[str] = self._session.get_providers()
        self._lock = threading.Lock()

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self._graph is not None:
            with self._lock:  # one set of bound device buffers
                return self._graph.run(inputs)
        feed: dict[str, Any] = dict(zip(self._names, inputs))
        return [np.asarray(o) for o in self._session.run(None, feed)]


class _CudaGraphRun:
    """Runs a session whose CUDA execution provider replays a captured CUDA graph.

    A CUDA graph replays kernels on the device addresses it was captured with, so ONNX
    Runtime needs the inputs and outputs bound to fixed device buffers (I/O binding): each
    run copies the new inputs into the same buffers, replays, and copies the outputs out.
    """

    # ORT runs once normally (allocating its memory) and captures on the next run.
    _CAPTURE_RUNS = 2

    def __init__(self, ort: Any, session: Any, manifest: Manifest) -> None:
        def device_buffer(spec: Any) -> Any:
            return ort.OrtValue.ortvalue_from_shape_and_type(list(spec.shape), np.dtype(spec.dtype), "cuda", 0)

        self._session = session
        self._inputs = [device_buffer(t) for t in manifest.inputs]
        self._binding = session.io_binding()
        for spec, value in zip(manifest.inputs, self._inputs):
            self._binding.bind_ortvalue_input(spec.name, value)
        for spec in manifest.outputs:
            self._binding.bind_ortvalue_output(spec.name, device_buffer(spec))
        # Capture at load, so that no query pays for it.
        zeros = [np.zeros(t.shape, dtype=t.dtype) for t in manifest.inputs]
        for _ in range(self._CAPTURE_RUNS):
            self.run(zeros)

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        for buffer, array in zip(self._inputs, inputs):
            buffer.update_inplace(np.ascontiguousarray(array))
        self._session.run_with_iobinding(self._binding)
        return list(self._binding.copy_outputs_to_cpu())
