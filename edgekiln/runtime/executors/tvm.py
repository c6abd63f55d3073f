"""Runs TVM Relax artifacts with apache-tvm-ffi and the runtime library the artifact bundles.

The device needs no TVM install: the artifact carries ``libtvm_runtime.so`` built for its
platform (and ``libtvm_runtime_cuda.so`` for GPU artifacts).  Loading it with RTLD_GLOBAL
registers the Relax VM's functions in the FFI registry, after which the compiled model
library loads as an FFI module.

An artifact may carry, beside its portable model library, variants built for richer CPUs
of its class (AVX-512 on x86_64); the executor loads the first variant whose CPU features
the device has, else the portable library. ``EDGEKILN_MODEL_LIBRARY=<path in the artifact>``
forces one (validation runs each this way; a user can compare them).
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgekiln.artifact.manifest import FileEntry, Manifest
from edgekiln.errors import CompatibilityError, DependencyError, IntegrityError, UserError
from edgekiln.runtime.compat import host_info

# DLPack device codes and the Relax VM's allocator kinds (tvm/runtime/vm.py).
_KDL_CPU, _KDL_CUDA = 1, 2
_POOLED_ALLOCATOR = 2
# A function that libtvm_runtime registers; present once a runtime library is loaded
# (ours, or the compiler's when edgekiln validates inside a compile process).
_RUNTIME_PROBE = "vm.builtin.check_tensor_info"
_CUDA_PROBE = "ffi.Module.load_from_bytes.cuda"

LIBRARY_ENV = "EDGEKILN_MODEL_LIBRARY"

_load_lock = threading.Lock()
_loaded_libraries: dict[str, ctypes.CDLL] = {}


def _ffi() -> Any:
    try:
        import tvm_ffi
    except ImportError as exc:  # pragma: no cover - depends on the device install
        raise DependencyError(
            f"apache-tvm-ffi is not installed ({exc})", hint="pip install edgekiln on the device"
        ) from None
    return tvm_ffi


def _load_runtime_library(tvm_ffi: Any, path: Path, probe: str) -> None:
    # One runtime per process: a second libtvm_runtime would register every function again.
    with _load_lock:
        if tvm_ffi.get_global_func(probe, allow_missing=True) is not None:
            return
        try:
            _loaded_libraries[str(path)] = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            raise CompatibilityError(f"cannot load the artifact's runtime library {path.name}: {exc}") from None


def choose_library(manifest: Manifest, cpu_features: frozenset[str], forced: str | None = None) -> FileEntry:
    """The model library to load on a CPU with ``cpu_features``: ``forced`` (a path in the
    artifact) if given, else the first variant whose features the CPU has, else the portable
    library. An empty feature set (no /proc/cpuinfo) takes the portable library."""
    base = manifest.file("model-library")
    if base is None:
        raise IntegrityError("the artifact has no model library")
    libraries = [*manifest.variant_libraries(), base]
    if forced:
        chosen = next((f for f in libraries if f.path == forced), None)
        if chosen is None:
            raise UserError(
                f"{LIBRARY_ENV}={forced} is not a model library of this artifact",
                hint=f"use one of: {', '.join(f.path for f in libraries)}",
            )
        missing = sorted(set(chosen.cpu_features) - cpu_features) if cpu_features else []
        if missing:
            raise CompatibilityError(f"{chosen.path} needs CPU features this CPU lacks: {', '.join(missing)}")
        return chosen
    for entry in libraries[:-1]:
        if cpu_features and set(entry.cpu_features) <= cpu_features:
            return entry
    return base


class TVMExecutor:
    """A loaded Relax VM executable for one device."""

    def __init__(self, manifest: Manifest, root: Path, device: str) -> None:
        tvm_ffi = _ffi()
        self._ffi = tvm_ffi
        self._manifest = manifest
        runtime = manifest.file("runtime-library")
        if runtime is not None:
            _load_runtime_library(tvm_ffi, root / runtime.path, _RUNTIME_PROBE)
        elif tvm_ffi.get_global_func(_RUNTIME_PROBE, allow_missing=True) is None:
            raise CompatibilityError(
                f"the artifact bundles no TVM runtime library for {manifest.runtime.arch} "
                f"and none is loaded; {' '.join(manifest.runtime.notes)}"
            )
        if device == "cuda":
            cuda_runtime = manifest.file("runtime-library-cuda")
            if cuda_runtime is None:
                raise IntegrityError("a CUDA artifact without its CUDA runtime library")
            _load_runtime_library(tvm_ffi, root / cuda_runtime.path, _CUDA_PROBE)
        library = choose_library(manifest, host_info().cpu_features, os.environ.get(LIBRARY_ENV))
        self.library = library.path
        try:
            module = tvm_ffi.load_module(str(root / library.path))
            vm = module["vm_load_executable"]()
            if device == "cuda":
                # The VM runs shape functions on the CPU, so it gets the CPU as a second device.
                vm["vm_initialization"](_KDL_CUDA, 0, _POOLED_ALLOCATOR, _KDL_CPU, 0, _POOLED_ALLOCATOR)
            else:
                vm["vm_initialization"](_KDL_CPU, 0, _POOLED_ALLOCATOR)
        except Exception as exc:  # the FFI raises plain RuntimeError/ValueError
            raise CompatibilityError(f"cannot load the model library: {exc}") from None
        # The VM does not own the library: keep the module alive, or the kernels' code is
        # unmapped when it is collected and the next call jumps into freed memory.
        self._module = module
        self._vm = vm
        self._main = vm["main"]
        self._device = tvm_ffi.device("cuda" if device == "cuda" else "cpu", 0)
        self._cpu = tvm_ffi.device("cpu", 0)
        self._on_gpu = device == "cuda"
        self._alloc = tvm_ffi.get_global_func("runtime.TVMTensorAllocWithScope")
        self._copy = tvm_ffi.get_global_func("runtime.TVMTensorCopyFromTo")
        # Relax VM calls are not re-entrant on one VM instance.
        self._lock = threading.Lock()
        if self._on_gpu and manifest.backend_options.get("cuda_graph"):
            # The VM captures the model's CUDA graph on its first call (see the compiler's
            # gpu_pipeline.py); make that call at load, so that no query pays for capturing.
            self.run([np.zeros(t.shape, dtype=t.dtype) for t in manifest.inputs])

    def _to_device(self, array: np.ndarray) -> Any:
        host = self._ffi.from_dlpack(np.ascontiguousarray(array))
        # Always copy into a tensor the TVM runtime allocated, on the CPU too: compiled kernels
        # use aligned vector loads (64-byte alignment, as TVM allocates), and numpy only
        # guarantees 16 bytes, so a numpy buffer passed as is crashes on some inputs.
        dev = self._alloc(self._ffi.Shape(array.shape), self._ffi.dtype(str(array.dtype)), self._device, "global")
        self._copy(host, dev)
        return dev

    def _to_numpy(self, tensor: Any) -> np.ndarray:
        if self._on_gpu:
            host = self._alloc(tensor.shape, tensor.dtype, self._cpu, "global")
            self._copy(tensor, host)
            tensor = host
        # Copy: the VM's pooled allocator reuses output buffers on the next call.
        return np.from_dlpack(tensor).copy()

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            args = [self._to_device(a) for a in inputs]
            result = self._main(*args)
            if isinstance(result, self._ffi.Tensor):
                return [self._to_numpy(result)]
            return [self._to_numpy(t) for t in result]
