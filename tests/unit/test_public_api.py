"""The public API at the top level: option types and the runtime, imported lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest

import edgekiln


def test_option_types_are_exported_at_the_top_level():
    from edgekiln.compile.api import CompileOptions, compile_model
    from edgekiln.compile.backends.onnxruntime.backend import ONNXRuntimeOptions
    from edgekiln.compile.backends.tvm.backend import TVMOptions
    from edgekiln.compile.quantize import QuantizeOptions
    from edgekiln.compile.validate import ValidationOptions
    from edgekiln.runtime.model import Model, load

    assert edgekiln.CompileOptions is CompileOptions and edgekiln.compile_model is compile_model
    assert edgekiln.QuantizeOptions is QuantizeOptions and edgekiln.ValidationOptions is ValidationOptions
    assert edgekiln.TVMOptions is TVMOptions and edgekiln.ONNXRuntimeOptions is ONNXRuntimeOptions
    assert edgekiln.Model is Model and edgekiln.load is load
    assert set(edgekiln.__all__) <= set(dir(edgekiln))
    options = edgekiln.CompileOptions(
        backend="onnxruntime",
        validation=edgekiln.ValidationOptions(tolerance_rel=1e-3),
        preprocessing="imagenet-torch",
    )
    assert options.validation.tolerance_rel == 1e-3 and "imagenet-tf" in edgekiln.PREPROCESSING_PRESETS
    with pytest.raises(AttributeError, match="no attribute 'Compile'"):
        edgekiln.Compile  # noqa: B018


def test_importing_edgekiln_and_its_runtime_loads_no_compiler():
    code = (
        "import sys, edgekiln\n"
        "edgekiln.Model, edgekiln.load\n"
        "heavy = sorted(m for m in sys.modules if m.startswith(('edgekiln.compile', 'onnx', 'torch', 'tvm')))\n"
        "print(heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
