"""The LiteRT backend's intermediate graph: TFLite builtin operators on named tensors.

The ONNX converter (``convert.py``) builds it in fp32 with TFLite's layouts (NHWC
activations, OHWI convolution weights), the quantizer (``quantize.py``) rewrites it to
full-integer int8, and the writer (``writer.py``) serializes it as a ``.tflite`` flatbuffer.
Keeping one plain data structure between the three means each step can be tested alone
and the calibration model is the fp32 model itself, with extra outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class QuantParams:
    """Affine int8 quantization: real = scale * (q - zero_point), per tensor or per channel."""

    scale: np.ndarray  # float32, one value per tensor or per channel along ``axis``
    zero_point: np.ndarray  # int64, same length as ``scale``
    axis: int = 0

    @classmethod
    def per_tensor(cls, scale: float, zero_point: int) -> QuantParams:
        return cls(np.array([scale], np.float32), np.array([zero_point], np.int64))


@dataclass
class Tensor:
    """A tensor of the graph; ``data`` is set for constants (weights, biases, shapes)."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # "float32", "int32", "int8"
    data: np.ndarray | None = None
    quant: QuantParams | None = None

    @property
    def is_const(self) -> bool:
        return self.data is not None


@dataclass
class Op:
    """One TFLite builtin operator.

    ``kind`` is its BuiltinOperator name (CONV_2D, ADD, ...); ``inputs`` may hold None for
    an absent optional input; ``options`` holds the builtin options the writer needs
    (padding, strides, fused activation, ...); ``node`` names the ONNX node it came from,
    for error messages and for the calibration report.
    """

    kind: str
    inputs: list[str | None]
    outputs: list[str]
    options: dict[str, Any] = field(default_factory=dict)
    node: str = ""


@dataclass
class Graph:
    """A single-subgraph TFLite model under construction.

    ``input_layouts``/``output_layouts`` say, per graph input/output, how the tensor relates
    to the source model's tensor of the same position: "NHWC" when it is the source's NCHW
    tensor transposed by (0, 2, 3, 1), "same" when it has the source's shape and layout.
    """

    tensors: dict[str, Tensor] = field(default_factory=dict)
    ops: list[Op] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    input_layouts: list[str] = field(default_factory=list)
    output_layouts: list[str] = field(default_factory=list)

    def add(self, tensor: Tensor) -> str:
        if tensor.name in self.tensors:
            raise ValueError(f"tensor {tensor.name!r} defined twice")
        self.tensors[tensor.name] = tensor
        return tensor.name

    def unique(self, base: str) -> str:
        """A tensor name not used yet, derived from ``base``."""
        if base not in self.tensors:
            return base
        i = 1
        while f"{base}_{i}" in self.tensors:
            i += 1
        return f"{base}_{i}"

    def const(self, base: str, data: np.ndarray) -> str:
        data = np.ascontiguousarray(data)
        dtype = {np.dtype(np.float32): "float32", np.dtype(np.int32): "int32"}.get(data.dtype)
        if dtype is None:
            raise TypeError(f"constant {base!r}: unsupported dtype {data.dtype}")
        return self.add(Tensor(self.unique(base), tuple(data.shape), dtype, data))

    def activation(self, base: str, shape: tuple[int, ...], dtype: str = "float32") -> str:
        return self.add(Tensor(self.unique(base), tuple(int(d) for d in shape), dtype))

    def producers(self) -> dict[str, Op]:
        return {out: op for op in self.ops for out in op.outputs}

    def consumers(self) -> dict[str, list[Op]]:
        found: dict[str, list[Op]] = {}
        for op in self.ops:
            for name in op.inputs:
                if name is not None:
                    found.setdefault(name, []).append(op)
        return found

    def activations(self) -> list[str]:
        """Non-constant tensors that an operator produces, in execution order."""
        return [out for op in self.ops for out in op.outputs]

    def used_tensors(self) -> list[str]:
        """Tensors referenced by the graph's inputs, outputs or operators, first use first."""
        seen: dict[str, None] = {}
        for name in self.inputs:
            seen.setdefault(name, None)
        for op in self.ops:
            for name in [*op.inputs, *op.outputs]:
                if name is not None:
                    seen.setdefault(name, None)
        for name in self.outputs:
            seen.setdefault(name, None)
        return list(seen)
