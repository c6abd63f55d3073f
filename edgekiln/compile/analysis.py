"""Graph statistics of an ONNX model: trainable parameters, multiply-accumulates, op types.

The counts follow the conventions people compare against:

- **parameters** as torchvision counts ``sum(p.numel() for p in model.parameters())``: every
  weight and bias, BatchNorm's scale and shift, but not BatchNorm's running mean and
  variance (buffers in PyTorch) nor constants that only configure an op (shapes, axes,
  Clip bounds, quantization scales and zero points);
- **MACs** as fvcore (and torchvision's "GFLOPS" column, which is in fact MACs) counts them:
  one multiply-accumulate per weight use in Conv, ConvTranspose, Gemm and MatMul (and their
  quantized forms); biases, activations, pooling, normalization and elementwise ops cost
  nothing.

Everything works on any ONNX model, not only the zoo's: MACs need every Conv and matrix
product's shapes, which come from ONNX shape inference.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from edgekiln.errors import DependencyError, UserError

if TYPE_CHECKING:  # pragma: no cover
    import onnx

# (op_type, input index) pairs whose constant input configures the op instead of being a
# learned tensor. BatchNormalization's 3 and 4 are the running mean and variance.
_NON_PARAMETER_INPUTS: dict[str, frozenset[int]] = {
    "BatchNormalization": frozenset({3, 4}),
    "Clip": frozenset({1, 2}),
    "Pad": frozenset({1, 2, 3}),
    "Resize": frozenset({1, 2, 3}),
    "Upsample": frozenset({1}),
    "Reshape": frozenset({1}),
    "Expand": frozenset({1}),
    "Tile": frozenset({1}),
    "Slice": frozenset({1, 2, 3, 4}),
    "Squeeze": frozenset({1}),
    "Unsqueeze": frozenset({1}),
    "Split": frozenset({1}),
    "TopK": frozenset({1}),
    "ConstantOfShape": frozenset({0}),
    "Range": frozenset({0, 1, 2}),
    "ReduceMean": frozenset({1}),
    "ReduceSum": frozenset({1}),
    "ReduceMax": frozenset({1}),
    "ReduceMin": frozenset({1}),
    "QuantizeLinear": frozenset({1, 2}),
    "DequantizeLinear": frozenset({1, 2}),
    "QLinearConv": frozenset({1, 2, 4, 5, 6, 7}),
    "QLinearMatMul": frozenset({1, 2, 4, 5, 6, 7}),
    "ConvInteger": frozenset({2, 3}),
    "MatMulInteger": frozenset({2, 3}),
}
# A one-element constant feeding only these ops is arithmetic glue (the 3 and 6 of an
# exported hardswish, a 1/sqrt(d) scale), not a parameter a trainer would own.
_ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Clip", "Where", "Equal", "Less", "Greater"})
# Integer tensors wider than 32 bits are shapes, axes or indices in practice; quantized
# weights are 8-bit (or 4-bit) and their biases 32-bit, and those count.
_NON_PARAMETER_DTYPES = frozenset({"INT64", "UINT64", "BOOL", "STRING"})

# Convolutions by the input index of their weight; matrix products take A at input 0.
_CONV_WEIGHT_INPUT = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}
_MATMUL_OPS = frozenset({"MatMul", "MatMulInteger", "QLinearMatMul"})

# Initializers smaller than this stay in the graph that shape inference sees, because
# shape data propagation may need their values (a Reshape's target shape); larger ones
# become typed inputs so that a 100 MB model is not serialized again just for shapes.
_KEEP_FOR_SHAPES = 64
# Shapes and indices are integers; they stay whatever their size.
_SHAPE_DTYPES = frozenset({"INT64", "INT32"})


def _require_onnx():
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - the compile extra brings onnx
        raise DependencyError("graph statistics need the onnx package", hint="pip install 'edgekiln[compile]'") from exc
    return onnx


def _numel(dims: Sequence[int]) -> int:
    return math.prod(int(d) for d in dims)


def _all_nodes(graph: Any):
    """The graph's nodes and, depth first, those of its subgraphs (If, Loop, Scan bodies)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                yield from _all_nodes(sub)


def count_params(model: onnx.ModelProto) -> int:
    """Count the trainable parameters of an ONNX model, as torchvision counts them.

    Every initializer (dense or sparse) counts by its full shape, except BatchNorm running
    statistics, shape/axis/index tensors and constants that only configure an op (see the
    module docstring). Initializers held as external data count by their declared shape,
    so the data need not be loaded.

    Args:
        model: the ONNX model.

    Returns:
        The number of parameters.
    """
    onnx = _require_onnx()
    graph = model.graph
    consumers: dict[str, list[tuple[str, int]]] = {}
    # Subgraph nodes too: an If branch may read the outer graph's initializers.
    for node in _all_nodes(graph):
        for index, name in enumerate(node.input):
            if name:
                consumers.setdefault(name, []).append((node.op_type, index))

    def is_parameter(name: str, dims: Sequence[int], data_type: int) -> bool:
        if onnx.TensorProto.DataType.Name(data_type) in _NON_PARAMETER_DTYPES:
            return False
        uses = consumers.get(name, [])
        if not uses:
            return False  # an unused initializer computes nothing and trains nothing
        if all(index in _NON_PARAMETER_INPUTS.get(op, ()) for op, index in uses):
            return False
        if _numel(dims) == 1 and all(op in _ELEMENTWISE for op, _ in uses):
            return False
        return True

    total = 0
    for tensor in graph.initializer:
        if is_parameter(tensor.name, tensor.dims, tensor.data_type):
            total += _numel(tensor.dims)
    for sparse in graph.sparse_initializer:
        if is_parameter(sparse.values.name, sparse.dims, sparse.values.data_type):
            total += _numel(sparse.dims)
    return total


def _shape_skeleton(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None) -> onnx.ModelProto:
    """A copy of ``model`` without bulky weight data and with concrete input shapes."""
    onnx = _require_onnx()
    from onnx import helper

    graph = model.graph
    initializer_names = {t.name for t in graph.initializer}
    given = dict(input_shapes or {})
    unknown = sorted(set(given) - {i.name for i in graph.input})
    if unknown:
        raise UserError(
            f"input_shapes names {', '.join(unknown)}, which the model does not have as inputs",
            hint="the inputs are: " + ", ".join(i.name for i in graph.input if i.name not in initializer_names),
        )

    inputs = []
    for value in graph.input:
        if value.name in initializer_names:
            continue  # IR < 4 lists initializers as inputs too; the initializer decides
        tensor_type = value.type.tensor_type
        if value.name in given:
            dims = [int(d) for d in given[value.name]]
        else:
            dims = []
            for axis, dim in enumerate(tensor_type.shape.dim):
                if dim.HasField("dim_value") and dim.dim_value > 0:
                    dims.append(dim.dim_value)
                elif axis == 0:
                    # An unnamed or symbolic batch axis: MACs are counted per image, as
                    # torchvision and fvcore publish them.
                    dims.append(1)
                else:
                    label = dim.dim_param or "?"
                    raise UserError(
                        f"input '{value.name}' has a dynamic dimension '{label}' at axis {axis}, "
                        "so MACs cannot be counted",
                        hint=f"pass input_shapes={{'{value.name}': [...]}} with concrete sizes",
                    )
        inputs.append(helper.make_tensor_value_info(value.name, tensor_type.elem_type, dims))

    small, large = [], []
    for tensor in graph.initializer:
        dtype = onnx.TensorProto.DataType.Name(tensor.data_type)
        keep = _numel(tensor.dims) <= _KEEP_FOR_SHAPES or dtype in _SHAPE_DTYPES
        (small if keep else large).append(tensor)
    inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in large]
    for sparse in graph.sparse_initializer:
        inputs.append(helper.make_tensor_value_info(sparse.values.name, sparse.values.data_type, list(sparse.dims)))

    skeleton_graph = helper.make_graph(
        list(graph.node), graph.name or "graph", inputs, list(graph.output), initializer=small
    )
    skeleton = helper.make_model(skeleton_graph, opset_imports=list(model.opset_import))
    skeleton.ir_version = max(model.ir_version, 4)  # inputs without initializers need IR >= 4
    skeleton.functions.extend(model.functions)
    if skeleton.functions:
        # Model-local functions (the dynamo exporter emits them) hide their Convs and
        # MatMuls from a node walk; inline them so every one is counted.
        from onnx import inliner

        skeleton = inliner.inline_local_functions(skeleton)
    return skeleton


def _inferred_shapes(
    model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None
) -> tuple[onnx.GraphProto, dict[str, list[int | None]]]:
    onnx = _require_onnx()
    skeleton = _shape_skeleton(model, input_shapes)
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        raise UserError(
            f"ONNX shape inference failed on this model: {' '.join(str(exc).split())}",
            hint="check the model with onnx.checker, or give concrete input_shapes",
        ) from exc

    shapes: dict[str, list[int | None]] = {}
    graph = inferred.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
            continue
        shapes[value.name] = [
            d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim
        ]
    for tensor in graph.initializer:
        shapes[tensor.name] = list(tensor.dims)
    return graph, shapes


def _shape_of(shapes: Mapping[str, list[int | None]], name: str, node: Any) -> list[int]:
    shape = shapes.get(name)
    if shape is None or any(d is None for d in shape):
        raise UserError(
            f"cannot infer the shape of '{name}' at {node.op_type} node "
            f"'{node.name or node.output[0]}', so MACs cannot be counted",
            hint="give the model concrete input shapes, or simplify it (onnxsim) first",
        )
    return [int(d) for d in shape]


def _node_macs(node: Any, shapes: Mapping[str, list[int | None]]) -> int:
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        return 0
    if op in _CONV_WEIGHT_INPUT:
        out = _shape_of(shapes, node.output[0], node)
        weight = _shape_of(shapes, node.input[_CONV_WEIGHT_INPUT[op]], node)
        # fvcore conv: N * Cout * prod(out spatial) * (Cin / groups) * prod(kernel).
        return _numel(out) * _numel(weight[1:])
    if op == "ConvTranspose":
        x = _shape_of(shapes, node.input[0], node)
        weight = _shape_of(shapes, node.input[1], node)  # (Cin, Cout / groups, *kernel)
        # fvcore transposed conv: every input element scatters through Cout/groups kernels.
        return _numel(x) * _numel(weight[1:])
    if op == "Gemm":
        a = _shape_of(shapes, node.input[0], node)
        out = _shape_of(shapes, node.output[0], node)
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        k = a[0] if trans_a else a[1]
        return _numel(out) * k
    if op in _MATMUL_OPS:
        a = _shape_of(shapes, node.input[0], node)
        out = _shape_of(shapes, node.output[0], node)
        return _numel(out) * a[-1]
    return 0


def count_macs(model: onnx.ModelProto, *, input_shapes: Mapping[str, Sequence[int]] | None = None) -> int:
    """Count the multiply-accumulates of one forward pass, as fvcore and torchvision do.

    Conv, ConvTranspose, Gemm and MatMul (and ConvInteger, QLinearConv, MatMulInteger,
    QLinearMatMul) count one MAC per weight use; all other ops count zero, and so do ops
    outside the default ONNX domain (a runtime's fused ops, whose shapes ONNX cannot infer).
    Model-local functions are inlined first. Shapes come from ONNX shape inference; a
    dynamic batch axis counts as 1 (MACs per image).

    Args:
        model: the ONNX model.
        input_shapes: concrete shapes for inputs whose non-batch axes are dynamic, by name.

    Returns:
        The number of multiply-accumulates.

    Raises:
        UserError: shape inference fails or leaves a needed shape unknown.
    """
    graph, shapes = _inferred_shapes(model, input_shapes)
    return sum(_node_macs(node, shapes) for node in graph.node)


def graph_stats(model: onnx.ModelProto, *, input_shapes: Mapping[str, Sequence[int]] | None = None) -> dict:
    """Parameters, MACs and op-type counts of an ONNX model, as one JSON-ready dict.

    Args:
        model: the ONNX model.
        input_shapes: as for :func:`count_macs`.

    Returns:
        ``{"params": int, "macs": int, "nodes": int, "op_counts": {op_type: count},
        "opset": int}``; op types outside the default domain are written ``domain.OpType``,
        and ``op_counts`` is sorted by count, then name.

    Raises:
        UserError: as for :func:`count_macs`.
    """
    graph, shapes = _inferred_shapes(model, input_shapes)
    counts = Counter(
        node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}" for node in graph.node
    )
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return {
        "params": count_params(model),
        "macs": sum(_node_macs(node, shapes) for node in graph.node),
        "nodes": len(graph.node),
        "op_counts": dict(sorted(counts.items(), key=lambda item: (-item[1], item[0]))),
        "opset": opset,
    }
