"""Full-integer int8 post-training quantization of a LiteRT :class:`Graph`.

Scheme (TFLite's own int8 specification, what its converter produces and what XNNPACK's
QS8 kernels run):

- activations, graph input and output: int8, per tensor, asymmetric (zero point in
  [-128, 127]); the range always contains 0.0 so that zero padding is exact;
- convolution and fully connected weights: int8, per output channel, symmetric
  (zero point 0, values in [-127, 127]);
- biases: int32 with scale = input scale × weight scale of the channel, zero point 0;
- operators that must keep their input's parameters (RESHAPE, PAD, pooling, TRANSPOSE,
  MAXIMUM/MINIMUM) get them; LOGISTIC/SOFTMAX/TANH outputs get the fixed parameters their
  int8 kernels require.

Calibration runs the fp32 model itself in LiteRT (with XNNPACK, as on the device) after
making every intermediate tensor a model output, so the ranges are those of exactly the
tensors that are quantized, including the ones the converter introduced (padding,
decomposed HardSigmoid).  Ranges are the min/max over the calibration inputs by default
("minmax"), or "percentile": per input the 0.01th/99.99th percentile, averaged over the
inputs, which ignores rare outliers at the cost of clipping them.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edgekiln.compile.backends.litert.graph import Graph, Op, QuantParams, Tensor
from edgekiln.errors import BackendError
from edgekiln.execute.progress import NullProgress, Progress

METHODS = ("minmax", "percentile")
PERCENTILE = 99.99
_INT8_MIN, _INT8_MAX = -128, 127
_SAME_SCALE = frozenset(
    {"RESHAPE", "PAD", "PADV2", "MAX_POOL_2D", "AVERAGE_POOL_2D", "TRANSPOSE", "MAXIMUM", "MINIMUM", "STRIDED_SLICE"}
)
_FIXED_OUTPUT = {"LOGISTIC": (1 / 256, -128), "SOFTMAX": (1 / 256, -128), "TANH": (1 / 128, 0)}
# (weights input, per-channel axis) of the operators with weights and an int32 bias.
_WEIGHTED = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 0}
# LOCAL_RESPONSE_NORMALIZATION has no int8 kernel; RSQRT (LayerNorm) and GELU have int8
# kernels whose tables this quantizer has not been checked against, so they stay fp32-only.
_NO_INT8_KERNEL = frozenset({"DIV", "LOCAL_RESPONSE_NORMALIZATION", "RSQRT", "GELU"})


@dataclass(frozen=True)
class Ranges:
    """Calibrated (min, max) of every activation tensor, and how many inputs gave them."""

    values: dict[str, tuple[float, float]]
    samples: int
    method: str


def prepare(graph: Graph) -> Graph:
    """The fp32 graph rewritten into operators whose int8 kernels XNNPACK runs.

    XNNPACK's delegate runs HARD_SWISH in fp32 only: an int8 HARD_SWISH stays on TFLite's
    own kernel and cuts the delegated graph into pieces at every activation (MobileNetV3
    small: 20 partitions, 7× slower than unpartitioned).  x * relu6(x + 3) / 6 as
    ADD(+RELU6), MUL, MUL stays in one partition; relu6(x + 3) / 6 lies in [0, 1] and its
    int8 steps of 6/255 map exactly onto 1/255, so the extra requantization costs nothing.
    Calibrate on the prepared graph, so that the new tensors get ranges too.
    """
    out = Graph(
        tensors=dict(graph.tensors),
        ops=[],
        inputs=list(graph.inputs),
        outputs=list(graph.outputs),
        input_layouts=list(graph.input_layouts),
        output_layouts=list(graph.output_layouts),
    )
    for op in graph.ops:
        if op.kind != "HARD_SWISH":
            out.ops.append(op)
            continue
        x, y = op.inputs[0], op.outputs[0]
        assert x is not None
        shape = out.tensors[x].shape
        three = out.const(f"{op.node}/three", np.array(3.0, np.float32))
        sixth = out.const(f"{op.node}/one_sixth", np.array(1.0 / 6.0, np.float32))
        t = out.activation(f"{y}/relu6", shape)
        h = out.activation(f"{y}/gate", shape)
        out.ops += [
            Op("ADD", [x, three], [t], {"activation": "RELU6"}, op.node),
            Op("MUL", [t, sixth], [h], {"activation": "NONE"}, op.node),
            Op("MUL", [x, h], [y], {"activation": "NONE"}, op.node),
        ]
    return out


def calibrate(
    graph: Graph,
    inputs: Sequence[Sequence[np.ndarray]],
    method: str = "minmax",
    threads: int | None = None,
    progress: Progress | None = None,
) -> Ranges:
    """Run the fp32 ``graph`` on ``inputs`` (each a list of arrays in the source's layout)
    and record the range of every activation tensor."""
    from edgekiln.compile.backends.litert import writer

    if method not in METHODS:
        raise BackendError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
    progress = progress or NullProgress()
    probe = copy.copy(graph)
    names = list(dict.fromkeys([*graph.inputs, *graph.activations()]))
    probe.outputs = names
    content = writer.write(probe, [f"in{i}" for i in range(len(graph.inputs))], names)
    interpreter = _interpreter(content, threads)
    details = {d["name"]: d["index"] for d in interpreter.get_output_details()}
    in_index = [d["index"] for d in interpreter.get_input_details()]
    lows: dict[str, list[float]] = {n: [] for n in names}
    highs: dict[str, list[float]] = {n: [] for n in names}
    with progress.step(f"calibrate int8 ranges on {len(inputs)} input(s) ({method})"):
        for sample in inputs:
            for index, array, layout in zip(in_index, sample, graph.input_layouts):
                interpreter.set_tensor(index, to_model_layout(array, layout))
            interpreter.invoke()
            for name in names:
                data = interpreter.get_tensor(details[name])
                if method == "minmax":
                    lows[name].append(float(data.min()))
                    highs[name].append(float(data.max()))
                else:
                    lo, hi = np.percentile(data, [100 - PERCENTILE, PERCENTILE])
                    lows[name].append(float(lo))
                    highs[name].append(float(hi))
    reduce_lo, reduce_hi = (min, max) if method == "minmax" else (np.mean, np.mean)
    values = {n: (float(reduce_lo(lows[n])), float(reduce_hi(highs[n]))) for n in names}
    bad = [n for n, (lo, hi) in values.items() if not (np.isfinite(lo) and np.isfinite(hi))]
    if bad:
        raise BackendError(
            f"calibration produced non-finite values in {', '.join(bad[:5])}",
            hint="check the calibration data (NaN or inf inputs?)",
        )
    return Ranges(values, len(inputs), method)


def to_model_layout(array: np.ndarray, layout: str) -> np.ndarray:
    """A source-layout input as the .tflite model takes it (NCHW → NHWC where recorded)."""
    array = np.asarray(array, dtype=np.float32)
    if layout == "NHWC":
        array = array.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(array)


def _interpreter(content: bytes, threads: int | None) -> object:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content, num_threads=threads or os.cpu_count() or 1)
    interpreter.allocate_tensors()
    return interpreter


def activation_params(lo: float, hi: float) -> QuantParams:
    """Asymmetric int8 parameters whose range holds [lo, hi] and represents 0.0 exactly."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo < 1e-12:
        hi = lo + 1e-6  # an all-zero tensor: any scale represents it; keep it finite.
    scale = (hi - lo) / (_INT8_MAX - _INT8_MIN)
    zero = int(np.clip(round(_INT8_MIN - lo / scale), _INT8_MIN, _INT8_MAX))
    return QuantParams.per_tensor(float(np.float32(scale)), zero)


def quantize_values(data: np.ndarray, params: QuantParams) -> np.ndarray:
    """int8 values of float ``data`` under per-tensor ``params`` (TFLite rounds half away from zero)."""
    scale, zero = float(params.scale[0]), int(params.zero_point[0])
    q = _round(np.asarray(data, np.float64) / scale) + zero
    return np.clip(q, _INT8_MIN, _INT8_MAX).astype(np.int8)


def _round(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _per_channel_weights(data: np.ndarray, axis: int) -> tuple[np.ndarray, QuantParams]:
    other = tuple(a for a in range(data.ndim) if a != axis)
    max_abs = np.max(np.abs(data.astype(np.float64)), axis=other) if other else np.abs(data.astype(np.float64))
    scale = np.where(max_abs > 0, max_abs / _INT8_MAX, 1.0).astype(np.float32)
    shape = [1] * data.ndim
    shape[axis] = -1
    q = np.clip(_round(data / scale.astype(np.float64).reshape(shape)), -_INT8_MAX, _INT8_MAX).astype(np.int8)
    return q, QuantParams(scale, np.zeros(len(scale), np.int64), axis)


def quantize(graph: Graph, ranges: Ranges) -> Graph:
    """A full-integer int8 copy of the fp32 ``graph`` using the calibrated ``ranges``."""
    unsupported = sorted({f"{op.kind} (node {op.node!r})" for op in graph.ops if op.kind in _NO_INT8_KERNEL})
    if unsupported:
        raise BackendError(
            "LiteRT has no int8 kernel for " + ", ".join(unsupported), hint="compile this model without --quantize"
        )
    out = Graph(
        tensors={n: copy.copy(t) for n, t in graph.tensors.items()},
        ops=[Op(op.kind, list(op.inputs), list(op.outputs), dict(op.options), op.node) for op in graph.ops],
        inputs=list(graph.inputs),
        outputs=list(graph.outputs),
        input_layouts=list(graph.input_layouts),
        output_layouts=list(graph.output_layouts),
    )
    t = out.tensors

    def set_activation(name: str, params: QuantParams) -> None:
        t[name] = Tensor(name, t[name].shape, "int8", None, params)

    for name in graph.inputs:
        set_activation(name, activation_params(*ranges.values[name]))
    for op in out.ops:
        x = op.inputs[0]
        x_params = t[x].quant if x is not None else None
        for name in op.outputs:
            if op.kind in _SAME_SCALE and x_params is not None:
                params = x_params
            elif op.kind in _FIXED_OUTPUT:
                params = QuantParams.per_tensor(*_FIXED_OUTPUT[op.kind])
            else:
                params = activation_params(*ranges.values[name])
            set_activation(name, params)
        if op.kind in _WEIGHTED:
            _quantize_weighted(op, t)
            continue
        for i, name in enumerate(op.inputs):
            if name is None or not t[name].is_const or t[name].dtype != "float32":
                continue
            data = t[name].data
            if op.kind in _SAME_SCALE:
                # PADV2's fill value, MAXIMUM/MINIMUM's bound: these kernels compare raw int8
                # values, so the constant must share the input's parameters.
                params = x_params
            else:
                params = activation_params(float(np.min(data)), float(np.max(data)))
            new = op.inputs[i] = out.unique(f"{name}/int8")
            out.add(Tensor(new, t[name].shape, "int8", quantize_values(data, params), params))
    # Float constants that no operator reads any more (replaced by their int8 copies).
    used = set(out.used_tensors())
    for name in [n for n in t if n not in used]:
        del t[name]
    return out


def _quantize_weighted(op: Op, tensors: dict[str, Tensor]) -> None:
    x, w, b = op.inputs[0], op.inputs[1], op.inputs[2]
    in_scale = float(tensors[x].quant.scale[0])
    weights = tensors[w]
    q, params = _per_channel_weights(weights.data, _WEIGHTED[op.kind])
    new_w = f"{w}/int8"
    tensors[new_w] = Tensor(new_w, weights.shape, "int8", q, params)
    op.inputs[1] = new_w
    if b is not None:
        bias = tensors[b]
        bias_scale = (in_scale * params.scale.astype(np.float64)).astype(np.float32)
        qb = np.clip(
            _round(bias.data.astype(np.float64) / bias_scale.astype(np.float64)), -(2**31) + 1, 2**31 - 1
        ).astype(np.int32)
        new_b = f"{b}/int32"
        tensors[new_b] = Tensor(
            new_b, bias.shape, "int32", qb, QuantParams(bias_scale, np.zeros(len(bias_scale), np.int64), 0)
        )
        op.inputs[2] = new_b
