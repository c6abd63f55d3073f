"""Serialize a :class:`Graph` as a ``.tflite`` flatbuffer with the ``tflite`` package's
generated schema builders (no TensorFlow, no converter).

The file is what TFLite's own converter writes for such a graph: schema version 3, one
subgraph, buffer 0 empty, one buffer per constant (16-byte aligned, as the converter's
``force_align`` does, so kernels can read weights in place), a ``serving_default``
signature that names the inputs and outputs as the source model does, and operator
versions that announce int8 kernels where tensors are int8.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

import numpy as np

from edgekiln.compile.backends.litert.graph import Graph, Op, Tensor

SCHEMA_VERSION = 3
FILE_IDENTIFIER = b"TFL3"
_ALIGN = 16

_TENSOR_TYPES = {"float32": 0, "int32": 2, "int8": 9}
_PADDING = {"SAME": 0, "VALID": 1}
_ACTIVATION = {"NONE": 0, "RELU": 1, "RELU_N1_TO_1": 2, "RELU6": 3}
# Operator versions of the int8 kernels (TFLite's tools/optimize/operator_property.cc);
# fp32 operators are version 1.
_INT8_VERSIONS = {
    "ADD": 2,
    "AVERAGE_POOL_2D": 2,
    "CONCATENATION": 2,
    "CONV_2D": 3,
    "DEPTHWISE_CONV_2D": 3,
    "FULLY_CONNECTED": 4,
    "HARD_SWISH": 1,
    "LEAKY_RELU": 2,
    "LOGISTIC": 2,
    "MAXIMUM": 2,
    "MAX_POOL_2D": 2,
    "MEAN": 2,
    "MINIMUM": 2,
    "MUL": 2,
    "PAD": 2,
    "PADV2": 2,
    "RELU": 2,
    "RELU6": 2,
    "RELU_N1_TO_1": 1,
    "RESHAPE": 1,
    "SOFTMAX": 2,
    "SUB": 2,
    "TANH": 2,
    "TRANSPOSE": 2,
}


def builtin_code(kind: str) -> int:
    """The BuiltinOperator enum value of ``kind`` (e.g. "CONV_2D")."""
    from tflite.BuiltinOperator import BuiltinOperator

    try:
        return int(getattr(BuiltinOperator, kind))
    except AttributeError:
        raise ValueError(f"unknown TFLite builtin operator {kind!r}") from None


def op_version(op: Op, graph: Graph) -> int:
    tensors = [graph.tensors[n] for n in [*op.inputs, *op.outputs] if n is not None]
    if any(t.dtype == "int8" for t in tensors):
        return _INT8_VERSIONS.get(op.kind, 1)
    return 1


def write(graph: Graph, input_names: list[str], output_names: list[str], description: str = "edgekiln") -> bytes:
    """The ``.tflite`` bytes of ``graph``; ``input_names``/``output_names`` name the
    signature's tensors (the source model's names)."""
    import flatbuffers

    used = graph.used_tensors()
    index = {name: i for i, name in enumerate(used)}
    constants = [graph.tensors[n] for n in used if graph.tensors[n].is_const]
    size = sum(t.data.nbytes for t in constants)
    builder = flatbuffers.Builder(size + (1 << 20))

    # Children before parents: a flatbuffer table can only refer to objects already written.
    # Weights first, so the large vectors sit at the end of the file, after the metadata.
    buffer_of: dict[str, int] = {}
    data_offsets: list[int] = []
    for tensor in constants:
        buffer_of[tensor.name] = len(data_offsets) + 1
        data_offsets.append(_aligned_bytes(builder, _tensor_bytes(tensor)))
    buffers = [_table(builder, "Buffer", {})]
    buffers += [_table(builder, "Buffer", {"Data": off}) for off in data_offsets]

    tensor_offsets = [_write_tensor(builder, graph.tensors[n], buffer_of.get(n, 0)) for n in used]

    codes: dict[tuple[str, int], int] = {}
    operator_offsets = []
    for op in graph.ops:
        key = (op.kind, op_version(op, graph))
        opcode = codes.setdefault(key, len(codes))
        operator_offsets.append(_write_operator(builder, op, opcode, index))

    code_offsets = []
    for kind, version in codes:
        code = builtin_code(kind)
        # deprecated_builtin_code is an int8: codes above 127 go there as the placeholder 127.
        code_offsets.append(
            _table(
                builder,
                "OperatorCode",
                {
                    "DeprecatedBuiltinCode": min(code, 127),
                    "Version": version,
                    "BuiltinCode": code,
                },
            )
        )

    name = builder.CreateString("main")
    subgraph = _table(
        builder,
        "SubGraph",
        {
            "Tensors": _offset_vector(builder, "SubGraph", "Tensors", tensor_offsets),
            "Inputs": builder.CreateNumpyVector(np.array([index[n] for n in graph.inputs], np.int32)),
            "Outputs": builder.CreateNumpyVector(np.array([index[n] for n in graph.outputs], np.int32)),
            "Operators": _offset_vector(builder, "SubGraph", "Operators", operator_offsets),
            "Name": name,
        },
    )
    signature = _signature(
        builder,
        [(a, index[b]) for a, b in zip(input_names, graph.inputs)],
        [(a, index[b]) for a, b in zip(output_names, graph.outputs)],
    )
    text = builder.CreateString(description)
    model = _table(
        builder,
        "Model",
        {
            "Version": SCHEMA_VERSION,
            "OperatorCodes": _offset_vector(builder, "Model", "OperatorCodes", code_offsets),
            "Subgraphs": _offset_vector(builder, "Model", "Subgraphs", [subgraph]),
            "Description": text,
            "Buffers": _offset_vector(builder, "Model", "Buffers", buffers),
            "SignatureDefs": _offset_vector(builder, "Model", "SignatureDefs", [signature]),
        },
    )
    builder.Finish(model, file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def _module(cls: str) -> Any:
    return importlib.import_module(f"tflite.{cls}")


def _table(builder: Any, cls: str, fields: dict[str, Any]) -> int:
    module = _module(cls)
    getattr(module, f"{cls}Start")(builder)
    for key, value in fields.items():
        getattr(module, f"{cls}Add{key}")(builder, value)
    return getattr(module, f"{cls}End")(builder)


def _offset_vector(builder: Any, cls: str, field: str, offsets: list[int]) -> int:
    getattr(_module(cls), f"{cls}Start{field}Vector")(builder, len(offsets))
    for off in reversed(offsets):
        builder.PrependUOffsetTRelative(off)
    return builder.EndVector()


def _aligned_bytes(builder: Any, data: bytes) -> int:
    # CreateByteVector aligns to 1 byte; weights read as float/int32 want their natural
    # alignment at least, and SIMD kernels that read them in place like 16.
    builder.StartVector(1, len(data), _ALIGN)
    builder.head = builder.head - len(data)
    builder.Bytes[builder.head : builder.head + len(data)] = data
    return builder.EndVector()


def _tensor_bytes(tensor: Tensor) -> bytes:
    dtype = {"float32": "<f4", "int32": "<i4", "int8": "i1"}[tensor.dtype]
    return np.ascontiguousarray(tensor.data, dtype=dtype).tobytes()


def _write_tensor(builder: Any, tensor: Tensor, buffer: int) -> int:
    name = builder.CreateString(tensor.name)
    shape = builder.CreateNumpyVector(np.array(tensor.shape, np.int32))
    quant = None
    if tensor.quant is not None:
        scale = builder.CreateNumpyVector(np.asarray(tensor.quant.scale, np.float32))
        zero = builder.CreateNumpyVector(np.asarray(tensor.quant.zero_point, np.int64))
        quant = _table(
            builder,
            "QuantizationParameters",
            {
                "Scale": scale,
                "ZeroPoint": zero,
                "QuantizedDimension": int(tensor.quant.axis),
            },
        )
    fields: dict[str, Any] = {"Shape": shape, "Type": _TENSOR_TYPES[tensor.dtype], "Buffer": buffer, "Name": name}
    if quant is not None:
        fields["Quantization"] = quant
    return _table(builder, "Tensor", fields)


def _write_operator(builder: Any, op: Op, opcode: int, index: dict[str, int]) -> int:
    inputs = builder.CreateNumpyVector(np.array([index[n] if n is not None else -1 for n in op.inputs], np.int32))
    outputs = builder.CreateNumpyVector(np.array([index[n] for n in op.outputs], np.int32))
    options = _builtin_options(builder, op)
    fields: dict[str, Any] = {"OpcodeIndex": opcode, "Inputs": inputs, "Outputs": outputs}
    if options is not None:
        kind, offset = options
        from tflite.BuiltinOptions import BuiltinOptions

        fields["BuiltinOptionsType"] = int(getattr(BuiltinOptions, kind))
        fields["BuiltinOptions"] = offset
    return _table(builder, "Operator", fields)


# The fields of each operator kind's options table: builder, the op's options and the
# fused-activation code in, the table's fields (in flatbuffer field order) out.
_OptionFields = Callable[[Any, Mapping[str, Any], int], dict[str, Any]]


def _conv2d_fields(builder: Any, o: Mapping[str, Any], act: int) -> dict[str, Any]:
    return {
        "Padding": _PADDING[o["padding"]],
        "StrideH": o["stride"][0],
        "StrideW": o["stride"][1],
        "DilationHFactor": o["dilation"][0],
        "DilationWFactor": o["dilation"][1],
        "FusedActivationFunction": act,
    }


def _depthwise_conv2d_fields(builder: Any, o: Mapping[str, Any], act: int) -> dict[str, Any]:
    return {
        "Padding": _PADDING[o["padding"]],
        "StrideH": o["stride"][0],
        "StrideW": o["stride"][1],
        "DepthMultiplier": o["depth_multiplier"],
        "DilationHFactor": o["dilation"][0],
        "DilationWFactor": o["dilation"][1],
        "FusedActivationFunction": act,
    }


def _fully_connected_fields(builder: Any, o: Mapping[str, Any], act: int) -> dict[str, Any]:
    return {"FusedActivationFunction": act, "KeepNumDims": bool(o.get("keep_num_dims", False))}


def _activation_fields(builder: Any, o: Mapping[str, Any], act: int) -> dict[str, Any]:
    return {"FusedActivationFunction": act}


def _pool2d_fields(builder: Any, o: Mapping[str, Any], act: int) -> dict[str, Any]:
    return {
        "Padding": _PADDING[o["padding"]],
        "StrideH": o["stride"][0],
        "StrideW": o["stride"][1],
        "FilterHeight": o["filter"][0],
        "FilterWidth": o["filter"][1],
        "FusedActivationFunction": act,
    }


def _reshape_fields(builder: Any, o: Mapping[str, Any], act: int) -> dict[str, Any]:
    return {"NewShape": builder.CreateNumpyVector(np.array(o["new_shape"], np.int32))}


def _no_fields(builder: Any, o: Mapping[str, Any], act: int) -> dict[str, Any]:
    return {}


_BUILTIN_OPTIONS: dict[str, tuple[str, _OptionFields]] = {
    "CONV_2D": ("Conv2DOptions", _conv2d_fields),
    "DEPTHWISE_CONV_2D": ("DepthwiseConv2DOptions", _depthwise_conv2d_fields),
    "FULLY_CONNECTED": ("FullyConnectedOptions", _fully_connected_fields),
    "ADD": ("AddOptions", _activation_fields),
    "SUB": ("SubOptions", _activation_fields),
    "MUL": ("MulOptions", _activation_fields),
    "DIV": ("DivOptions", _activation_fields),
    "MAX_POOL_2D": ("Pool2DOptions", _pool2d_fields),
    "AVERAGE_POOL_2D": ("Pool2DOptions", _pool2d_fields),
    "MEAN": ("ReducerOptions", lambda b, o, act: {"KeepDims": bool(o["keep_dims"])}),
    "RESHAPE": ("ReshapeOptions", _reshape_fields),
    "SOFTMAX": ("SoftmaxOptions", lambda b, o, act: {"Beta": float(o.get("beta", 1.0))}),
    "CONCATENATION": (
        "ConcatenationOptions",
        lambda b, o, act: {"Axis": int(o["axis"]), "FusedActivationFunction": act},
    ),
    "LEAKY_RELU": ("LeakyReluOptions", lambda b, o, act: {"Alpha": float(o["alpha"])}),
    "PAD": ("PadOptions", _no_fields),
    "PADV2": ("PadV2Options", _no_fields),
    "TRANSPOSE": ("TransposeOptions", _no_fields),
    "MAXIMUM": ("MaximumMinimumOptions", _no_fields),
    "MINIMUM": ("MaximumMinimumOptions", _no_fields),
    "HARD_SWISH": ("HardSwishOptions", _no_fields),
    # Begin and end are given in full (resolved from the known shape), so no masks.
    "STRIDED_SLICE": ("StridedSliceOptions", _no_fields),
    "SQUARED_DIFFERENCE": ("SquaredDifferenceOptions", _no_fields),
    "GELU": ("GeluOptions", lambda b, o, act: {"Approximate": bool(o.get("approximate", False))}),
    "LOCAL_RESPONSE_NORMALIZATION": (
        "LocalResponseNormalizationOptions",
        lambda b, o, act: {
            "Radius": int(o["radius"]),
            "Bias": float(o["bias"]),
            "Alpha": float(o["alpha"]),
            "Beta": float(o["beta"]),
        },
    ),
}


def _builtin_options(builder: Any, op: Op) -> tuple[str, int] | None:
    """The op's options table as (BuiltinOptions kind, offset); None for a kind without one."""
    o = op.options
    act = _ACTIVATION[o.get("activation", "NONE")]
    entry = _BUILTIN_OPTIONS.get(op.kind)
    if entry is None:
        return None
    cls, fields = entry
    return cls, _table(builder, cls, fields(builder, o, act))


def _signature(builder: Any, inputs: list[tuple[str, int]], outputs: list[tuple[str, int]]) -> int:
    def maps(items: list[tuple[str, int]], field: str) -> int:
        offsets = []
        for name, tensor in items:
            text = builder.CreateString(name)
            offsets.append(_table(builder, "TensorMap", {"Name": text, "TensorIndex": tensor}))
        return _offset_vector(builder, "SignatureDef", field, offsets)

    ins, outs = maps(inputs, "Inputs"), maps(outputs, "Outputs")
    key = builder.CreateString("serving_default")
    return _table(builder, "SignatureDef", {"Inputs": ins, "Outputs": outs, "SignatureKey": key, "SubgraphIndex": 0})
