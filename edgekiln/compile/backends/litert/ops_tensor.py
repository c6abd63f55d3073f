"""Conversions of the tensor operators: elementwise arithmetic, reductions, reshapes,
padding, concatenation and transposes."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekiln.compile.backends.litert.common import (
    NCHW_TO_NHWC,
    NHWC_TO_NCHW,
    TO_NHWC_AXIS,
    Unsupported,
    Value,
    attr,
    scalar,
)
from edgekiln.compile.backends.litert.core import ConverterCore


class TensorOps(ConverterCore):
    """``_op_<OnnxOp>`` conversions of the tensor operators."""

    def _binary(self, node: Any, name: str, kind: str) -> None:
        a_name, b_name = node.input[0], node.input[1]
        a = self.values.get(a_name)
        b = self.values.get(b_name)
        if a is not None and b is not None and a.layout != b.layout:
            if len(a.shape) == len(b.shape):
                raise Unsupported("mixing 4-D and other tensors of the same rank")
            # Broadcasting a lower-rank computed tensor against an NHWC one changes its axes.
            raise Unsupported(
                f"broadcasting a computed {len(b.shape if a.layout == 'nhwc' else a.shape)}-D tensor against a 4-D one"
            )
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

    def _op_ReduceMean(self, node: Any, name: str) -> None:
        x = self._value(node.input[0])
        rank = len(x.shape)
        if self.opset >= 18 and len(node.input) > 1 and node.input[1]:
            axes = [int(a) for a in self._const(node.input[1], "the axes").reshape(-1)]
        else:
            axes = list(attr(node, "axes", list(range(rank))))
        axes = sorted(a % rank for a in axes)
        keep = bool(attr(node, "keepdims", 1))
        out_shape = self._out_shape(node)
        if x.layout == "nhwc":
            mapped = sorted(TO_NHWC_AXIS[a] for a in axes)
            remaining = [TO_NHWC_AXIS[a] for a in range(4) if a not in axes]
            if not keep and remaining != sorted(remaining):
                raise Unsupported(f"reducing axes {axes} without keepdims reorders the remaining axes")
            layout = "nhwc" if keep else "plain"
        else:
            mapped, layout = axes, "plain"
        t_axes = self.graph.const(f"{name}/axes", np.array(mapped, np.int32))
        self._emit("MEAN", [x.tensor, t_axes], node.output[0], out_shape, layout, name, keep_dims=keep)

    def _op_Flatten(self, node: Any, name: str) -> None:
        self._reshape_to(self._value(node.input[0]), self._out_shape(node), node.output[0], name)

    _op_Reshape = _op_Flatten
    _op_Squeeze = _op_Flatten
    _op_Unsqueeze = _op_Flatten

    def _op_Identity(self, node: Any, name: str) -> None:
        self._alias(node.output[0], self._value(node.input[0]))

    def _op_Dropout(self, node: Any, name: str) -> None:
        if len(node.output) > 1 and node.output[1] and self.readers[node.output[1]]:
            raise Unsupported("its mask output is used")
        self._alias(node.output[0], self._value(node.input[0]))

    def _op_Pad(self, node: Any, name: str) -> None:
        mode = attr(node, "mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode != "constant":
            raise Unsupported(f"mode {mode!r} is not supported (only constant)")
        x = self._value(node.input[0])
        rank = len(x.shape)
        if self.opset >= 11:
            pads = [int(p) for p in self._const(node.input[1], "the pads").reshape(-1)]
            value = scalar(self._const(node.input[2], "the value")) if len(node.input) > 2 and node.input[2] else 0.0
            if len(node.input) > 3 and node.input[3]:
                raise Unsupported("the axes input is not supported")
        else:
            pads, value = list(attr(node, "pads", [])), float(attr(node, "value", 0.0))
        if any(p < 0 for p in pads):
            raise Unsupported("negative pads (cropping) are not supported")
        pairs = [[pads[i], pads[i + rank]] for i in range(rank)]
        if x.layout == "nhwc":
            pairs = [pairs[a] for a in NCHW_TO_NHWC]
        paddings = self.graph.const(f"{name}/paddings", np.array(pairs, np.int32))
        if value == 0.0:
            self._emit("PAD", [x.tensor, paddings], node.output[0], self._out_shape(node), x.layout, name)
        else:
            fill = self.graph.const(f"{name}/pad_value", np.array(value, np.float32))
            self._emit("PADV2", [x.tensor, paddings, fill], node.output[0], self._out_shape(node), x.layout, name)

    def _op_Concat(self, node: Any, name: str) -> None:
        names = [i for i in node.input if i]
        computed = [self.values[i] for i in names if i in self.values]
        anchor = computed[0]
        if any(v.layout != anchor.layout for v in computed):
            raise Unsupported("mixing 4-D and other tensors")
        axis = int(attr(node, "axis", 0)) % len(anchor.shape)
        tensors = [self._operand(i, anchor, name)[0] for i in names]
        if anchor.layout == "nhwc":
            axis = TO_NHWC_AXIS[axis]
        self._emit(
            "CONCATENATION",
            tensors,
            node.output[0],
            self._out_shape(node),
            anchor.layout,
            name,
            axis=axis,
            activation="NONE",
        )

    def _op_Transpose(self, node: Any, name: str) -> None:
        x = self._value(node.input[0])
        rank = len(x.shape)
        perm = list(attr(node, "perm", list(range(rank))[::-1]))
        out_shape = self._out_shape(node)
        if rank == 4 and x.layout == "nhwc" and tuple(perm) == NCHW_TO_NHWC:
            # NCHW → NHWC of a value already stored NHWC: the stored tensor is the result,
            # in ONNX axis order ("plain").  ConvNeXt's permute → LayerNorm → Linear stays
            # transpose-free that way.
            return self._alias(node.output[0], Value(x.tensor, "plain", out_shape))
        if rank == 4 and x.layout == "plain" and tuple(perm) == NHWC_TO_NCHW:
            return self._alias(node.output[0], Value(x.tensor, "nhwc", out_shape))
        if x.layout == "nhwc":
            # Position in the stored NHWC tensor of each ONNX (NCHW) axis.
            where = {a: NCHW_TO_NHWC.index(a) for a in range(4)}
            perm = [where[p] for p in perm]
        layout = "plain"
        if len(out_shape) == 4:
            perm = [perm[a] for a in NCHW_TO_NHWC]
            layout = "nhwc"
        p = self.graph.const(f"{name}/perm", np.array(perm, np.int32))
        self._emit("TRANSPOSE", [x.tensor, p], node.output[0], out_shape, layout, name)

    def _op_Sum(self, node: Any, name: str) -> None:
        # Variadic Sum (Caffe2-converted models add residuals with it) is a chain of ADDs.
        names = [i for i in node.input if i]
        anchor = next((self.values[i] for i in names if i in self.values), None)
        if anchor is None:
            raise Unsupported("at least one input must be computed")
        if len(names) == 1:
            return self._alias(node.output[0], anchor)
        out_shape = self._out_shape(node)
        current = self._operand(names[0], anchor, name)[0]
        for i, other in enumerate(names[1:], start=2):
            operand = self._operand(other, anchor, name)[0]
            if i == len(names):
                self._emit("ADD", [current, operand], node.output[0], out_shape, anchor.layout, name, activation="NONE")
            else:
                stored = self.graph.tensors[anchor.tensor].shape
                current = self._intermediate(
                    "ADD", [current, operand], f"{node.output[0]}/sum{i}", stored, name, activation="NONE"
                )

    def _strided_slice(
        self, x: Any, starts: list[int], ends: list[int], steps: list[int], out_name: str, out_shape: tuple, node: str
    ) -> None:
        """Emit STRIDED_SLICE of ``x`` for per-ONNX-axis ``starts``/``ends``/``steps``."""
        order = list(NCHW_TO_NHWC) if x.layout == "nhwc" else list(range(len(x.shape)))
        begin = np.array([starts[a] for a in order], np.int32)
        end = np.array([ends[a] for a in order], np.int32)
        stride = np.array([steps[a] for a in order], np.int32)
        inputs = [
            x.tensor,
            self.graph.const(f"{node}/begin", begin),
            self.graph.const(f"{node}/end", end),
            self.graph.const(f"{node}/strides", stride),
        ]
        self._emit("STRIDED_SLICE", inputs, out_name, out_shape, x.layout, node)

    def _op_Slice(self, node: Any, name: str) -> None:
        x = self._value(node.input[0])
        rank = len(x.shape)
        if self.opset >= 10:
            starts, ends = (
                list(self._const(node.input[i], what).reshape(-1)) for i, what in ((1, "starts"), (2, "ends"))
            )
            axes = (
                list(self._const(node.input[3], "axes").reshape(-1)) if len(node.input) > 3 and node.input[3] else None
            )
            steps = (
                list(self._const(node.input[4], "steps").reshape(-1)) if len(node.input) > 4 and node.input[4] else None
            )
        else:
            starts, ends = list(attr(node, "starts", [])), list(attr(node, "ends", []))
            axes, steps = attr(node, "axes", None), None
        axes = [int(a) % rank for a in (axes if axes is not None else range(len(starts)))]
        steps = [int(s) for s in (steps if steps is not None else [1] * len(axes))]
        begin, end, stride = [0] * rank, list(x.shape), [1] * rank
        for axis, s, e, st in zip(axes, starts, ends, steps):
            if st <= 0:
                raise Unsupported(f"step {st} on axis {axis} (only positive steps)")
            # ONNX clamps out-of-range indices (INT64_MAX means "to the end"); resolve them here.
            begin[axis], end[axis], stride[axis] = slice(int(s), int(e), st).indices(x.shape[axis])
        self._strided_slice(x, begin, end, stride, node.output[0], self._out_shape(node), name)

    def _op_Split(self, node: Any, name: str) -> None:
        x = self._value(node.input[0])
        rank = len(x.shape)
        axis = int(attr(node, "axis", 0)) % rank
        start = 0
        for index, out in enumerate(node.output):
            shape = self._out_shape(node, index)
            begin, end = [0] * rank, list(x.shape)
            begin[axis], end[axis] = start, start + shape[axis]
            start += shape[axis]
            if out:
                self._strided_slice(x, begin, end, [1] * rank, out, shape, f"{name}/{index}")
