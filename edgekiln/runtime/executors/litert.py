"""Runs LiteRT artifacts (``model.tflite``) with ai-edge-litert's Interpreter.

The interpreter applies its default XNNPACK delegate.  The model's tensors may differ from
the manifest's at the boundary, and this executor hides both differences so that
``Model.run``/``predict`` behave the same for every backend:

- layout: 4-D inputs/outputs are NHWC inside the model where the manifest (the source
  model) says NCHW; ``backend_options.input_layouts``/``output_layouts`` record which;
- int8 artifacts take and give int8: float inputs are quantized with the input tensor's
  scale and zero point, outputs dequantized to float32.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgekiln.artifact.manifest import Manifest
from edgekiln.errors import CompatibilityError, DependencyError, IntegrityError
from edgekiln.runtime.compat import usable_cpus


def _interpreter_class(manifest: Manifest) -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            # The same API under its pre-2024 name: on boards ai-edge-litert has no wheels
            # for (armv7l), a tflite_runtime built from source runs the artifact too.
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            package = manifest.runtime.python_packages[0] if manifest.runtime.python_packages else "ai-edge-litert"
            raise DependencyError(
                "this artifact needs ai-edge-litert, which is not installed",
                hint=f"pip install {package}  (or: pip install 'edgekiln[litert]')",
            ) from None
    return Interpreter


def _threads(requested: Any) -> int:
    available = usable_cpus()
    # More threads than usable cores makes XNNPACK's thread pool wait on itself.
    return max(1, min(int(requested or available), available))


class LiteRTExecutor:
    """A LiteRT interpreter for one artifact."""

    def __init__(self, manifest: Manifest, root: Path, device: str) -> None:
        if device != "cpu":
            raise CompatibilityError("LiteRT artifacts run on the CPU; load them with device='cpu'")
        interpreter_class = _interpreter_class(manifest)
        model = manifest.file("model")
        if model is None:
            raise IntegrityError("the artifact has no model file")
        options = manifest.backend_options
        try:
            interpreter = interpreter_class(
                model_path=str(root / model.path), num_threads=_threads(options.get("num_threads"))
            )
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise CompatibilityError(f"LiteRT cannot load {model.path}: {str(exc).strip()[:300]}") from None
        self._interpreter = interpreter
        self._inputs = interpreter.get_input_details()
        self._outputs = interpreter.get_output_details()
        self._input_layouts = list(options.get("input_layouts") or ["same"] * len(self._inputs))
        self._output_layouts = list(options.get("output_layouts") or ["same"] * len(self._outputs))
        if len(self._inputs) != len(manifest.inputs) or len(self._outputs) != len(manifest.outputs):
            raise IntegrityError(
                f"{model.path} has {len(self._inputs)} input(s) and {len(self._outputs)} output(s); "
                f"the manifest lists {len(manifest.inputs)} and {len(manifest.outputs)}"
            )
        # An int8 tensor behind a float32 manifest output (edgekiln's int8 builds) is
        # dequantized; an int8 source model's own int8 outputs are returned as they are.
        self._dequantize = [spec.dtype.startswith("float") for spec in manifest.outputs]
        # One interpreter owns one set of tensor buffers: calls must not interleave.
        self._lock = threading.Lock()

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            for detail, array, layout in zip(self._inputs, inputs, self._input_layouts):
                # Convert first, transpose second: an int8 tensor is a quarter of the bytes to move.
                tensor = _to_tensor(array, detail)
                if layout == "NHWC":
                    tensor = tensor.transpose(0, 2, 3, 1)
                self._interpreter.set_tensor(detail["index"], np.ascontiguousarray(tensor))
            self._interpreter.invoke()
            results = []
            for detail, layout, dequantize in zip(self._outputs, self._output_layouts, self._dequantize):
                out = self._interpreter.get_tensor(detail["index"])
                if dequantize:
                    out = _from_tensor(out, detail)
                if layout == "NHWC":
                    out = out.transpose(0, 3, 1, 2)
                results.append(np.ascontiguousarray(out))
            return results


def _to_tensor(array: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if dtype == np.int8 and array.dtype != np.int8:
        scale, zero = detail["quantization"]
        # In place, in float32: this runs on every inference, and a 224x224 image costs 0.1 ms
        # this way against 0.6 ms with temporaries.  Ties round to even, where TFLite's QUANTIZE
        # rounds away from zero: one step apart, on exact .5 ties only.
        q = np.multiply(array, np.float32(1.0 / scale), dtype=np.float32)
        np.rint(q, out=q)
        q += np.float32(zero)
        np.clip(q, -128, 127, out=q)
        return q.astype(np.int8)
    return np.asarray(array, dtype=dtype)


def _from_tensor(array: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    if np.dtype(detail["dtype"]) == np.int8:
        scale, zero = detail["quantization"]
        return ((array.astype(np.float32) - np.float32(zero)) * np.float32(scale)).astype(np.float32)
    # get_tensor already returns a copy, so the next invoke cannot change it.
    return array
