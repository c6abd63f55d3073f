"""The converter's state and the graph-building helpers its operator conversions share:
emitting operators, constants and layouts of values, fusing into a producer, reshapes."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from edgekiln.compile.backends.litert.common import (
    NCHW_TO_NHWC,
    NHWC_TO_NCHW,
    Unsupported,
    Value,
    nhwc,
    same_order,
    short,
)
from edgekiln.compile.backends.litert.graph import Graph, Op
from edgekiln.compile.backends.onnx_fold import known_shapes


class ConverterCore:
    """One ONNX model being converted: its constants, shapes and readers, and the
    :class:`Graph` built so far."""

    def __init__(self, model: Any, source_ref: str) -> None:
        from onnx import numpy_helper

        self.model = model
        self.ref = source_ref
        self.graph = Graph()
        g = model.graph
        self.shapes = known_shapes(model)
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        self.values: dict[str, Value] = {}
        # How many readers each ONNX value has (nodes and graph outputs): fusing into a
        # producer is only allowed when the fused-away value has exactly one reader.
        self.readers: Counter[str] = Counter(i for n in g.node for i in n.input if i)
        self.readers.update(o.name for o in g.output)
        self.tensor_readers: Counter[str] = Counter()
        self.opset = next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)

    def _out_shape(self, node: Any, index: int = 0) -> tuple[int, ...]:
        shape = self.shapes.get(node.output[index])
        if shape is None or any(d < 0 for d in shape):
            raise Unsupported(f"the shape of its output {node.output[index]!r} is not known")
        return shape

    def _value(self, name: str) -> Value:
        if name not in self.values:
            raise Unsupported(f"input {name!r} must be computed, not a constant")
        return self.values[name]

    def _const(self, name: str, what: str) -> np.ndarray:
        if name not in self.consts:
            raise Unsupported(f"{what} ({name!r}) must be a constant")
        return self.consts[name]

    def _emit(
        self,
        kind: str,
        inputs: list[str | None],
        out_name: str,
        out_shape: tuple[int, ...],
        layout: str,
        node: str,
        **options: Any,
    ) -> Value:
        """Append an operator producing the ONNX value ``out_name`` (``out_shape`` is ONNX's)."""
        stored = nhwc(out_shape) if layout == "nhwc" else out_shape
        tensor = self.graph.activation(out_name, stored)
        self.graph.ops.append(Op(kind, inputs, [tensor], dict(options), node))
        value = Value(tensor, layout, out_shape)
        self.values[out_name] = value
        self.tensor_readers[tensor] += self.readers[out_name]
        return value

    def _intermediate(
        self, kind: str, inputs: list[str | None], base: str, stored_shape: tuple[int, ...], node: str, **options: Any
    ) -> str:
        """Append an operator whose output is not an ONNX value (a pad, a transpose)."""
        tensor = self.graph.activation(base, stored_shape)
        self.graph.ops.append(Op(kind, inputs, [tensor], dict(options), node))
        return tensor

    def _alias(self, out_name: str, value: Value) -> None:
        self.values[out_name] = value
        # One read of the value is this alias itself; its readers take over.
        self.tensor_readers[value.tensor] += self.readers[out_name] - 1

    def _fusable_producer(self, value: Value) -> Op | None:
        """The operator producing ``value`` when its result may be rewritten in place."""
        if self.tensor_readers[value.tensor] != 1 or value.tensor in self.graph.outputs:
            return None
        for op in reversed(self.graph.ops):
            if value.tensor in op.outputs:
                return op
        return None

    def _rename_output(self, op: Op, value: Value, out_name: str) -> None:
        old = self.graph.tensors.pop(value.tensor)
        old.name = self.graph.unique(out_name)
        self.graph.add(old)
        op.outputs[0] = old.name
        self.tensor_readers.pop(value.tensor, None)
        self.values[out_name] = Value(old.name, value.layout, value.shape)
        self.tensor_readers[old.name] += self.readers[out_name]

    def _operand(self, name: str, other: Value | None, node: str) -> tuple[str, str]:
        """A tensor for a binary operand and its layout; constants follow the other operand."""
        if name in self.values:
            v = self.values[name]
            return v.tensor, v.layout
        data = self.consts[name].astype(np.float32)
        if other is not None and other.layout == "nhwc":
            if data.ndim > 4:
                raise Unsupported(f"constant {name!r} has rank {data.ndim} > 4")
            data = data.reshape((1,) * (4 - data.ndim) + data.shape).transpose(NCHW_TO_NHWC)
            # A constant broadcast over the batch keeps its leading 1s out of the way.
            return self.graph.const(f"{node}/{short(name)}", np.ascontiguousarray(data)), "nhwc"
        return self.graph.const(f"{node}/{short(name)}", data), "plain"

    def _to_plain(self, value: Value, node: str) -> str:
        """A tensor holding ``value`` in ONNX axis order."""
        if value.layout == "plain":
            return value.tensor
        if same_order(value.shape, NCHW_TO_NHWC):
            return self._intermediate(
                "RESHAPE",
                [value.tensor, self._shape_const(value.shape, node)],
                f"{value.tensor}/nchw",
                value.shape,
                node,
                new_shape=value.shape,
            )
        perm = self.graph.const(f"{node}/perm_nchw", np.array(NHWC_TO_NCHW, np.int32))
        return self._intermediate("TRANSPOSE", [value.tensor, perm], f"{value.tensor}/nchw", value.shape, node)

    def _shape_const(self, shape: tuple[int, ...], node: str) -> str:
        return self.graph.const(f"{node}/shape", np.array(shape, np.int32))

    def _reshape_to(self, value: Value, shape: tuple[int, ...], out_name: str, node: str) -> Value:
        """``value`` reshaped to the ONNX shape ``shape`` (NHWC inside when 4-D)."""
        if value.layout == "nhwc" and len(shape) == 4 and shape == value.shape:
            return self._emit(
                "RESHAPE",
                [value.tensor, self._shape_const(nhwc(shape), node)],
                out_name,
                shape,
                "nhwc",
                node,
                new_shape=nhwc(shape),
            )
        plain = self._to_plain(value, node)
        if len(shape) != 4:
            return self._emit(
                "RESHAPE", [plain, self._shape_const(shape, node)], out_name, shape, "plain", node, new_shape=shape
            )
        if same_order(shape, NCHW_TO_NHWC):
            return self._emit(
                "RESHAPE",
                [plain, self._shape_const(nhwc(shape), node)],
                out_name,
                shape,
                "nhwc",
                node,
                new_shape=nhwc(shape),
            )
        reshaped = plain
        if tuple(self.graph.tensors[plain].shape) != shape:
            reshaped = self._intermediate(
                "RESHAPE", [plain, self._shape_const(shape, node)], f"{out_name}/nchw", shape, node, new_shape=shape
            )
        perm = self.graph.const(f"{node}/perm_nhwc", np.array(NCHW_TO_NHWC, np.int32))
        return self._emit("TRANSPOSE", [reshaped, perm], out_name, shape, "nhwc", node)

    def _nhwc_input(self, node: Any, what: str = "its input") -> Value:
        x = self._value(node.input[0])
        if x.layout != "nhwc":
            raise Unsupported(f"{what} must be a 4-D (NCHW) tensor, got shape {list(x.shape)}")
        return x
