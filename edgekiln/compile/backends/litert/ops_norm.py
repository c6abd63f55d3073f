"""Conversions of the normalizations (LayerNormalization, LRN) and GELU, and the rewrite
that finds GELU in the ``Erf`` formula exporters write for it."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekiln.compile.backends.litert.common import TO_NHWC_AXIS, Unsupported, attr
from edgekiln.compile.backends.litert.core import ConverterCore

# What the exporters divide by (or multiply with) before Erf in x * 0.5 * (1 + erf(x / √2)).
_SQRT2 = float(np.sqrt(2.0))


class NormOps(ConverterCore):
    """``_op_<OnnxOp>`` conversions of the normalization operators and GELU."""

    def _op_LayerNormalization(self, node: Any, name: str) -> None:
        if any(o and self.readers[o] for o in node.output[1:]):
            raise Unsupported("its Mean / InvStdDev outputs are used")
        x = self._value(node.input[0])
        rank = len(x.shape)
        axes = list(range(int(attr(node, "axis", -1)) % rank, rank))
        stored_axes = sorted(TO_NHWC_AXIS[a] for a in axes) if x.layout == "nhwc" else axes
        eps = float(attr(node, "epsilon", 1e-5))
        out = node.output[0]
        stored = self.graph.tensors[x.tensor].shape
        reduced = tuple(1 if i in stored_axes else d for i, d in enumerate(stored))
        t_axes = self.graph.const(f"{name}/axes", np.array(stored_axes, np.int32))
        # (x - mean) * rsqrt(mean((x - mean)^2) + eps) * scale + bias: the operators TFLite's
        # own converter emits for Keras' LayerNormalization, which every delegate runs.
        mean = self._intermediate("MEAN", [x.tensor, t_axes], f"{out}/mean", reduced, name, keep_dims=True)
        sq = self._intermediate("SQUARED_DIFFERENCE", [x.tensor, mean], f"{out}/sq", stored, name)
        var = self._intermediate("MEAN", [sq, t_axes], f"{out}/var", reduced, name, keep_dims=True)
        e = self.graph.const(f"{name}/epsilon", np.array(eps, np.float32))
        var_eps = self._intermediate("ADD", [var, e], f"{out}/var_eps", reduced, name, activation="NONE")
        rstd = self._intermediate("RSQRT", [var_eps], f"{out}/rstd", reduced, name)
        centered = self._intermediate("SUB", [x.tensor, mean], f"{out}/centered", stored, name, activation="NONE")
        has_bias = len(node.input) > 2 and bool(node.input[2])
        normed = self._intermediate("MUL", [centered, rstd], f"{out}/normed", stored, name, activation="NONE")
        scale = self._operand(node.input[1], x, name)[0]
        if not has_bias:
            self._emit("MUL", [normed, scale], out, x.shape, x.layout, name, activation="NONE")
            return
        scaled = self._intermediate("MUL", [normed, scale], f"{out}/scaled", stored, name, activation="NONE")
        bias = self._operand(node.input[2], x, name)[0]
        self._emit("ADD", [scaled, bias], out, x.shape, x.layout, name, activation="NONE")

    def _op_LRN(self, node: Any, name: str) -> None:
        x = self._nhwc_input(node)
        size = int(attr(node, "size", 1))
        if size % 2 == 0:
            # ONNX's window is asymmetric for an even size; TFLite's radius is symmetric.
            raise Unsupported(f"an even window size ({size})")
        # ONNX divides alpha by the window size; TFLite applies alpha to the plain sum.
        self._emit(
            "LOCAL_RESPONSE_NORMALIZATION",
            [x.tensor],
            node.output[0],
            x.shape,
            "nhwc",
            name,
            radius=(size - 1) // 2,
            bias=float(attr(node, "bias", 1.0)),
            alpha=float(attr(node, "alpha", 1e-4)) / size,
            beta=float(attr(node, "beta", 0.75)),
        )

    def _op_Gelu(self, node: Any, name: str) -> None:
        x = self._value(node.input[0])
        approximate = attr(node, "approximate", b"none")
        approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
        self._emit("GELU", [x.tensor], node.output[0], x.shape, x.layout, name, approximate=approximate == "tanh")


def fuse_gelu(model: Any) -> Any:
    """``model`` with each ``x * 0.5 * (1 + erf(x / √2))`` (as torch.onnx writes GELU before
    opset 20) replaced by one ``Gelu`` node, which becomes TFLite's GELU.  Only when the
    intermediate values have no other reader; a lone Erf stays and is reported."""
    from onnx import helper, numpy_helper

    g = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    readers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    outputs = {o.name for o in g.output}

    def only_reader(value: str) -> Any:
        found = readers.get(value, [])
        return found[0] if len(found) == 1 and value not in outputs else None

    def other(node: Any, value: str) -> str | None:
        rest = [i for i in node.input if i != value]
        return rest[0] if len(rest) == 1 else None

    def const_is(value: str | None, expected: float) -> bool:
        return value in consts and consts[value].size == 1 and np.isclose(float(consts[value]), expected, rtol=1e-4)

    drop, replace = set(), {}
    for erf in g.node:
        if erf.op_type != "Erf" or erf.input[0] not in producer:
            continue
        div = producer[erf.input[0]]
        if not (
            (div.op_type == "Div" and const_is(div.input[1], _SQRT2))
            or (div.op_type == "Mul" and const_is(other(div, div.input[0]), 1 / _SQRT2))
        ):
            continue
        x = div.input[0]
        add = only_reader(erf.output[0])
        if add is None or add.op_type != "Add" or not const_is(other(add, erf.output[0]), 1.0):
            continue
        mul1 = only_reader(add.output[0])
        if mul1 is None or mul1.op_type != "Mul" or other(mul1, add.output[0]) != x:
            continue
        mul2 = only_reader(mul1.output[0])
        if mul2 is None or mul2.op_type != "Mul" or not const_is(other(mul2, mul1.output[0]), 0.5):
            continue
        if len(readers.get(div.output[0], [])) != 1:
            continue
        drop.update(id(n) for n in (div, erf, add, mul1))
        replace[id(mul2)] = helper.make_node("Gelu", [x], [mul2.output[0]], name=f"{erf.name or 'gelu'}/gelu")
    if not replace:
        return model
    nodes = [replace.get(id(n), n) for n in g.node if id(n) not in drop]
    del g.node[:]
    g.node.extend(nodes)
    return model
