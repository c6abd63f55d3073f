"""Tensors between numpy and the agent API's ``Tensor`` message (raw little-endian bytes)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from edgekiln.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

# DataType enum value -> numpy dtype name (the Edge Manager values, plus edgekiln's INT8).
DTYPE_NAMES = {0: "uint8", 1: "int16", 2: "int32", 3: "int64", 4: "float16", 5: "float32", 6: "float64", 7: "int8"}
DTYPE_VALUES = {name: value for value, name in DTYPE_NAMES.items()}
ENUM_NAMES = {0: "UINT8", 1: "INT16", 2: "INT32", 3: "INT64", 4: "FLOAT16", 5: "FLOAT32", 6: "FLOAT64", 7: "INT8"}


class TensorError(UserError):
    """A tensor that does not match what the model or the API expects."""


def data_type(dtype: Any) -> int:
    """The DataType enum value of a numpy dtype (or its name)."""
    import numpy as np

    name = np.dtype(dtype).name
    if name not in DTYPE_VALUES:
        raise TensorError(f"dtype {name} has no DataType in the agent API (supported: {', '.join(DTYPE_VALUES)})")
    return DTYPE_VALUES[name]


def metadata(name: str, dtype: Any, shape: Any) -> Any:
    from edgekiln.agents import agent_pb2 as pb

    return pb.TensorMetadata(name=name, data_type=data_type(dtype), shape=[int(d) for d in shape])


def to_proto(array: Any, name: str = "") -> Any:
    """A numpy array as a ``Tensor`` with metadata and C-order little-endian bytes."""
    import numpy as np

    from edgekiln.agents import agent_pb2 as pb

    array = np.asarray(array)
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return pb.Tensor(
        tensor_metadata=metadata(name, array.dtype, array.shape), byte_data=np.ascontiguousarray(little).tobytes()
    )


def from_proto(
    tensor: Any, *, name: str | None = None, dtype: str | None = None, shape: tuple[int, ...] | None = None
) -> np.ndarray:
    """Decode a ``Tensor``; ``name``/``dtype``/``shape`` are what the model expects and
    fill in what the request leaves out (metadata is optional in a predict request).

    A tensor of another dtype is cast to ``dtype`` within its kind (float64 → float32), by
    the rule ``Model.run`` applies (:func:`edgekiln.runtime.model.castable`), so that both
    accept the same arrays."""
    import numpy as np

    from edgekiln.runtime.model import castable

    which = tensor.WhichOneof("data")
    label = name or tensor.tensor_metadata.name or "tensor"
    if which == "shared_memory_handle":
        raise NotImplementedError(f"tensor {label!r}: shared memory handles are not supported; send byte_data")
    if which != "byte_data":
        raise TensorError(f"tensor {label!r} carries no data")
    meta = tensor.tensor_metadata if tensor.HasField("tensor_metadata") else None
    if meta is not None and meta.name and name and meta.name != name:
        raise TensorError(f"tensor {meta.name!r} given where the model expects {name!r}")
    if meta is not None and (meta.shape or meta.name or meta.data_type):
        if meta.data_type not in DTYPE_NAMES:
            raise TensorError(f"tensor {label!r}: unknown data type {meta.data_type}")
        got_dtype = DTYPE_NAMES[meta.data_type]
        got_shape = tuple(int(d) for d in meta.shape)
        if dtype is not None and got_dtype != dtype and not castable(got_dtype, dtype):
            raise TensorError(f"tensor {label!r} is {got_dtype}, the model expects {dtype}")
        if shape is not None and got_shape != tuple(shape):
            raise TensorError(f"tensor {label!r} has shape {list(got_shape)}, the model expects {list(shape)}")
    else:
        if dtype is None or shape is None:
            raise TensorError(f"tensor {label!r} has no metadata (name, data type, shape)")
        got_dtype, got_shape = dtype, tuple(shape)
    if any(d < 0 for d in got_shape):
        raise TensorError(f"tensor {label!r} has a negative dimension in {list(got_shape)}")
    itemsize = np.dtype(got_dtype).itemsize
    expected = math.prod(got_shape) * itemsize  # Python ints: no int64 wrap-around to a match
    if len(tensor.byte_data) != expected:
        raise TensorError(
            f"tensor {label!r}: {len(tensor.byte_data)} bytes of data for {got_dtype} "
            f"{list(got_shape)}, which needs {expected}"
        )
    # A writable, native-order copy: the message's buffer is read-only, and DLPack (the
    # runtime's way into TVM) refuses read-only arrays.
    array = np.frombuffer(tensor.byte_data, dtype=np.dtype(got_dtype).newbyteorder("<")).reshape(got_shape)
    return array.astype(np.dtype(dtype or got_dtype), copy=True)
