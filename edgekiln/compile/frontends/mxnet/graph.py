"""A symbol + params pair made into one ONNX graph: :func:`to_onnx`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from edgekiln.compile.frontends.mxnet.converters import CONVERTERS, Builder, supported_operators
from edgekiln.compile.frontends.mxnet.params import read_params
from edgekiln.compile.frontends.mxnet.symbol import INT64_MAX, Attrs, Node, Symbol, load_symbol
from edgekiln.compile.frontends.onnx import requested_shapes
from edgekiln.errors import InternalError, UserError

if TYPE_CHECKING:
    import onnx

OPSET = 17
_IR_VERSION = 8  # the IR version that goes with opset 17, so older runtimes load the model too


def _reachable(symbol: Symbol) -> list[Node]:
    seen: set[int] = set()
    stack = [h for h, _ in symbol.heads]
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        stack.extend(src for src, _ in symbol.nodes[i].inputs)
    return [n for n in symbol.nodes if n.index in seen]


def _unsupported(nodes: list[Node]) -> None:
    bad = [n for n in nodes if n.op != "null" and n.op not in CONVERTERS]
    if not bad:
        return
    first = bad[0]
    others = sorted({n.op for n in bad[1:]} - {first.op})
    also = f"; also unsupported: {', '.join(others)}" if others else ""
    raise UserError(
        f"MXNet operator {first.op!r} at node {first.name!r} is not supported by edgekiln's MXNet importer{also}",
        hint=f"supported: {', '.join(supported_operators())}",
    )


def _check_size(name: str, dims: list[int]) -> list[int]:
    if math.prod(dims) * 4 > INT64_MAX:  # float32 bytes; ONNX and numpy count them in int64
        raise UserError(
            f"the input shape {dims} for {name!r} overflows: its float32 size does not fit in 64 bits",
            hint="give the shape of one input batch, e.g. [1, 3, 224, 224]",
        )
    return dims


def to_onnx(
    symbol: Path,
    params: Path,
    input_shapes: Mapping[str, Sequence[int]] | Sequence[int] | None = None,
    *,
    name: str = "mxnet",
) -> onnx.ModelProto:
    """Convert an MXNet symbol + params pair to an ``onnx.ModelProto`` (opset 17, float32).

    The graph inputs are the symbol's variables that have no ``arg:``/``aux:`` entry in the
    params file and feed data (usually ``data``), in the symbol's ``arg_nodes`` order; those
    named in ``input_shapes`` get that shape, the others none (the caller asks for one).  The
    outputs are the symbol's heads, named after the nodes that produce them.  Raises
    UserError for an unsupported operator, a missing or misfit parameter, a corrupt file or
    an input name the model does not have.
    """
    from onnx import TensorProto, helper, numpy_helper

    symbol, params = Path(symbol), Path(params)
    sym = load_symbol(symbol)
    nodes = _reachable(sym)
    _unsupported(nodes)
    stored = read_params(params)
    b = Builder(sym, stored, params)
    _convert_nodes(b, sym, nodes)
    outputs = _graph_outputs(b, sym)
    input_names, shapes = _graph_inputs(b, sym, input_shapes)

    graph = helper.make_graph(
        b.onnx_nodes,
        name,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shapes.get(n)) for n in input_names],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        initializer=[numpy_helper.from_array(v, k) for k, v in b.initializers.items()],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edgekiln-mxnet",
        doc_string=f"imported from MXNet {symbol.name}",
    )
    model.ir_version = _IR_VERSION
    meta = {"source_format": "mxnet"}
    if sym.mxnet_version is not None:
        meta["mxnet_version"] = str(sym.mxnet_version)
    helper.set_model_props(model, meta)
    if input_names and all(n in shapes for n in input_names):
        _check_shapes(model, b, shapes)
    _check_structure(model, symbol)
    return model


def _convert_nodes(b: Builder, sym: Symbol, nodes: list[Node]) -> None:
    """Convert every operator node, in order, into ONNX nodes on ``b``."""
    # Reserve the names of the nodes whose outputs are graph outputs, so they keep their names.
    head_nodes = {h for h, _ in sym.heads}
    for node in nodes:
        if node.op != "null" and node.index in head_nodes:
            b.names.add(node.name)
    reserved = set(b.names)
    for node in nodes:
        if node.op == "null":
            continue
        out = node.name if node.name in reserved else b.unique(node.name)
        reserved.discard(node.name)
        CONVERTERS[node.op](b, node, Attrs(node), out)
        b.tensor_of[(node.index, 0)] = out


def _graph_outputs(b: Builder, sym: Symbol) -> list[str]:
    """The tensor names of the symbol's heads, each distinct and none of them a graph input."""
    outputs: list[str] = []
    for head in sym.heads:
        node = sym.nodes[head[0]]
        if head not in b.tensor_of and node.op == "null":
            # A variable that is itself an output: register it the way a consumer would.
            b.data(Node(-1, "output", "output", {}, [head]), 0)
        if head not in b.tensor_of:
            raise UserError(
                f"output {head[1]} of MXNet node {node.name!r} ({node.op}) is a graph output; "
                "edgekiln's MXNet importer converts only the first output of each operator"
            )
        tensor = b.tensor_of[head]
        if tensor in outputs or node.op == "null":
            # An output listed twice, or a graph input, still needs a name of its own.
            alias = b.unique(f"{node.name}_output{head[1]}")
            b.emit("Identity", [tensor], [alias], node)
            tensor = alias
        outputs.append(tensor)
    return outputs


def _graph_inputs(
    b: Builder, sym: Symbol, input_shapes: Mapping[str, Sequence[int]] | Sequence[int] | None
) -> tuple[list[str], dict[str, list[int]]]:
    """The data inputs in ``arg_nodes`` order, and the shapes asked for by name."""
    order = {index: rank for rank, index in enumerate(sym.arg_nodes)}
    data_nodes = sorted(set(b.data_inputs), key=lambda i: (order.get(i, len(order)), i))
    input_names = [b.tensor_of[(i, 0)] for i in data_nodes]
    # The one reading of the user's shapes that every frontend shares.
    shapes = {k: _check_size(k, v) for k, v in requested_shapes(input_shapes, input_names, "MXNet model").items()}
    return input_names, shapes


def _check_structure(model: Any, symbol: Path) -> None:
    """onnx.checker on the graph we built: a failure is a bug here, not in the user's files."""
    import onnx

    probe = model
    io = [*model.graph.input, *model.graph.output]
    if any(not v.type.tensor_type.HasField("shape") for v in io):
        # The checker insists on a shape for every graph input and output; an open input is
        # left for the caller to fix, so check a copy with placeholders.
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        for value in [*probe.graph.input, *probe.graph.output]:
            value.type.tensor_type.shape.SetInParent()
    try:
        onnx.checker.check_model(probe)
    except onnx.checker.ValidationError as exc:
        raise InternalError(f"the ONNX graph made from {symbol} is invalid: {exc}") from exc


def _check_shapes(model: Any, b: Builder, shapes: Mapping[str, list[int]]) -> None:
    """With every input shape known, check each parameter against the tensor it meets."""
    import onnx

    # Lenient first, so a misfit parameter is reported by its MXNet names; strict at the end
    # for whatever else does not fit.
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except onnx.shape_inference.InferenceError:
        inferred = model  # nothing known; the strict pass below says what is wrong
    known: dict[str, list[int | None]] = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        ttype = value.type.tensor_type
        if ttype.HasField("shape"):
            known[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim]
    # The outputs' shapes follow from the inputs'; ONNX's checker wants them on the graph.
    for value in model.graph.output:
        dims = known.get(value.name)
        if dims is not None:
            value.type.tensor_type.shape.SetInParent()
            for d in dims:
                dim = value.type.tensor_type.shape.dim.add()
                if d is not None:
                    dim.dim_value = d
    for tensor, node, kernel, stride, pad in b.ceil_pools:
        dims = known.get(tensor)
        for axis, (k, s, p) in enumerate(zip(kernel, stride, pad), 2):
            size = dims[axis] if dims and axis < len(dims) else None
            # MXNet keeps a last window that starts in the end padding (its values are
            # padding); ONNX's ceil mode drops it, so the output would be one shorter.
            if size and (math.ceil((size + 2 * p - k) / s)) * s >= size + p:
                raise UserError(
                    f"MXNet node {node.name!r} (Pooling, pooling_convention 'full') would start its "
                    f"last window inside the padding for input size {size}; ONNX pooling drops that "
                    "window, so edgekiln's MXNet importer cannot reproduce it",
                    hint="use another input size or pooling_convention 'valid'",
                )
    for check in b.checks:
        dims = known.get(check.tensor)
        if not dims or not -len(dims) <= check.axis < len(dims):
            continue
        actual = dims[check.axis]
        if actual is not None and actual != check.size:
            raise UserError(
                f"parameter {check.param!r} of MXNet node {check.node!r} fits {check.what} {check.size}, "
                f"but with input shapes {dict(shapes)} the node's input has {actual}",
                hint="check the input shape, or whether the params file belongs to this symbol",
            )
    try:
        onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except onnx.shape_inference.InferenceError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "shape inference failed"
        raise UserError(f"the MXNet model does not fit the input shapes {dict(shapes)}: {first}") from None
