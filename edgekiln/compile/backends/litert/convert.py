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

- GELU, which torch.onnx writes as ``x * 0.5 * (1 + erf(x / √2))`` before opset 20, is
  found in that formula and becomes TFLite's GELU (:func:`.ops_norm.fuse_gelu`).

Anything else raises BackendError naming every unsupported operator and its node.

The constant folding lives in :mod:`.fold`, the converter's state and graph-building helpers
in :mod:`.core`, and the conversions of the operators in :mod:`.ops_nn` and :mod:`.ops_tensor`.
"""

from __future__ import annotations

from typing import Any, Callable

from edgekiln.compile.backends.litert.common import Unsupported, Value, nhwc
from edgekiln.compile.backends.litert.graph import Graph, Op
from edgekiln.compile.backends.litert.ops_nn import NNOps
from edgekiln.compile.backends.litert.ops_norm import NormOps, fuse_gelu
from edgekiln.compile.backends.litert.ops_tensor import TensorOps
from edgekiln.compile.backends.onnx_fold import fold_constants
from edgekiln.errors import BackendError

# What to try when the converter cannot take a model: the backends that read ONNX directly.
TRY_INSTEAD = "try --backend onnxruntime or --backend tvm"

# ONNX operators the converter emits TFLite operators for (when their inputs are not all
# constant; constant subgraphs of any standard operator are folded instead).
SUPPORTED_OPS = frozenset(
    {
        "Add",
        "AveragePool",
        "BatchNormalization",
        "Clip",
        "Concat",
        "Conv",
        "Div",
        "Dropout",
        "Flatten",
        "Gemm",
        "Gelu",
        "GlobalAveragePool",
        "HardSigmoid",
        "HardSwish",
        "Identity",
        "LayerNormalization",
        "LRN",
        "LeakyRelu",
        "MatMul",
        "MaxPool",
        "Mul",
        "Pad",
        "ReduceMean",
        "Relu",
        "Reshape",
        "Sigmoid",
        "Slice",
        "Softmax",
        "Split",
        "Squeeze",
        "Sub",
        "Sum",
        "Tanh",
        "Transpose",
        "Unsqueeze",
    }
)


def convert(model: Any, source_ref: str = "the model") -> Graph:
    """Convert an ONNX ModelProto with fixed input shapes into an fp32 TFLite :class:`Graph`."""
    model = fuse_gelu(fold_constants(model, source_ref))
    converter = _Converter(model, source_ref)
    converter.check_supported()
    return converter.run()


class _Converter(NNOps, NormOps, TensorOps):
    """Dispatches each ONNX node to its ``_op_<OnnxOp>`` method (in :mod:`.ops_nn` and
    :mod:`.ops_tensor`) and wires the graph's inputs and outputs."""

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
                + ", ".join(bad[:10])
                + (" …" if len(bad) > 10 else ""),
                hint=TRY_INSTEAD,
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
            except Unsupported as exc:
                raise BackendError(
                    f"the litert backend cannot convert {node.op_type} (node {name!r}) of {self.ref}: {exc}",
                    hint=TRY_INSTEAD,
                ) from None
        for info in g.output:
            self._graph_output(info.name)
        self._drop_dead_ops()
        return self.graph

    def _graph_input(self, info: Any) -> None:
        from onnx import TensorProto

        shape = self.shapes.get(info.name)
        if info.type.tensor_type.elem_type != TensorProto.FLOAT:
            raise BackendError(
                f"the litert backend supports float32 model inputs; input {info.name!r} of {self.ref} is not float32"
            )
        if shape is None or any(d <= 0 for d in shape):
            raise BackendError(f"input {info.name!r} of {self.ref} has no fixed shape")
        if len(shape) == 4:
            tensor = self.graph.activation(info.name, nhwc(shape))
            self.values[info.name] = Value(tensor, "nhwc", shape)
            self.graph.input_layouts.append("NHWC")
        else:
            tensor = self.graph.activation(info.name, shape)
            self.values[info.name] = Value(tensor, "plain", shape)
            self.graph.input_layouts.append("same")
        self.tensor_readers[tensor] += self.readers[info.name]
        self.graph.inputs.append(tensor)

    def _graph_output(self, name: str) -> None:
        if name in self.consts:
            raise BackendError(
                f"output {name!r} of {self.ref} is a constant; the litert backend needs computed outputs"
            )
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
