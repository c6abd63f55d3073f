"""MXNet operators converted to ONNX nodes, each with MXNet's own semantics and defaults
(the exported JSON leaves out attributes at their defaults)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from edgekiln.compile.frontends.mxnet.symbol import Attrs, Node, Symbol
from edgekiln.errors import UserError


@dataclass
class _Check:
    """A size that a tensor's axis must have for a parameter to fit, checked once shapes are known."""

    tensor: str
    axis: int
    size: int
    node: str
    param: str
    what: str


@dataclass
class Builder:
    symbol: Symbol
    params: Mapping[str, np.ndarray]
    params_path: Path
    onnx_nodes: list = field(default_factory=list)
    initializers: dict[str, np.ndarray] = field(default_factory=dict)
    data_inputs: list[int] = field(default_factory=list)
    tensor_of: dict[tuple[int, int], str] = field(default_factory=dict)
    channels: dict[str, int] = field(default_factory=dict)
    checks: list[_Check] = field(default_factory=list)
    ceil_pools: list[tuple[str, Node, tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    names: set[str] = field(default_factory=set)

    def unique(self, base: str) -> str:
        name, k = base, 1
        while name in self.names:
            name, k = f"{base}_{k}", k + 1
        self.names.add(name)
        return name

    def stored(self, var: Node) -> np.ndarray | None:
        for key in (f"arg:{var.name}", f"aux:{var.name}", var.name):
            if key in self.params:
                return self.params[key]
        return None

    def _source(self, node: Node, i: int, role: str) -> tuple[int, int]:
        if i >= len(node.inputs):
            raise UserError(
                f"MXNet node {node.name!r} ({node.op}) has {len(node.inputs)} inputs; "
                f"its {role} (input {i}) is missing from the symbol"
            )
        key = node.inputs[i]
        src = self.symbol.nodes[key[0]]
        if src.op == "null" and key[1] != 0:
            raise UserError(
                f"MXNet node {node.name!r} ({node.op}) reads output {key[1]} of variable {src.name!r}, "
                "which has only output 0",
                hint="the symbol file is corrupt",
            )
        return key

    def data(self, node: Node, i: int, role: str = "data") -> str:
        """The tensor feeding input ``i``: another node's output, a graph input, or a constant."""
        key = self._source(node, i, role)
        if key in self.tensor_of:
            return self.tensor_of[key]
        src = self.symbol.nodes[key[0]]
        if src.op != "null":
            # Nodes come in topological order, so an operator output not converted yet is not the first.
            raise UserError(
                f"MXNet node {node.name!r} ({node.op}) reads output {key[1]} of node {src.name!r} "
                f"({src.op}); edgekiln's MXNet importer converts only the first output of each operator"
            )
        value = self.stored(src)
        name = self.unique(src.name)
        if value is None:
            self.data_inputs.append(src.index)
        else:
            self.initializers[name] = _as_float32(value)
        self.tensor_of[key] = name
        return name

    def param(self, node: Node, i: int, role: str, *, register: bool = True) -> tuple[str, np.ndarray]:
        """The parameter at input ``i`` (a weight, a statistic) as (name, float32 array); an
        initializer unless ``register`` is false (the caller stores a transformed copy)."""
        key = self._source(node, i, role)
        src = self.symbol.nodes[key[0]]
        if src.op != "null":
            raise UserError(
                f"the {role} of MXNet node {node.name!r} ({node.op}) is computed by node {src.name!r} "
                f"({src.op}); edgekiln's MXNet importer needs it stored in the .params file"
            )
        value = self.stored(src)
        if value is None:
            raise UserError(
                f"parameter {src.name!r} ({role} of MXNet node {node.name!r}, {node.op}) is missing "
                f"from {self.params_path}",
                hint="export the symbol and the params together",
            )
        array = _as_float32(value)
        if not register:
            return src.name, array
        if key not in self.tensor_of:
            self.tensor_of[key] = self.unique(src.name)
            self.initializers[self.tensor_of[key]] = array
        return self.tensor_of[key], array

    def const(self, base: str, value: Any, dtype: Any = np.float32) -> str:
        name = self.unique(base)
        self.initializers[name] = np.asarray(value, dtype=dtype)
        return name

    def emit(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str], node: Node, **attrs: Any) -> None:
        from onnx import helper

        self.onnx_nodes.append(
            helper.make_node(op_type, list(inputs), list(outputs), name=self.unique(f"{node.name}/{op_type}"), **attrs)
        )

    def temp(self, node: Node, what: str) -> str:
        return self.unique(f"{node.name}_{what}")

    def wrong_shape(self, node: Node, param: str, role: str, shape: tuple, expected: str) -> UserError:
        return UserError(
            f"parameter {param!r} ({role} of MXNet node {node.name!r}, {node.op}) has shape "
            f"{tuple(shape)}, but the node expects {expected}",
            hint="the params file does not belong to this symbol, or it is corrupt",
        )

    def need_channels(self, tensor: str, size: int, node: Node, param: str, what: str, axis: int = 1) -> None:
        known = self.channels.get(tensor) if axis == 1 else None
        if known is not None and known != size:
            raise UserError(
                f"parameter {param!r} of MXNet node {node.name!r} ({node.op}) fits {what} {size}, "
                f"but the node's input has {known}",
                hint="the params file does not belong to this symbol, or it is corrupt",
            )
        self.checks.append(_Check(tensor, axis, size, node.name, param, what))


def _as_float32(value: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(value, dtype=np.float32)


def _layout(node: Node, a: Attrs, nd: int) -> None:
    layout = a.text("layout", None)
    allowed = {1: "NCW", 2: "NCHW", 3: "NCDHW"}.get(nd)
    if layout is not None and layout != allowed:
        raise UserError(
            f"MXNet node {node.name!r} ({node.op}) uses layout {layout}; edgekiln's MXNet importer "
            f"supports channel-first layouts only ({allowed})"
        )


def _spatial(node: Node, a: Attrs, key: str, nd: int, default: int) -> tuple[int, ...]:
    value = a.ints(key, (default,) * nd)
    if len(value) != nd:
        raise UserError(
            f"attribute {key}={node.attrs.get(key)!r} of MXNet node {node.name!r} ({node.op}) "
            f"has {len(value)} values; its kernel has {nd}"
        )
    return value


def _convolution(b: Builder, node: Node, a: Attrs, out: str) -> None:
    kernel = a.ints("kernel")
    nd = len(kernel)
    if not 1 <= nd <= 3:
        raise UserError(f"MXNet node {node.name!r} (Convolution) has a {nd}-D kernel; 1-D to 3-D are supported")
    _layout(node, a, nd)
    stride = _spatial(node, a, "stride", nd, 1)
    dilate = _spatial(node, a, "dilate", nd, 1)
    pad = _spatial(node, a, "pad", nd, 0)
    filters = a.integer("num_filter")
    groups = a.integer("num_group", 1)
    if groups < 1 or filters % groups:
        raise UserError(
            f"MXNet node {node.name!r} (Convolution) has num_filter={filters}, which num_group={groups} does not divide"
        )
    x = b.data(node, 0)
    w_name, w = b.param(node, 1, "weight")
    if w.ndim != nd + 2 or w.shape[0] != filters or tuple(w.shape[2:]) != kernel:
        raise b.wrong_shape(node, w_name, "weight", w.shape, f"({filters}, C/{groups}, {', '.join(map(str, kernel))})")
    inputs = [x, w_name]
    if not a.boolean("no_bias", False):
        b_name, bias = b.param(node, 2, "bias")
        if bias.shape != (filters,):
            raise b.wrong_shape(node, b_name, "bias", bias.shape, f"({filters},)")
        inputs.append(b_name)
    b.need_channels(x, w.shape[1] * groups, node, w_name, "input channels")
    b.emit(
        "Conv",
        inputs,
        [out],
        node,
        kernel_shape=list(kernel),
        strides=list(stride),
        dilations=list(dilate),
        pads=list(pad) * 2,
        group=groups,
    )
    b.channels[out] = filters


def _batchnorm(b: Builder, node: Node, a: Attrs, out: str) -> None:
    if a.integer("axis", 1) != 1:
        raise UserError(
            f"MXNet node {node.name!r} (BatchNorm) normalizes axis {node.attrs.get('axis')}; "
            "edgekiln's MXNet importer supports axis 1 only"
        )
    eps = a.number("eps", 1e-3)
    x = b.data(node, 0)
    # fix_gamma (MXNet's default) means a scale of 1 whatever gamma holds.
    fix_gamma = a.boolean("fix_gamma", True)
    stats = [
        b.param(node, i, role, register=not (fix_gamma and i == 1))
        for i, role in enumerate(("gamma", "beta", "moving_mean", "moving_var"), 1)
    ]
    channels = stats[0][1].shape
    for (name, value), role in zip(stats, ("gamma", "beta", "moving_mean", "moving_var")):
        if value.ndim != 1 or value.shape != channels:
            raise b.wrong_shape(node, name, role, value.shape, f"one value per channel, {channels} like its gamma")
    names = [name for name, _ in stats]
    if fix_gamma:
        names[0] = b.const(f"{node.name}_gamma_fixed", np.ones(channels, np.float32))
    b.need_channels(x, channels[0], node, stats[0][0], "channels")
    # Inference: MXNet normalizes with the moving statistics whatever use_global_stats says.
    b.emit("BatchNormalization", [x, *names], [out], node, epsilon=eps)
    b.channels[out] = channels[0]


_ACTIVATIONS = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "softrelu": "Softplus", "softsign": "Softsign"}


def _keep_channels(b: Builder, x: str, out: str) -> None:
    if x in b.channels:
        b.channels[out] = b.channels[x]


def _activation(b: Builder, node: Node, a: Attrs, out: str) -> None:
    kind = a.text("act_type")
    if kind not in _ACTIVATIONS:
        raise UserError(
            f"act_type {kind!r} of MXNet node {node.name!r} (Activation) is not supported",
            hint=f"supported: {', '.join(_ACTIVATIONS)}",
        )
    x = b.data(node, 0)
    b.emit(_ACTIVATIONS[kind], [x], [out], node)
    _keep_channels(b, x, out)


def _unary(onnx_op: str) -> Callable:
    def convert(b: Builder, node: Node, a: Attrs, out: str) -> None:
        x = b.data(node, 0)
        b.emit(onnx_op, [x], [out], node)
        _keep_channels(b, x, out)

    return convert


def _clip(b: Builder, node: Node, a: Attrs, out: str) -> None:
    x = b.data(node, 0)
    low = b.const(f"{node.name}_min", a.number("a_min"))
    high = b.const(f"{node.name}_max", a.number("a_max"))
    b.emit("Clip", [x, low, high], [out], node)
    _keep_channels(b, x, out)


def _leaky_relu(b: Builder, node: Node, a: Attrs, out: str) -> None:
    kind = a.text("act_type", "leaky")
    x = b.data(node, 0)
    slope = a.number("slope", 0.25)
    if kind == "leaky":
        b.emit("LeakyRelu", [x], [out], node, alpha=slope)
    elif kind == "elu":
        b.emit("Elu", [x], [out], node, alpha=slope)
    elif kind == "selu":
        # MXNet's SELU constants are ONNX's defaults.
        b.emit("Selu", [x], [out], node)
    elif kind == "rrelu":
        # At inference MXNet's randomized ReLU uses the middle of its slope range.
        middle = (a.number("lower_bound", 0.125) + a.number("upper_bound", 0.334)) / 2
        b.emit("LeakyRelu", [x], [out], node, alpha=middle)
    elif kind == "gelu":
        # Opset 17 has no Gelu; MXNet's is the erf form, 0.5 x (1 + erf(x / sqrt 2)).
        scaled = b.temp(node, "scaled")
        b.emit("Mul", [x, b.const(f"{node.name}_rsqrt2", 1 / math.sqrt(2))], [scaled], node)
        erf = b.temp(node, "erf")
        b.emit("Erf", [scaled], [erf], node)
        shifted = b.temp(node, "erf_plus1")
        b.emit("Add", [erf, b.const(f"{node.name}_one", 1.0)], [shifted], node)
        half = b.temp(node, "half_x")
        b.emit("Mul", [x, b.const(f"{node.name}_half", 0.5)], [half], node)
        b.emit("Mul", [half, shifted], [out], node)
    else:
        raise UserError(
            f"act_type {kind!r} of MXNet node {node.name!r} (LeakyReLU) is not supported",
            hint="supported: leaky, elu, selu, rrelu, gelu",
        )
    _keep_channels(b, x, out)


def _pooling(b: Builder, node: Node, a: Attrs, out: str) -> None:
    kind = a.text("pool_type", "max")
    if kind not in ("max", "avg", "sum"):
        raise UserError(
            f"pool_type {kind!r} of MXNet node {node.name!r} (Pooling) is not supported",
            hint="supported: max, avg, sum",
        )
    x = b.data(node, 0)
    if a.boolean("global_pool", False):
        if kind == "sum":
            raise UserError(
                f"global sum pooling (MXNet node {node.name!r}) is not supported",
                hint="supported: global max and avg pooling",
            )
        b.emit("GlobalMaxPool" if kind == "max" else "GlobalAveragePool", [x], [out], node)
        _keep_channels(b, x, out)
        return
    kernel = a.ints("kernel")
    nd = len(kernel)
    if not 1 <= nd <= 3:
        raise UserError(f"MXNet node {node.name!r} (Pooling) has a {nd}-D kernel; 1-D to 3-D are supported")
    _layout(node, a, nd)
    stride = _spatial(node, a, "stride", nd, 1)
    pad = _spatial(node, a, "pad", nd, 0)
    convention = a.text("pooling_convention", "valid")
    if convention not in ("valid", "full"):
        raise UserError(
            f"pooling_convention {convention!r} of MXNet node {node.name!r} (Pooling) is not supported",
            hint="supported: valid, full",
        )
    # "full" is MXNet's ceil-mode output size; padding stays symmetric in both.
    if convention == "full":
        b.ceil_pools.append((x, node, kernel, stride, pad))
    common = dict(
        kernel_shape=list(kernel), strides=list(stride), pads=list(pad) * 2, ceil_mode=int(convention == "full")
    )
    if kind == "max":
        b.emit("MaxPool", [x], [out], node, **common)
    elif kind == "avg":
        # MXNet counts the padding in the average unless told otherwise (ONNX does not).
        include = a.boolean("count_include_pad", True)
        b.emit("AveragePool", [x], [out], node, count_include_pad=int(include), **common)
    else:
        if convention == "full":
            raise UserError(f"sum pooling with pooling_convention 'full' (MXNet node {node.name!r}) is not supported")
        # Every valid-convention window lies inside the padded input, so sum = mean * window size.
        mean = b.temp(node, "mean")
        b.emit("AveragePool", [x], [mean], node, count_include_pad=1, **common)
        b.emit("Mul", [mean, b.const(f"{node.name}_window", float(math.prod(kernel)))], [out], node)
    _keep_channels(b, x, out)


def _flatten(b: Builder, node: Node, a: Attrs, out: str) -> None:
    b.emit("Flatten", [b.data(node, 0)], [out], node, axis=1)


def _fully_connected(b: Builder, node: Node, a: Attrs, out: str) -> None:
    hidden = a.integer("num_hidden")
    x = b.data(node, 0)
    flatten = a.boolean("flatten", True)
    w_name, w = b.param(node, 1, "weight", register=flatten)
    if w.ndim != 2 or w.shape[0] != hidden:
        raise b.wrong_shape(node, w_name, "weight", w.shape, f"({hidden}, input features)")
    bias = None
    if not a.boolean("no_bias", False):
        bias, value = b.param(node, 2, "bias")
        if value.shape != (hidden,):
            raise b.wrong_shape(node, bias, "bias", value.shape, f"({hidden},)")
    if flatten:
        # MXNet flattens everything after the batch axis into the features.
        flat = b.temp(node, "flat")
        b.emit("Flatten", [x], [flat], node, axis=1)
        b.need_channels(flat, w.shape[1], node, w_name, "input features")
        b.emit("Gemm", [flat, w_name] + ([bias] if bias else []), [out], node, transB=1)
        b.channels[out] = hidden
        return
    # flatten=False applies the layer to the last axis, whatever the rank.
    b.need_channels(x, w.shape[1], node, w_name, "input features", axis=-1)
    w_t = b.const(f"{w_name}_transposed", w.T)
    if bias is None:
        b.emit("MatMul", [x, w_t], [out], node)
        return
    product = b.temp(node, "matmul")
    b.emit("MatMul", [x, w_t], [product], node)
    b.emit("Add", [product, bias], [out], node)


def _binary(onnx_op: str) -> Callable:
    def convert(b: Builder, node: Node, a: Attrs, out: str) -> None:
        lhs, rhs = b.data(node, 0, "lhs"), b.data(node, 1, "rhs")
        b.emit(onnx_op, [lhs, rhs], [out], node)
        # Only when both sides agree: broadcasting can widen a side of 1 channel.
        sides = {b.channels.get(lhs), b.channels.get(rhs)}
        if len(sides) == 1 and None not in sides:
            b.channels[out] = sides.pop()

    return convert


def _scalar(onnx_op: str, reverse: bool = False) -> Callable:
    def convert(b: Builder, node: Node, a: Attrs, out: str) -> None:
        x = b.data(node, 0)
        scalar = b.const(f"{node.name}_scalar", a.number("scalar"))
        b.emit(onnx_op, [scalar, x] if reverse else [x, scalar], [out], node)
        _keep_channels(b, x, out)

    return convert


def _add_n(b: Builder, node: Node, a: Attrs, out: str) -> None:
    inputs = [b.data(node, i) for i in range(len(node.inputs))]
    b.emit("Sum", inputs, [out], node)
    sides = {b.channels.get(x) for x in inputs}
    if len(sides) == 1 and None not in sides:
        b.channels[out] = sides.pop()


def _concat(b: Builder, node: Node, a: Attrs, out: str) -> None:
    axis = a.integer("dim", 1)
    inputs = [b.data(node, i) for i in range(len(node.inputs))]
    b.emit("Concat", inputs, [out], node, axis=axis)
    if axis == 1 and all(x in b.channels for x in inputs):
        b.channels[out] = sum(b.channels[x] for x in inputs)


def _identity(b: Builder, node: Node, a: Attrs, out: str) -> None:
    # Dropout is the identity at inference, also mode="always": the expected value of
    # inverted dropout is its input, and a compiled model has no use for the randomness.
    x = b.data(node, 0)
    b.emit("Identity", [x], [out], node)
    _keep_channels(b, x, out)


def _softmax_flat(b: Builder, node: Node, x: str, out: str) -> None:
    """Softmax over everything after the batch axis, keeping the input's shape."""
    shape = b.temp(node, "shape")
    b.emit("Shape", [x], [shape], node)
    flat = b.temp(node, "flat")
    b.emit("Flatten", [x], [flat], node, axis=1)
    soft = b.temp(node, "softmax")
    b.emit("Softmax", [flat], [soft], node, axis=-1)
    b.emit("Reshape", [soft, shape], [out], node)


def _softmax(log: bool) -> Callable:
    def convert(b: Builder, node: Node, a: Attrs, out: str) -> None:
        if a.boolean("use_length", False):
            raise UserError(f"softmax with use_length (MXNet node {node.name!r}) is not supported")
        x = b.data(node, 0)
        temperature = a.number("temperature", 1.0)
        if temperature != 1.0:
            scaled = b.temp(node, "scaled")
            b.emit("Div", [x, b.const(f"{node.name}_temperature", temperature)], [scaled], node)
            x = scaled
        b.emit("LogSoftmax" if log else "Softmax", [x], [out], node, axis=a.integer("axis", -1))

    return convert


def _softmax_output(b: Builder, node: Node, a: Attrs, out: str) -> None:
    # Input 1 is the training label: never read, so it does not become a graph input.
    # Above rank 2 MXNet 1.9 disagrees with itself: its MKLDNN kernel takes the last axis,
    # the native CPU/GPU one (followed here) everything after the batch axis.
    x = b.data(node, 0)
    if a.boolean("multi_output", False):
        b.emit("Softmax", [x], [out], node, axis=1)
    elif a.boolean("preserve_shape", False):
        b.emit("Softmax", [x], [out], node, axis=-1)
    else:
        _softmax_flat(b, node, x, out)


def _softmax_activation(b: Builder, node: Node, a: Attrs, out: str) -> None:
    x = b.data(node, 0)
    mode = a.text("mode", "instance")
    if mode == "channel":
        b.emit("Softmax", [x], [out], node, axis=1)
    elif mode == "instance":
        # Despite the name MXNet normalizes the last axis (its kernel flattens to 2-D by that axis).
        b.emit("Softmax", [x], [out], node, axis=-1)
    else:
        raise UserError(f"mode {mode!r} of MXNet node {node.name!r} (SoftmaxActivation) is not supported")


def _reshape(b: Builder, node: Node, a: Attrs, out: str) -> None:
    shape = a.ints("shape", ())
    if not shape or a.boolean("reverse", False) or a.ints("target_shape", ()):
        raise UserError(
            f"MXNet node {node.name!r} ({node.op}) uses target_shape, reverse or an empty shape; "
            "edgekiln's MXNet importer supports 'shape' with positive sizes, 0 and -1 only"
        )
    # MXNet's 0 (copy) and -1 (infer) mean what ONNX's do; -2, -3 and -4 have no ONNX twin.
    if any(d < -1 for d in shape) or shape.count(-1) > 1:
        raise UserError(
            f"shape {shape} of MXNet node {node.name!r} ({node.op}) uses MXNet's special sizes "
            "(-2, -3, -4 or several -1); supported: positive sizes, 0 and one -1"
        )
    x = b.data(node, 0)
    b.emit("Reshape", [x, b.const(f"{node.name}_shape", shape, np.int64)], [out], node)


def _transpose(b: Builder, node: Node, a: Attrs, out: str) -> None:
    axes = a.ints("axes", ())
    x = b.data(node, 0)
    # No axes: MXNet reverses them, as ONNX does without perm.
    b.emit("Transpose", [x], [out], node, **({"perm": list(axes)} if axes else {}))


CONVERTERS: dict[str, Callable[[Builder, Node, Attrs, str], None]] = {
    "Convolution": _convolution,
    "BatchNorm": _batchnorm,
    "Activation": _activation,
    "relu": _unary("Relu"),
    "sigmoid": _unary("Sigmoid"),
    "tanh": _unary("Tanh"),
    "clip": _clip,
    "LeakyReLU": _leaky_relu,
    "Pooling": _pooling,
    "Flatten": _flatten,
    "flatten": _flatten,
    "FullyConnected": _fully_connected,
    **{op: _binary("Add") for op in ("elemwise_add", "_Plus", "_plus", "_add", "broadcast_add", "broadcast_plus")},
    **{op: _binary("Sub") for op in ("elemwise_sub", "_Minus", "_minus", "_sub", "broadcast_sub", "broadcast_minus")},
    **{op: _binary("Mul") for op in ("elemwise_mul", "_Mul", "_mul", "broadcast_mul")},
    **{op: _binary("Div") for op in ("elemwise_div", "_Div", "_div", "broadcast_div")},
    **{op: _scalar("Add") for op in ("_plus_scalar", "_PlusScalar")},
    **{op: _scalar("Sub") for op in ("_minus_scalar", "_MinusScalar")},
    **{op: _scalar("Sub", reverse=True) for op in ("_rminus_scalar", "_RMinusScalar")},
    **{op: _scalar("Mul") for op in ("_mul_scalar", "_MulScalar")},
    **{op: _scalar("Div") for op in ("_div_scalar", "_DivScalar")},
    **{op: _scalar("Div", reverse=True) for op in ("_rdiv_scalar", "_RDivScalar")},
    "add_n": _add_n,
    "ElementWiseSum": _add_n,
    "Concat": _concat,
    "concat": _concat,
    **{op: _identity for op in ("Dropout", "_copy", "BlockGrad", "stop_gradient", "identity")},
    "softmax": _softmax(log=False),
    "log_softmax": _softmax(log=True),
    "SoftmaxOutput": _softmax_output,
    "Softmax": _softmax_output,  # SoftmaxOutput's old name
    "SoftmaxActivation": _softmax_activation,
    "Reshape": _reshape,
    "reshape": _reshape,
    "transpose": _transpose,
}


def supported_operators() -> list[str]:
    """The MXNet operator names :func:`to_onnx` converts."""
    return sorted(CONVERTERS, key=str.lower)
