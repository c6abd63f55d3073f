"""Constant folding before conversion, for the backends that convert ONNX themselves (litert)
or through a frontend that keeps shape arithmetic dynamic (TVM's Relax importer): nodes
whose inputs are all known at conversion time (shape arithmetic, ``Shape`` of a fixed-shape
tensor, constants) are evaluated with ONNX's reference implementation and become
initializers."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgekiln.errors import BackendError


class Unsupported(Exception):
    """A node that cannot be evaluated or converted; the caller names it in its error."""


def attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            value = helper.get_attribute_value(attribute)
            return list(value) if isinstance(value, (list, tuple)) else value
    return default


def fold_constants(model: Any, source_ref: str = "the model", backend: str = "litert") -> Any:
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
        shapes = known_shapes(model)
        consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        kept, folded = [], False
        for index, node in enumerate(g.node):
            if _foldable(node, consts, shapes):
                try:
                    consts.update(_evaluate(node, consts, shapes, model))
                except Unsupported as exc:
                    raise BackendError(
                        f"the {backend} backend cannot convert {node.op_type} (node "
                        f"{node.name or f'#{index}'!r}) of {source_ref}: {exc}",
                        hint="try another backend (--backend onnxruntime reads any valid ONNX model)",
                    ) from None
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


def known_shapes(model: Any) -> dict[str, tuple[int, ...]]:
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


def _evaluate(
    node: Any, consts: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]], model: Any
) -> dict[str, np.ndarray]:
    if node.op_type in ("Shape", "Size"):
        shape = shapes[node.input[0]]
        if node.op_type == "Size":
            return {node.output[0]: np.array(math.prod(shape), np.int64)}
        start, end = attr(node, "start", 0), attr(node, "end", None)
        return {node.output[0]: np.array(shape[slice(start, end)], np.int64)}
    if node.op_type == "Constant":
        from onnx import numpy_helper

        for attribute in node.attribute:
            if attribute.name == "value":
                return {node.output[0]: numpy_helper.to_array(attribute.t)}
        raise Unsupported("only Constant nodes with a tensor 'value' are supported")
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    inputs = [i for i in node.input if i]
    outputs = [o for o in node.output if o]
    sub = helper.make_model(
        helper.make_graph(
            [node],
            "fold",
            [helper.make_tensor_value_info(i, 0, None) for i in inputs],
            [helper.make_tensor_value_info(o, 0, None) for o in outputs],
        ),
        opset_imports=list(model.opset_import),
    )
    try:
        results = ReferenceEvaluator(sub).run(None, {i: consts[i] for i in inputs})
    except Exception as exc:  # the reference evaluator raises whatever the operator raises
        raise Unsupported(f"cannot evaluate it on constant inputs: {str(exc).strip()[:200]}") from None
    return {o: np.asarray(r) for o, r in zip(outputs, results)}
