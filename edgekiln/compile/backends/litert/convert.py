"""ONNX → TFLite operators, without TensorFlow.

The converter walks the ONNX graph once, in its (topological) order, and emits TFLite
builtin operators into a :class:`Graph`:

- 4-D activations are NHWC inside the model (TFLite's and XNNPACK's native layout); each
  value remembers whether it holds the source's NCHW tensor transposed (``nhwc``) or the
  source's tensor as it is (``plain``), and operators that care about the axis order
  (Flatten, Reshape, Transpose, Concat, reductions) convert between the two explicitly.
- Weights are rewritten once at conversion time: OIHW → OHWI for convolutions, → 1HWO for
  depthwise ones, Gemm's B → (out, in) for FULLY_CONNECTED.
- BatchNormalization after a convolution or a fully connected layer is folded into its
  weights and bias; Relu / Clip(0, 6) / Clip(-1, 1) after an operator that has a fused
  activation becomes that activation.  Both only when nothing else reads the intermediate
  value.
- ONNX's explicit padding becomes TFLite's SAME or VALID when they agree, else an explicit
  PAD (PADV2 with the lowest float for MaxPool) before a VALID operator: TFLite's SAME puts
  the odd pixel at the bottom/right, ONNX's symmetric pads put it on both sides, so
  stride-2 layers would silently shift by one pixel.
- Nodes whose inputs are all known at conversion time (shape arithmetic, ``Shape`` of a
  fixed-shape tensor, constants) are evaluated with ONNX's reference implementation and
  become constants.

Anything else raises BackendError naming every unsupported operator and its node.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from edgekiln.compile.backends.litert.graph import Graph, Op
from edgekiln.errors import BackendError

# ONNX operators the converter emits TFLite operators for (when their inputs are not all
# constant; constant subgraphs of any standard operator are folded instead).
SUPPORTED_OPS = frozenset({
    "Add", "AveragePool", "BatchNormalization", "Clip", "Concat", "Conv", "Div", "Dropout", "Flatten", "Gemm",
    "GlobalAveragePool", "HardSigmoid", "HardSwish", "Identity", "LeakyRelu", "MatMul", "MaxPool", "Mul", "Pad",
    "ReduceMean", "Relu", "Reshape", "Sigmoid", "Softmax", "Squeeze", "Sub", "Tanh", "Transpose", "Unsqueeze",
})
# Operators that TFLite can fuse an activation (RELU, RELU6, RELU_N1_TO_1) into.
_FUSABLE = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "SUB", "MUL"})
# NCHW axis → NHWC axis, and the inverse.
_TO_NHWC_AXIS = {0: 0, 1: 3, 2: 1, 3: 2}
_NCHW_TO_NHWC = (0, 2, 3, 1)
_NHWC_TO_NCHW = (0, 3, 1, 2)
_LOWEST = float(np.finfo(np.float32).min)


@dataclass
class _Value:
    """An ONNX value in the TFLite graph: a tensor and how its axes relate to ONNX's."""

    tensor: str
    layout: str  # "nhwc": ONNX NCHW value stored transposed; "plain": ONNX axis order
    shape: tuple[int, ...]  # the ONNX shape


class _Unsupported(Exception):
    """A node the converter cannot express; turned into one BackendError for the model."""


def convert(model: Any, source_ref: str = "the model") -> Graph:
    """Convert an ONNX ModelProto with fixed input shapes into an fp32 TFLite :class:`Graph`."""
    model = fold_constants(model, source_ref)
    converter = _Converter(model, source_ref)
    converter.check_supported()
    return converter.run()


def fold_constants(model: Any, source_ref: str = "the model") -> Any:
    """``model`` with every node whose result is known at conversion time replaced by an
    initializer, and shapes inferred again: shape arithmetic (``Shape`` → ``Gather`` →
    ``Concat`` → ``Reshape``, as torch.onnx exports ``x.view(n, -1)``) leaves fixed shapes
    that shape inference alone cannot see through."""
    import onnx
    from onnx import helper, numpy_helper

    for _ in range(8):  # each round can expose Shape nodes of newly inferred tensors
        try:
            model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        except Exception as exc:  # onnx raises several types; all mean "cannot infer shapes"
            raise BackendError(f"cannot infer the tensor shapes of {source_ref}: {str(exc).strip()[:300]}") from None
        g = model.graph
        shapes = _shapes(model)
        consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        kept, folded = [], False
        for index, node in enumerate(g.node):
            if _foldable(node, consts, shapes):
                try:
                    consts.update(_evaluate(node, consts, shapes, model))
                except _Unsupported as exc:
                    raise BackendError(f"the litert backend cannot convert {node.op_type} (node "
                                       f"{node.name or f'#{index}'!r}) of {source_ref}: {exc}") from None
                folded = True
            else:
                kept.append(node)
        if not folded:
            return model
        used = {i for n in kept for i in n.input} | {o.name for o in g.output}
        initializers = [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items() if k in used]
        inputs = [i for i in g.input if i.name not in consts]
        graph = helper.make_graph(kept, g.name, inputs, list(g.output), initializer=initializers)
        new = helper.make_model(graph, opset_imports=list(model.opset_import))
        new.ir_version = model.ir_version
        model = new
    return model


def _shapes(model: Any) -> dict[str, tuple[int, ...]]:
    g = model.graph
    shapes: dict[str, tuple[int, ...]] = {}
    for info in [*g.input, *g.value_info, *g.output]:
        ttype = info.type.tensor_type
        if ttype.HasField("shape"):
            shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in ttype.shape.dim)
    return shapes


def _foldable(node: Any, consts: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> bool:
    if node.domain not in ("", "ai.onnx"):
        return False
    if node.op_type == "Constant":
        return True
    if node.op_type in ("Shape", "Size"):
        shape = shapes.get(node.input[0])
        return shape is not None and all(d >= 0 for d in shape)
    inputs = [i for i in node.input if i]
    return bool(inputs) and all(i in consts for i in inputs)


def _evaluate(node: Any, consts: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]],
              model: Any) -> dict[str, np.ndarray]:
    if node.op_type in ("Shape", "Size"):
        shape = shapes[node.input[0]]
        if node.op_type == "Size":
            return {node.output[0]: np.array(math.prod(shape), np.int64)}
        start, end = _attr(node, "start", 0), _attr(node, "end", None)
        return {node.output[0]: np.array(shape[slice(start, end)], np.int64)}
    if node.op_type == "Constant":
        from onnx import numpy_helper

        for attribute in node.attribute:
            if attribute.name == "value":
                return {node.output[0]: numpy_helper.to_array(attribute.t)}
        raise _Unsupported("only Constant nodes with a tensor 'value' are supported")
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    inputs = [i for i in node.input if i]
    outputs = [o for o in node.output if o]
    sub = helper.make_model(
        helper.make_graph([node], "fold", [helper.make_tensor_value_info(i, 0, None) for i in inputs],
                          [helper.make_tensor_value_info(o, 0, None) for o in outputs]),
        opset_imports=list(model.opset_import),
    )
    try:
        results = ReferenceEvaluator(sub).run(None, {i: consts[i] for i in inputs})
    except Exception as exc:  # the reference evaluator raises whatever the operator raises
        raise _Unsupported(f"cannot evaluate it on constant inputs: {str(exc).strip()[:200]}") from None
    return {o: np.asarray(r) for o, r in zip(outputs, results)}


class _Converter:
    def __init__(self, model: Any, source_ref: str) -> None:
        from onnx import numpy_helper

        self.model = model
        self.ref = source_ref
        self.graph = Graph()
        g = model.graph
        self.shapes = _shapes(model)
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        self.values: dict[str, _Value] = {}
        # How many readers each ONNX value has (nodes and graph outputs): fusing into a
        # producer is only allowed when the fused-away value has exactly one reader.
        self.readers: Counter[str] = Counter(i for n in g.node for i in n.input if i)
        self.readers.update(o.name for o in g.output)
        self.tensor_readers: Counter[str] = Counter()
        self.opset = next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)

    # -- checks ----------------------------------------------------------------------------

    def check_supported(self) -> None:
        """Raise one BackendError naming every node the converter has no operator for."""
        bad = []
        for index, node in enumerate(self.model.graph.node):
            if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED_OPS:
                domain = f"{node.domain}." if node.domain not in ("", "ai.onnx") else ""
                bad.append(f"{domain}{node.op_type} (node {node.name or f'#{index}'!r})")
        if bad:
            raise BackendError(
                f"the litert backend does not support {len(bad)} operator(s) of {self.ref}: "
                + ", ".join(bad[:10]) + (" …" if len(bad) > 10 else "")
            )

    # -- driver ----------------------------------------------------------------------------

    def run(self) -> Graph:
        g = self.model.graph
        initializers = set(self.consts)
        for info in g.input:
            if info.name in initializers:
                continue
            self._graph_input(info)
        for index, node in enumerate(g.node):
            name = node.name or f"#{index}"
            try:
                handler: Callable[[Any, str], None] = getattr(self, f"_op_{node.op_type}")
                handler(node, name)
            except _Unsupported as exc:
                raise BackendError(f"the litert backend cannot convert {node.op_type} (node {name!r}) "
                                   f"of {self.ref}: {exc}") from None
        for info in g.output:
            self._graph_output(info.name)
        self._drop_dead_ops()
        return self.graph

    def _graph_input(self, info: Any) -> None:
        from onnx import TensorProto

        shape = self.shapes.get(info.name)
        if info.type.tensor_type.elem_type != TensorProto.FLOAT:
            raise BackendError(f"the litert backend supports float32 model inputs; input {info.name!r} of "
                               f"{self.ref} is not float32")
        if shape is None or any(d <= 0 for d in shape):
            raise BackendError(f"input {info.name!r} of {self.ref} has no fixed shape")
        if len(shape) == 4:
            tensor = self.graph.activation(info.name, _nhwc(shape))
            self.values[info.name] = _Value(tensor, "nhwc", shape)
            self.graph.input_layouts.append("NHWC")
        else:
            tensor = self.graph.activation(info.name, shape)
            self.values[info.name] = _Value(tensor, "plain", shape)
            self.graph.input_layouts.append("same")
        self.tensor_readers[tensor] += self.readers[info.name]
        self.graph.inputs.append(tensor)

    def _graph_output(self, name: str) -> None:
        if name in self.consts:
            raise BackendError(f"output {name!r} of {self.ref} is a constant; "
                               "the litert backend needs computed outputs")
        value = self.values[name]
        if value.tensor in self.graph.inputs or value.tensor in self.graph.outputs:
            # A graph input passed through, or one tensor named twice: TFLite wants each output
            # produced by an operator, so give it its own copy.
            value = self._reshape_to(value, value.shape, f"{name}/copy", node=name)
        self.graph.outputs.append(value.tensor)
        self.graph.output_layouts.append("NHWC" if value.layout == "nhwc" else "same")

    def _drop_dead_ops(self) -> None:
        live = set(self.graph.outputs)
        kept: list[Op] = []
        for op in reversed(self.graph.ops):
            if any(o in live for o in op.outputs):
                kept.append(op)
                live.update(i for i in op.inputs if i is not None)
        self.graph.ops = kept[::-1]

    # -- helpers ---------------------------------------------------------------------------

    def _out_shape(self, node: Any, index: int = 0) -> tuple[int, ...]:
        shape = self.shapes.get(node.output[index])
        if shape is None or any(d < 0 for d in shape):
            raise _Unsupported(f"the shape of its output {node.output[index]!r} is not known")
        return shape

    def _value(self, name: str) -> _Value:
        if name not in self.values:
            raise _Unsupported(f"input {name!r} must be computed, not a constant")
        return self.values[name]

    def _const(self, name: str, what: str) -> np.ndarray:
        if name not in self.consts:
            raise _Unsupported(f"{what} ({name!r}) must be a constant")
        return self.consts[name]

    def _emit(self, kind: str, inputs: list[str | None], out_name: str, out_shape: tuple[int, ...], layout: str,
              node: str, **options: Any) -> _Value:
        """Append an operator producing the ONNX value ``out_name`` (``out_shape`` is ONNX's)."""
        stored = _nhwc(out_shape) if layout == "nhwc" else out_shape
        tensor = self.graph.activation(out_name, stored)
        self.graph.ops.append(Op(kind, inputs, [tensor], dict(options), node))
        value = _Value(tensor, layout, out_shape)
        self.values[out_name] = value
        self.tensor_readers[tensor] += self.readers[out_name]
        return value

    def _intermediate(self, kind: str, inputs: list[str | None], base: str, stored_shape: tuple[int, ...],
                      node: str, **options: Any) -> str:
        """Append an operator whose output is not an ONNX value (a pad, a transpose)."""
        tensor = self.graph.activation(base, stored_shape)
        self.graph.ops.append(Op(kind, inputs, [tensor], dict(options), node))
        return tensor

    def _alias(self, out_name: str, value: _Value) -> None:
        self.values[out_name] = value
        # One read of the value is this alias itself; its readers take over.
        self.tensor_readers[value.tensor] += self.readers[out_name] - 1

    def _fusable_producer(self, value: _Value) -> Op | None:
        """The operator producing ``value`` when its result may be rewritten in place."""
        if self.tensor_readers[value.tensor] != 1 or value.tensor in self.graph.outputs:
            return None
        for op in reversed(self.graph.ops):
            if value.tensor in op.outputs:
                return op
        return None

    def _rename_output(self, op: Op, value: _Value, out_name: str) -> None:
        old = self.graph.tensors.pop(value.tensor)
        old.name = self.graph.unique(out_name)
        self.graph.add(old)
        op.outputs[0] = old.name
        self.tensor_readers.pop(value.tensor, None)
        self.values[out_name] = _Value(old.name, value.layout, value.shape)
        self.tensor_readers[old.name] += self.readers[out_name]

    def _activation(self, node: Any, name: str, act: str) -> None:
        x = self._value(node.input[0])
        producer = self._fusable_producer(x)
        if producer is not None and producer.kind in _FUSABLE and producer.options.get("activation", "NONE") == "NONE":
            producer.options["activation"] = act
            self._rename_output(producer, x, node.output[0])
            return
        self._emit(act, [x.tensor], node.output[0], x.shape, x.layout, name)

    def _operand(self, name: str, other: _Value | None, node: str) -> tuple[str, str]:
        """A tensor for a binary operand and its layout; constants follow the other operand."""
        if name in self.values:
            v = self.values[name]
            return v.tensor, v.layout
        data = self.consts[name].astype(np.float32)
        if other is not None and other.layout == "nhwc":
            if data.ndim > 4:
                raise _Unsupported(f"constant {name!r} has rank {data.ndim} > 4")
            data = data.reshape((1,) * (4 - data.ndim) + data.shape).transpose(_NCHW_TO_NHWC)
            # A constant broadcast over the batch keeps its leading 1s out of the way.
            return self.graph.const(f"{node}/{_short(name)}", np.ascontiguousarray(data)), "nhwc"
        return self.graph.const(f"{node}/{_short(name)}", data), "plain"

    def _to_plain(self, value: _Value, node: str) -> str:
        """A tensor holding ``value`` in ONNX axis order."""
        if value.layout == "plain":
            return value.tensor
        if _same_order(value.shape, _NCHW_TO_NHWC):
            return self._intermediate("RESHAPE", [value.tensor, self._shape_const(value.shape, node)],
                                      f"{value.tensor}/nchw", value.shape, node, new_shape=value.shape)
        perm = self.graph.const(f"{node}/perm_nchw", np.array(_NHWC_TO_NCHW, np.int32))
        return self._intermediate("TRANSPOSE", [value.tensor, perm], f"{value.tensor}/nchw", value.shape, node)

    def _shape_const(self, shape: tuple[int, ...], node: str) -> str:
        return self.graph.const(f"{node}/shape", np.array(shape, np.int32))

    def _reshape_to(self, value: _Value, shape: tuple[int, ...], out_name: str, node: str) -> _Value:
        """``value`` reshaped to the ONNX shape ``shape`` (NHWC inside when 4-D)."""
        if value.layout == "nhwc" and len(shape) == 4 and shape == value.shape:
            return self._emit("RESHAPE", [value.tensor, self._shape_const(_nhwc(shape), node)], out_name, shape,
                              "nhwc", node, new_shape=_nhwc(shape))
        plain = self._to_plain(value, node)
        if len(shape) != 4:
            return self._emit("RESHAPE", [plain, self._shape_const(shape, node)], out_name, shape, "plain", node,
                              new_shape=shape)
        if _same_order(shape, _NCHW_TO_NHWC):
            return self._emit("RESHAPE", [plain, self._shape_const(_nhwc(shape), node)], out_name, shape, "nhwc",
                              node, new_shape=_nhwc(shape))
        reshaped = plain
        if tuple(self.graph.tensors[plain].shape) != shape:
            reshaped = self._intermediate("RESHAPE", [plain, self._shape_const(shape, node)], f"{out_name}/nchw",
                                          shape, node, new_shape=shape)
        perm = self.graph.const(f"{node}/perm_nhwc", np.array(_NCHW_TO_NHWC, np.int32))
        return self._emit("TRANSPOSE", [reshaped, perm], out_name, shape, "nhwc", node)

    def _padding(self, node: Any, in_hw: tuple[int, int], kernel: tuple[int, int], strides: tuple[int, int],
                 dilations: tuple[int, int]) -> tuple[str, tuple[int, int, int, int] | None]:
        """TFLite padding for ONNX pads: ("SAME"|"VALID", None) or ("VALID", explicit t, l, b, r)."""
        auto_pad = _attr(node, "auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        effective = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
        same = []
        for size, k, s in zip(in_hw, effective, strides):
            out = -(-size // s)
            total = max((out - 1) * s + k - size, 0)
            same.append((total // 2, total - total // 2))
        if auto_pad == "VALID":
            return "VALID", None
        if auto_pad == "SAME_UPPER":
            return "SAME", None
        if auto_pad == "SAME_LOWER":
            # SAME_LOWER puts the odd pixel first, TFLite's SAME last.
            (bottom, top), (right, left) = same
            if (top, bottom) == same[0] and (left, right) == same[1]:
                return "SAME", None
            return "VALID", (top, left, bottom, right)
        pads = tuple(_attr(node, "pads", [0, 0, 0, 0]))
        if len(pads) != 4:
            raise _Unsupported(f"pads {list(pads)} are not 2-D")
        top, left, bottom, right = pads
        if pads == (0, 0, 0, 0):
            return "VALID", None
        if ((top, bottom), (left, right)) == (same[0], same[1]):
            return "SAME", None
        return "VALID", (top, left, bottom, right)

    def _pad(self, x: _Value, pads: tuple[int, int, int, int], node: str, value: float = 0.0) -> str:
        top, left, bottom, right = pads
        paddings = self.graph.const(f"{node}/paddings",
                                    np.array([[0, 0], [top, bottom], [left, right], [0, 0]], np.int32))
        n, h, w, c = self.graph.tensors[x.tensor].shape
        shape = (n, h + top + bottom, w + left + right, c)
        if value == 0.0:
            return self._intermediate("PAD", [x.tensor, paddings], f"{x.tensor}/pad", shape, node)
        fill = self.graph.const(f"{node}/pad_value", np.array(value, np.float32))
        return self._intermediate("PADV2", [x.tensor, paddings, fill], f"{x.tensor}/pad", shape, node)

    def _nhwc_input(self, node: Any, what: str = "its input") -> _Value:
        x = self._value(node.input[0])
        if x.layout != "nhwc":
            raise _Unsupported(f"{what} must be a 4-D (NCHW) tensor, got shape {list(x.shape)}")
        return x

    # -- operators -------------------------------------------------------------------------

    def _op_Conv(self, node: Any, name: str) -> None:
        x = self._nhwc_input(node, "only 2-D convolutions are supported; the input")
        w = self._const(node.input[1], "the weight").astype(np.float32)
        bias = (self._const(node.input[2], "the bias").astype(np.float32)
                if len(node.input) > 2 and node.input[2] else np.zeros(w.shape[0], np.float32))
        group = int(_attr(node, "group", 1))
        strides = tuple(_attr(node, "strides", [1, 1]))
        dilations = tuple(_attr(node, "dilations", [1, 1]))
        kernel = tuple(w.shape[2:])
        cin = x.shape[1]
        padding, explicit = self._padding(node, x.shape[2:], kernel, strides, dilations)
        source = self._pad(x, explicit, name) if explicit else x.tensor
        out_shape = self._out_shape(node)
        common = dict(padding=padding, stride=strides, dilation=dilations, activation="NONE")
        if group == 1:
            weights = self.graph.const(f"{name}/weights", np.ascontiguousarray(w.transpose(0, 2, 3, 1)))
            kind = "CONV_2D"
        elif group == cin and w.shape[1] == 1:
            weights = self.graph.const(f"{name}/weights", np.ascontiguousarray(w.transpose(1, 2, 3, 0)))
            kind = "DEPTHWISE_CONV_2D"
            common["depth_multiplier"] = w.shape[0] // cin
        else:
            raise _Unsupported(f"grouped convolution (group={group}, {cin} input channels) is not supported")
        b = self.graph.const(f"{name}/bias", bias)
        self._emit(kind, [source, weights, b], node.output[0], out_shape, "nhwc", name, **common)

    def _op_BatchNormalization(self, node: Any, name: str) -> None:
        if len([o for o in node.output if o]) > 1 or _attr(node, "training_mode", 0):
            raise _Unsupported("only inference-mode BatchNormalization is supported")
        x = self._value(node.input[0])
        gamma, beta, mean, var = (self._const(node.input[i], "a BatchNormalization parameter").astype(np.float64)
                                  for i in range(1, 5))
        eps = float(_attr(node, "epsilon", 1e-5))
        scale = gamma / np.sqrt(var + eps)
        shift = beta - mean * scale
        producer = self._fusable_producer(x)
        if producer is not None and producer.kind in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") \
                and producer.options.get("activation", "NONE") == "NONE":
            weights = self.graph.tensors[producer.inputs[1]]
            bias = self.graph.tensors[producer.inputs[2]]
            axis = 3 if producer.kind == "DEPTHWISE_CONV_2D" else 0
            shape = [1] * weights.data.ndim
            shape[axis] = -1
            # Fold in float64, then round once: keeps the folded weights within an ulp.
            weights.data = (weights.data.astype(np.float64) * scale.reshape(shape)).astype(np.float32)
            bias.data = (bias.data.astype(np.float64) * scale + shift).astype(np.float32)
            self._rename_output(producer, x, node.output[0])
            return
        channel_shape = (-1,) if x.layout == "nhwc" or len(x.shape) == 2 else (-1,) + (1,) * (len(x.shape) - 2)
        s = self.graph.const(f"{name}/scale", scale.astype(np.float32).reshape(channel_shape))
        t = self.graph.const(f"{name}/shift", shift.astype(np.float32).reshape(channel_shape))
        scaled = self._intermediate("MUL", [x.tensor, s], f"{node.output[0]}/scaled",
                                    self.graph.tensors[x.tensor].shape, name, activation="NONE")
        self._emit("ADD", [scaled, t], node.output[0], x.shape, x.layout, name, activation="NONE")

    def _op_Relu(self, node: Any, name: str) -> None:
        self._activation(node, name, "RELU")

    def _op_Clip(self, node: Any, name: str) -> None:
        if self.opset < 11:
            lo, hi = _attr(node, "min", -math.inf), _attr(node, "max", math.inf)
        else:
            lo_name, hi_name = _optional_input(node, 1), _optional_input(node, 2)
            lo = _scalar(self._const(lo_name, "the minimum")) if lo_name else -math.inf
            hi = _scalar(self._const(hi_name, "the maximum")) if hi_name else math.inf
        if (lo, hi) == (0.0, 6.0):
            return self._activation(node, name, "RELU6")
        if (lo, hi) == (0.0, math.inf):
            return self._activation(node, name, "RELU")
        if (lo, hi) == (-1.0, 1.0):
            return self._activation(node, name, "RELU_N1_TO_1")
        x = self._value(node.input[0])
        current = x.tensor
        stored = self.graph.tensors[x.tensor].shape
        steps = [(k, v) for k, v in (("MAXIMUM", lo), ("MINIMUM", hi)) if math.isfinite(v)]
        if not steps:
            return self._alias(node.output[0], x)
        for i, (kind, bound) in enumerate(steps):
            c = self.graph.const(f"{name}/{kind.lower()}", np.array(bound, np.float32))
            if i == len(steps) - 1:
                self._emit(kind, [current, c], node.output[0], x.shape, x.layout, name)
            else:
                current = self._intermediate(kind, [current, c], f"{node.output[0]}/{kind.lower()}", stored, name)

    def _op_LeakyRelu(self, node: Any, name: str) -> None:
        x = self._value(node.input[0])
        self._emit("LEAKY_RELU", [x.tensor], node.output[0], x.shape, x.layout, name,
                   alpha=float(_attr(node, "alpha", 0.01)))

    def _op_HardSwish(self, node: Any, name: str) -> None:
        x = self._value(node.input[0])
        self._emit("HARD_SWISH", [x.tensor], node.output[0], x.shape, x.layout, name)

    def _op_HardSigmoid(self, node: Any, name: str) -> None:
        # TFLite has no HardSigmoid: clamp(a*x + b, 0, 1) = relu6(6a*x + 6b) / 6, which maps
        # onto operators every delegate and the int8 kernels have.  For torch's hardsigmoid
        # (a = 1/6, b = 1/2) it is relu6(x + 3) / 6 exactly.
        x = self._value(node.input[0])
        alpha, beta = float(_attr(node, "alpha", 0.2)), float(_attr(node, "beta", 0.5))
        stored = self.graph.tensors[x.tensor].shape
        current = x.tensor
        if not math.isclose(6 * alpha, 1.0, rel_tol=1e-6):
            a = self.graph.const(f"{name}/six_alpha", np.array(6 * alpha, np.float32))
            current = self._intermediate("MUL", [current, a], f"{node.output[0]}/scaled", stored, name,
                                         activation="NONE")
        b = self.graph.const(f"{name}/six_beta", np.array(6 * beta, np.float32))
        current = self._intermediate("ADD", [current, b], f"{node.output[0]}/relu6", stored, name, activation="RELU6")
        sixth = self.graph.const(f"{name}/one_sixth", np.array(1.0 / 6.0, np.float32))
        self._emit("MUL", [current, sixth], node.output[0], x.shape, x.layout, name, activation="NONE")

    def _op_Sigmoid(self, node: Any, name: str) -> None:
        x = self._value(node.input[0])
        self._emit("LOGISTIC", [x.tensor], node.output[0], x.shape, x.layout, name)

    def _op_Tanh(self, node: Any, name: str) -> None:
        x = self._value(node.input[0])
        self._emit("TANH", [x.tensor], node.output[0], x.shape, x.layout, name)

    def _binary(self, node: Any, name: str, kind: str) -> None:
        a_name, b_name = node.input[0], node.input[1]
        a = self.values.get(a_name)
        b = self.values.get(b_name)
        if a is not None and b is not None and a.layout != b.layout:
            if len(a.shape) == len(b.shape):
                raise _Unsupported("mixing 4-D and other tensors of the same rank")
            # Broadcasting a lower-rank computed tensor against an NHWC one changes its axes.
            raise _Unsupported(f"broadcasting a computed {len(b.shape if a.layout == 'nhwc' else a.shape)}-D "
                               "tensor against a 4-D one")
        anchor = a if a is not None else b
        if kind == "SUB" and b is None:
            # x - c = x + (-c): ADD has the widest support (fused activations, int8 in every delegate).
            kind, b_data = "ADD", -self.consts[b_name].astype(np.float32)
            self.consts[f"{b_name}/neg"] = b_data
            b_name = f"{b_name}/neg"
        if kind == "DIV" and b is None:
            kind, b_data = "MUL", (1.0 / self.consts[b_name].astype(np.float64)).astype(np.float32)
            self.consts[f"{b_name}/recip"] = b_data
            b_name = f"{b_name}/recip"
        ta, _ = self._operand(a_name, anchor, name)
        tb, _ = self._operand(b_name, anchor, name)
        self._emit(kind, [ta, tb], node.output[0], self._out_shape(node), anchor.layout, name, activation="NONE")

    def _op_Add(self, node: Any, name: str) -> None:
        self._binary(node, name, "ADD")

    def _op_Sub(self, node: Any, name: str) -> None:
        self._binary(node, name, "SUB")

    def _op_Mul(self, node: Any, name: str) -> None:
        self._binary(node, name, "MUL")

    def _op_Div(self, node: Any, name: str) -> None:
        self._binary(node, name, "DIV")

    def _op_GlobalAveragePool(self, node: Any, name: str) -> None:
        x = self._nhwc_input(node)
        axes = self.graph.const(f"{name}/axes", np.array([1, 2], np.int32))
        self._emit("MEAN", [x.tensor, axes], node.output[0], self._out_shape(node), "nhwc", name, keep_dims=True)

    def _op_ReduceMean(self, node: Any, name: str) -> None:
        x = self._value(node.input[0])
        rank = len(x.shape)
        if self.opset >= 18 and len(node.input) > 1 and node.input[1]:
            axes = [int(a) for a in self._const(node.input[1], "the axes").reshape(-1)]
        else:
            axes = list(_attr(node, "axes", list(range(rank))))
        axes = sorted(a % rank for a in axes)
        keep = bool(_attr(node, "keepdims", 1))
        out_shape = self._out_shape(node)
        if x.layout == "nhwc":
            mapped = sorted(_TO_NHWC_AXIS[a] for a in axes)
            remaining = [_TO_NHWC_AXIS[a] for a in range(4) if a not in axes]
            if not keep and remaining != sorted(remaining):
                raise _Unsupported(f"reducing axes {axes} without keepdims reorders the remaining axes")
            layout = "nhwc" if keep else "plain"
        else:
            mapped, layout = axes, "plain"
        t_axes = self.graph.const(f"{name}/axes", np.array(mapped, np.int32))
        self._emit("MEAN", [x.tensor, t_axes], node.output[0], out_shape, layout, name, keep_dims=keep)

    def _fully_connected(self, node: Any, name: str, x: _Value, weights: np.ndarray, bias: np.ndarray) -> None:
        if x.layout != "plain" or len(x.shape) != 2:
            raise _Unsupported(f"the input must be a 2-D tensor, got shape {list(x.shape)}")
        w = self.graph.const(f"{name}/weights", np.ascontiguousarray(weights.astype(np.float32)))
        b = self.graph.const(f"{name}/bias", np.ascontiguousarray(bias.astype(np.float32)))
        self._emit("FULLY_CONNECTED", [x.tensor, w, b], node.output[0], self._out_shape(node), "plain", name,
                   activation="NONE", keep_num_dims=False)

    def _op_Gemm(self, node: Any, name: str) -> None:
        if _attr(node, "transA", 0):
            raise _Unsupported("transA=1 is not supported")
        x = self._value(node.input[0])
        b = self._const(node.input[1], "B").astype(np.float64)
        alpha, beta = float(_attr(node, "alpha", 1.0)), float(_attr(node, "beta", 1.0))
        weights = (b if _attr(node, "transB", 0) else b.T) * alpha
        n = weights.shape[0]
        bias = np.zeros(n)
        if len(node.input) > 2 and node.input[2]:
            c = self._const(node.input[2], "C").astype(np.float64)
            if c.size not in (1, n) or (c.ndim == 2 and c.shape[0] != 1):
                raise _Unsupported(f"C of shape {list(c.shape)} is not a per-output bias")
            bias = np.broadcast_to(c.reshape(-1), (n,)) * beta
        self._fully_connected(node, name, x, weights, bias)

    def _op_MatMul(self, node: Any, name: str) -> None:
        x = self._value(node.input[0])
        b = self._const(node.input[1], "the second input")
        if b.ndim != 2:
            raise _Unsupported(f"the second input must be a 2-D constant, got shape {list(b.shape)}")
        self._fully_connected(node, name, x, b.T, np.zeros(b.shape[1]))

    def _op_Flatten(self, node: Any, name: str) -> None:
        self._reshape_to(self._value(node.input[0]), self._out_shape(node), node.output[0], name)

    _op_Reshape = _op_Flatten
    _op_Squeeze = _op_Flatten
    _op_Unsqueeze = _op_Flatten

    def _op_Identity(self, node: Any, name: str) -> None:
        self._alias(node.output[0], self._value(node.input[0]))

    def _op_Dropout(self, node: Any, name: str) -> None:
        if len(node.output) > 1 and node.output[1] and self.readers[node.output[1]]:
            raise _Unsupported("its mask output is used")
        self._alias(node.output[0], self._value(node.input[0]))

    def _pool(self, node: Any, name: str, kind: str) -> None:
        x = self._nhwc_input(node, "only 2-D pooling is supported; the input")
        kernel = tuple(_attr(node, "kernel_shape", []))
        strides = tuple(_attr(node, "strides", [1, 1]))
        dilations = tuple(_attr(node, "dilations", [1, 1]))
        if len(kernel) != 2 or dilations != (1, 1):
            raise _Unsupported("only 2-D pooling without dilation is supported")
        padding, explicit = self._padding(node, x.shape[2:], kernel, strides, dilations)
        out_shape = self._out_shape(node)
        source = x.tensor
        if explicit:
            if kind == "MAX_POOL_2D":
                # After a ReLU the window's maximum is >= 0 and every window holds a real pixel
                # (ONNX pads are smaller than the kernel), so zero padding gives the same result
                # as -inf padding, and PAD runs inside XNNPACK where PADV2 does not.
                fill = 0.0 if self._non_negative(x) else _LOWEST
                source = self._pad(x, explicit, name, value=fill)
            elif _attr(node, "count_include_pad", 0):
                source = self._pad(x, explicit, name)
            else:
                raise _Unsupported("average pooling with padding that TFLite's SAME does not reproduce, "
                                   "without count_include_pad")
        elif padding == "SAME" and kind == "AVERAGE_POOL_2D" and _attr(node, "count_include_pad", 0):
            source = self._pad(x, self._same_pads(x, kernel, strides), name)
            padding = "VALID"
        stored = self.graph.tensors[source].shape
        got = tuple(_pool_out(stored[1:3], kernel, strides, padding))
        if got != tuple(out_shape[2:]):
            raise _Unsupported(f"ceil_mode gives an output of {list(out_shape[2:])} that TFLite cannot produce")
        self._emit(kind, [source], node.output[0], out_shape, "nhwc", name, padding=padding, stride=strides,
                   filter=kernel, activation="NONE")

    def _non_negative(self, value: _Value) -> bool:
        for op in reversed(self.graph.ops):
            if value.tensor in op.outputs:
                return op.kind in ("RELU", "RELU6") or op.options.get("activation") in ("RELU", "RELU6")
        return False

    def _same_pads(self, x: _Value, kernel: tuple[int, ...], strides: tuple[int, ...]) -> tuple[int, int, int, int]:
        pads = []
        for size, k, s in zip(x.shape[2:], kernel, strides):
            out = -(-size // s)
            total = max((out - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        return pads[0][0], pads[1][0], pads[0][1], pads[1][1]

    def _op_MaxPool(self, node: Any, name: str) -> None:
        if len(node.output) > 1 and node.output[1]:
            raise _Unsupported("the indices output is not supported")
        self._pool(node, name, "MAX_POOL_2D")

    def _op_AveragePool(self, node: Any, name: str) -> None:
        self._pool(node, name, "AVERAGE_POOL_2D")

    def _op_Pad(self, node: Any, name: str) -> None:
        mode = _attr(node, "mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode != "constant":
            raise _Unsupported(f"mode {mode!r} is not supported (only constant)")
        x = self._value(node.input[0])
        rank = len(x.shape)
        if self.opset >= 11:
            pads = [int(p) for p in self._const(node.input[1], "the pads").reshape(-1)]
            value = _scalar(self._const(node.input[2], "the value")) if len(node.input) > 2 and node.input[2] else 0.0
            if len(node.input) > 3 and node.input[3]:
                raise _Unsupported("the axes input is not supported")
        else:
            pads, value = list(_attr(node, "pads", [])), float(_attr(node, "value", 0.0))
        if any(p < 0 for p in pads):
            raise _Unsupported("negative pads (cropping) are not supported")
        pairs = [[pads[i], pads[i + rank]] for i in range(rank)]
        if x.layout == "nhwc":
            pairs = [pairs[a] for a in _NCHW_TO_NHWC]
        paddings = self.graph.const(f"{name}/paddings", np.array(pairs, np.int32))
        if value == 0.0:
            self._emit("PAD", [x.tensor, paddings], node.output[0], self._out_shape(node), x.layout, name)
        else:
            fill = self.graph.const(f"{name}/pad_value", np.array(value, np.float32))
            self._emit("PADV2", [x.tensor, paddings, fill], node.output[0], self._out_shape(node), x.layout, name)

    def _op_Softmax(self, node: Any, name: str) -> None:
        x = self._value(node.input[0])
        rank = len(x.shape)
        axis = int(_attr(node, "axis", -1 if self.opset >= 13 else 1)) % rank
        last = (x.layout == "nhwc" and axis == 1) or (x.layout == "plain" and axis == rank - 1)
        if not last:
            # Before opset 13, Softmax flattened everything from `axis` on; equal only on the last axis.
            raise _Unsupported(f"softmax over axis {axis} of a rank-{rank} tensor (only the channel/last axis)")
        self._emit("SOFTMAX", [x.tensor], node.output[0], x.shape, x.layout, name, beta=1.0)

    def _op_Concat(self, node: Any, name: str) -> None:
        names = [i for i in node.input if i]
        computed = [self.values[i] for i in names if i in self.values]
        anchor = computed[0]
        if any(v.layout != anchor.layout for v in computed):
            raise _Unsupported("mixing 4-D and other tensors")
        axis = int(_attr(node, "axis", 0)) % len(anchor.shape)
        tensors = [self._operand(i, anchor, name)[0] for i in names]
        if anchor.layout == "nhwc":
            axis = _TO_NHWC_AXIS[axis]
        self._emit("CONCATENATION", tensors, node.output[0], self._out_shape(node), anchor.layout, name,
                   axis=axis, activation="NONE")

    def _op_Transpose(self, node: Any, name: str) -> None:
        x = self._value(node.input[0])
        rank = len(x.shape)
        perm = list(_attr(node, "perm", list(range(rank))[::-1]))
        out_shape = self._out_shape(node)
        if x.layout == "nhwc":
            # Position in the stored NHWC tensor of each ONNX (NCHW) axis.
            where = {a: _NCHW_TO_NHWC.index(a) for a in range(4)}
            perm = [where[p] for p in perm]
        layout = "plain"
        if len(out_shape) == 4:
            perm = [perm[a] for a in _NCHW_TO_NHWC]
            layout = "nhwc"
        p = self.graph.const(f"{name}/perm", np.array(perm, np.int32))
        self._emit("TRANSPOSE", [x.tensor, p], node.output[0], out_shape, layout, name)


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            value = helper.get_attribute_value(attribute)
            return list(value) if isinstance(value, (list, tuple)) else value
    return default


def _optional_input(node: Any, index: int) -> str | None:
    return node.input[index] if len(node.input) > index and node.input[index] else None


def _scalar(array: np.ndarray) -> float:
    if array.size != 1:
        raise _Unsupported(f"expected a scalar constant, got shape {list(array.shape)}")
    return float(array.reshape(-1)[0])


def _nhwc(shape: tuple[int, ...]) -> tuple[int, ...]:
    n, c, h, w = shape
    return (n, h, w, c)


def _same_order(shape: tuple[int, ...], perm: tuple[int, ...]) -> bool:
    """Whether transposing ``shape`` by ``perm`` keeps the data order (only size-1 axes move)."""
    return [a for a in range(len(shape)) if shape[a] > 1] == [a for a in perm if shape[a] > 1]


def _pool_out(size: tuple[int, ...], kernel: tuple[int, ...], strides: tuple[int, ...], padding: str) -> list[int]:
    if padding == "SAME":
        return [-(-s // st) for s, st in zip(size, strides)]
    return [(s - k) // st + 1 for s, k, st in zip(size, kernel, strides)]


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1]
