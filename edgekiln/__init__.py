"""edgekiln: compile image classifiers per device profile, run them with a small runtime.

Heavy parts load lazily: ``import edgekiln`` imports neither the compiler nor a runtime
backend, so a device install stays small and fast to start. The public API is here, so
that a script needs no internal imports::

    import edgekiln

    options = edgekiln.CompileOptions(backend="onnxruntime", preprocessing="imagenet-torch", labels="labels.txt")
    edgekiln.compile_model("model.onnx", "x86_64", "model.tar.gz", options=options)
    with edgekiln.Model("model.tar.gz") as model:
        print(model.predict("cat.jpg", top_k=3))
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it; each is imported on first use (PEP 562).
_EXPORTS = {
    "compile_model": "edgekiln.compile.api",
    "CompileOptions": "edgekiln.compile.api",
    "QuantizeOptions": "edgekiln.compile.quantize",
    "ValidationOptions": "edgekiln.compile.validate",
    "BackendOptions": "edgekiln.compile.backends.base",
    "TVMOptions": "edgekiln.compile.backends.tvm.backend",
    "ONNXRuntimeOptions": "edgekiln.compile.backends.onnxruntime.backend",
    "LiteRTOptions": "edgekiln.compile.backends.litert.backend",
    "OpenVINOOptions": "edgekiln.compile.backends.openvino.backend",
    "TimingBudget": "edgekiln.compile.sequential",
    "PREPROCESSING_PRESETS": "edgekiln.compile.preprocessing",
    "load": "edgekiln.runtime.model",
    "Model": "edgekiln.runtime.model",
}

__all__ = [
    "__version__",
    "compile_model",
    "CompileOptions",
    "QuantizeOptions",
    "ValidationOptions",
    "BackendOptions",
    "TVMOptions",
    "ONNXRuntimeOptions",
    "LiteRTOptions",
    "OpenVINOOptions",
    "TimingBudget",
    "PREPROCESSING_PRESETS",
    "load",
    "Model",
]

if TYPE_CHECKING:  # pragma: no cover
    from edgekiln.compile.api import CompileOptions, compile_model
    from edgekiln.compile.backends.base import BackendOptions
    from edgekiln.compile.backends.litert.backend import LiteRTOptions
    from edgekiln.compile.backends.onnxruntime.backend import ONNXRuntimeOptions
    from edgekiln.compile.backends.openvino.backend import OpenVINOOptions
    from edgekiln.compile.backends.tvm.backend import TVMOptions
    from edgekiln.compile.preprocessing import PREPROCESSING_PRESETS
    from edgekiln.compile.quantize import QuantizeOptions
    from edgekiln.compile.sequential import TimingBudget
    from edgekiln.compile.validate import ValidationOptions
    from edgekiln.runtime.model import Model, load


def __getattr__(name: str) -> Any:
    # Lazy re-exports: the compiler must not load when a device imports edgekiln.
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'edgekiln' has no attribute {name!r}")
    return getattr(import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
