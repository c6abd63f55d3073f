"""Conversions of the network operators: convolution, batch normalization, activations,
fully connected layers, pooling and softmax."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgekiln.compile.backends.litert.common import (
    LOWEST,
    Unsupported,
    Value,
    attr,
    optional_input,
    pool_out,
    scalar,
)
from edgekiln.compile.backends.litert.core import ConverterCore

# Operators that TFLite can fuse an activation (RELU, RELU6, RELU_N1_TO_1) into.
_FUSABLE = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "SUB", "MUL"})


class NNOps(ConverterCore):
    """``_op_<OnnxOp>`` conversions of the network operators."""

    def _padding(
        self,
        node: Any,
        in_hw: tuple[int, int],
        kernel: tuple[int, int],
        strides: tuple[int, int],
        dilations: tuple[int, int],
    ) -> tuple[str, tuple[int, int, int, int] | None]:
        """TFLite padding for ONNX pads: ("SAME"|"VALID", None) or ("VALID", explicit t, l, b, r)."""
        auto_pad = attr(node, "auto_pad", b"NOTSET")
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
        pads = tuple(attr(node, "pads", [0, 0, 0, 0]))
        if len(pads) != 4:
            raise Unsupported(f"pads {list(pads)} are not 2-D")
        top, left, bottom, right = pads
        if pads == (0, 0, 0, 0):
            return "VALID", None
        if ((top, bottom), (left, right)) == (same[0], same[1]):
            return "SAME", None
        return "VALID", (top, left, bottom, right)

    def _pad(self, x: Value, pads: tuple[int, int, int, int], node: str, value: float = 0.0) -> str:
        top, left, bottom, right = pads
        paddings = self.graph.const(
            f"{node}/paddings", np.array([[0, 0], [top, bottom], [left, right], [0, 0]], np.int32)
        )
        n, h, w, c = self.graph.tensors[x.tensor].shape
        shape = (n, h + top + bottom, w + left + right, c)
        if value == 0.0:
            return self._intermediate("PAD", [x.tensor, paddings], f"{x.tensor}/pad", shape, node)
        fill = self.graph.const(f"{node}/pad_value", np.array(value, np.float32))
        return self._intermediate("PADV2", [x.tensor, paddings, fill], f"{x.tensor}/pad", shape, node)

    def _activation(self, node: Any, name: str, act: str) -> None:
        x = self._value(node.input[0])
        producer = self._fusable_producer(x)
        if producer is not None and producer.kind in _FUSABLE and producer.options.get("activation", "NONE") == "NONE":
            producer.options["activation"] = act
            self._rename_output(producer, x, node.output[0])
            return
        self._emit(act, [x.tensor], node.output[0], x.shape, x.layout, name)

    def _op_Conv(self, node: Any, name: str) -> None:
        x = self._nhwc_input(node, "only 2-D convolutions are supported; the input")
        w = self._const(node.input[1], "the weight").astype(np.float32)
        bias = (
            self._const(node.input[2], "the bias").astype(np.float32)
            if len(node.input) > 2 and node.input[2]
            else np.zeros(w.shape[0], np.float32)
        )
        group = int(attr(node, "group", 1))
        strides = tuple(attr(node, "strides", [1, 1]))
        dilations = tuple(attr(node, "dilations", [1, 1]))
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
        elif cin % group == 0 and w.shape[1] == cin // group:
            # A grouped convolution is CONV_2D whose filter holds cin / group input channels:
            # TFLite infers the groups from the filter (the kernels have done so since TF 2.9).
            weights = self.graph.const(f"{name}/weights", np.ascontiguousarray(w.transpose(0, 2, 3, 1)))
            kind = "CONV_2D"
        else:
            raise Unsupported(f"grouped convolution (group={group}, {cin} input channels, weight {list(w.shape)})")
        b = self.graph.const(f"{name}/bias", bias)
        self._emit(kind, [source, weights, b], node.output[0], out_shape, "nhwc", name, **common)

    def _op_BatchNormalization(self, node: Any, name: str) -> None:
        if len([o for o in node.output if o]) > 1 or attr(node, "training_mode", 0):
            raise Unsupported("only inference-mode BatchNormalization is supported")
        x = self._value(node.input[0])
        gamma, beta, mean, var = (
            self._const(node.input[i], "a BatchNormalization parameter").astype(np.float64) for i in range(1, 5)
        )
        eps = float(attr(node, "epsilon", 1e-5))
        scale = gamma / np.sqrt(var + eps)
        shift = beta - mean * scale
        producer = self._fusable_producer(x)
        if (
            producer is not None
            and producer.kind in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
            and producer.options.get("activation", "NONE") == "NONE"
        ):
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
        scaled = self._intermediate(
            "MUL",
            [x.tensor, s],
            f"{node.output[0]}/scaled",
            self.graph.tensors[x.tensor].shape,
            name,
            activation="NONE",
        )
        self._emit("ADD", [scaled, t], node.output[0], x.shape, x.layout, name, activation="NONE")

    def _op_Relu(self, node: Any, name: str) -> None:
        self._activation(node, name, "RELU")

    def _op_Clip(self, node: Any, name: str) -> None:
        if self.opset < 11:
            lo, hi = attr(node, "min", -math.inf), attr(node, "max", math.inf)
        else:
            lo_name, hi_name = optional_input(node, 1), optional_input(node, 2)
            lo = scalar(self._const(lo_name, "the minimum")) if lo_name else -math.inf
            hi = scalar(self._const(hi_name, "the maximum")) if hi_name else math.inf
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
        self._emit(
            "LEAKY_RELU", [x.tensor], node.output[0], x.shape, x.layout, name, alpha=float(attr(node, "alpha", 0.01))
        )

    def _op_HardSwish(self, node: Any, name: str) -> None:
        x = self._value(node.input[0])
        self._emit("HARD_SWISH", [x.tensor], node.output[0], x.shape, x.layout, name)

    def _op_HardSigmoid(self, node: Any, name: str) -> None:
        # TFLite has no HardSigmoid: clamp(a*x + b, 0, 1) = relu6(6a*x + 6b) / 6, which maps
        # onto operators every delegate and the int8 kernels have.  For torch's hardsigmoid
        # (a = 1/6, b = 1/2) it is relu6(x + 3) / 6 exactly.
        x = self._value(node.input[0])
        alpha, beta = float(attr(node, "alpha", 0.2)), float(attr(node, "beta", 0.5))
        stored = self.graph.tensors[x.tensor].shape
        current = x.tensor
        if not math.isclose(6 * alpha, 1.0, rel_tol=1e-6):
            a = self.graph.const(f"{name}/six_alpha", np.array(6 * alpha, np.float32))
            current = self._intermediate(
                "MUL", [current, a], f"{node.output[0]}/scaled", stored, name, activation="NONE"
            )
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

    def _op_Softmax(self, node: Any, name: str) -> None:
        x = self._value(node.input[0])
        rank = len(x.shape)
        axis = int(attr(node, "axis", -1 if self.opset >= 13 else 1)) % rank
        last = (x.layout == "nhwc" and axis == 1) or (x.layout == "plain" and axis == rank - 1)
        if not last:
            # Before opset 13, Softmax flattened everything from `axis` on; equal only on the last axis.
            raise Unsupported(f"softmax over axis {axis} of a rank-{rank} tensor (only the channel/last axis)")
        self._emit("SOFTMAX", [x.tensor], node.output[0], x.shape, x.layout, name, beta=1.0)

    def _fully_connected(self, node: Any, name: str, x: Value, weights: np.ndarray, bias: np.ndarray) -> None:
        if x.layout != "plain" or len(x.shape) < 2:
            raise Unsupported(f"the input must be a tensor in ONNX axis order, got shape {list(x.shape)}")
        w = self.graph.const(f"{name}/weights", np.ascontiguousarray(weights.astype(np.float32)))
        b = self.graph.const(f"{name}/bias", np.ascontiguousarray(bias.astype(np.float32)))
        self._emit(
            "FULLY_CONNECTED",
            [x.tensor, w, b],
            node.output[0],
            self._out_shape(node),
            "plain",
            name,
            activation="NONE",
            # A Linear over the last axis of a N-D tensor (ConvNeXt's MLP) keeps the other axes.
            keep_num_dims=len(x.shape) > 2,
        )

    def _op_Gemm(self, node: Any, name: str) -> None:
        if attr(node, "transA", 0):
            raise Unsupported("transA=1 is not supported")
        x = self._value(node.input[0])
        b = self._const(node.input[1], "B").astype(np.float64)
        alpha, beta = float(attr(node, "alpha", 1.0)), float(attr(node, "beta", 1.0))
        weights = (b if attr(node, "transB", 0) else b.T) * alpha
        n = weights.shape[0]
        bias = np.zeros(n)
        if len(node.input) > 2 and node.input[2]:
            c = self._const(node.input[2], "C").astype(np.float64)
            if c.size not in (1, n) or (c.ndim == 2 and c.shape[0] != 1):
                raise Unsupported(f"C of shape {list(c.shape)} is not a per-output bias")
            bias = np.broadcast_to(c.reshape(-1), (n,)) * beta
        self._fully_connected(node, name, x, weights, bias)

    def _op_MatMul(self, node: Any, name: str) -> None:
        x = self._value(node.input[0])
        b = self._const(node.input[1], "the second input")
        if b.ndim != 2:
            raise Unsupported(f"the second input must be a 2-D constant, got shape {list(b.shape)}")
        self._fully_connected(node, name, x, b.T, np.zeros(b.shape[1]))

    def _op_GlobalAveragePool(self, node: Any, name: str) -> None:
        x = self._nhwc_input(node)
        axes = self.graph.const(f"{name}/axes", np.array([1, 2], np.int32))
        self._emit("MEAN", [x.tensor, axes], node.output[0], self._out_shape(node), "nhwc", name, keep_dims=True)

    def _pool(self, node: Any, name: str, kind: str) -> None:
        x = self._nhwc_input(node, "only 2-D pooling is supported; the input")
        kernel = tuple(attr(node, "kernel_shape", []))
        strides = tuple(attr(node, "strides", [1, 1]))
        dilations = tuple(attr(node, "dilations", [1, 1]))
        if len(kernel) != 2 or dilations != (1, 1):
            raise Unsupported("only 2-D pooling without dilation is supported")
        padding, explicit = self._padding(node, x.shape[2:], kernel, strides, dilations)
        out_shape = self._out_shape(node)
        source = x.tensor
        if explicit:
            if kind == "MAX_POOL_2D":
                # After a ReLU the window's maximum is >= 0 and every window holds a real pixel
                # (ONNX pads are smaller than the kernel), so zero padding gives the same result
                # as -inf padding, and PAD runs inside XNNPACK where PADV2 does not.
                fill = 0.0 if self._non_negative(x) else LOWEST
                source = self._pad(x, explicit, name, value=fill)
            elif attr(node, "count_include_pad", 0):
                source = self._pad(x, explicit, name)
            else:
                raise Unsupported(
                    "average pooling with padding that TFLite's SAME does not reproduce, without count_include_pad"
                )
        elif padding == "SAME" and kind == "AVERAGE_POOL_2D" and attr(node, "count_include_pad", 0):
            source = self._pad(x, self._same_pads(x, kernel, strides), name)
            padding = "VALID"
        stored = self.graph.tensors[source].shape
        got = tuple(pool_out(stored[1:3], kernel, strides, padding))
        if got != tuple(out_shape[2:]) and kind == "MAX_POOL_2D" and padding == "VALID":
            # ceil_mode: the last window hangs over the bottom/right edge; padding those
            # edges with the lowest float (0 after a ReLU) gives that window its maximum.
            extra = [
                max((o - 1) * s + k - size, 0) for o, s, k, size in zip(out_shape[2:], strides, kernel, stored[1:3])
            ]
            fill = 0.0 if self._non_negative(x) else LOWEST
            source = self._pad(Value(source, "nhwc", x.shape), (0, 0, extra[0], extra[1]), name, value=fill)
            stored = self.graph.tensors[source].shape
            got = tuple(pool_out(stored[1:3], kernel, strides, padding))
        if got != tuple(out_shape[2:]):
            raise Unsupported(f"ceil_mode gives an output of {list(out_shape[2:])} that TFLite cannot produce")
        self._emit(
            kind,
            [source],
            node.output[0],
            out_shape,
            "nhwc",
            name,
            padding=padding,
            stride=strides,
            filter=kernel,
            activation="NONE",
        )

    def _non_negative(self, value: Value) -> bool:
        for op in reversed(self.graph.ops):
            if value.tensor in op.outputs:
                return op.kind in ("RELU", "RELU6") or op.options.get("activation") in ("RELU", "RELU6")
        return False

    def _same_pads(self, x: Value, kernel: tuple[int, ...], strides: tuple[int, ...]) -> tuple[int, int, int, int]:
        pads = []
        for size, k, s in zip(x.shape[2:], kernel, strides):
            out = -(-size // s)
            total = max((out - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        return pads[0][0], pads[1][0], pads[0][1], pads[1][1]

    def _op_MaxPool(self, node: Any, name: str) -> None:
        if len(node.output) > 1 and node.output[1]:
            raise Unsupported("the indices output is not supported")
        self._pool(node, name, "MAX_POOL_2D")

    def _op_AveragePool(self, node: Any, name: str) -> None:
        self._pool(node, name, "AVERAGE_POOL_2D")
