"""What the ONNX → TFLite converter's modules share: the value type, the error for a node it
cannot express, layout constants and small ONNX helpers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# A node the converter cannot express (turned into one BackendError for the model), and the
# ONNX attribute reader; shared with the constant folding.
from edgekiln.compile.backends.onnx_fold import Unsupported as Unsupported
from edgekiln.compile.backends.onnx_fold import attr as attr

# NCHW axis → NHWC axis, and the inverse.
TO_NHWC_AXIS = {0: 0, 1: 3, 2: 1, 3: 2}
NCHW_TO_NHWC = (0, 2, 3, 1)
NHWC_TO_NCHW = (0, 3, 1, 2)
LOWEST = float(np.finfo(np.float32).min)


@dataclass
class Value:
    """An ONNX value in the TFLite graph: a tensor and how its axes relate to ONNX's."""

    tensor: str
    layout: str  # "nhwc": ONNX NCHW value stored transposed; "plain": ONNX axis order
    shape: tuple[int, ...]  # the ONNX shape


def optional_input(node: Any, index: int) -> str | None:
    return node.input[index] if len(node.input) > index and node.input[index] else None


def scalar(array: np.ndarray) -> float:
    if array.size != 1:
        raise Unsupported(f"expected a scalar constant, got shape {list(array.shape)}")
    return float(array.reshape(-1)[0])


def nhwc(shape: tuple[int, ...]) -> tuple[int, ...]:
    n, c, h, w = shape
    return (n, h, w, c)


def same_order(shape: tuple[int, ...], perm: tuple[int, ...]) -> bool:
    """Whether transposing ``shape`` by ``perm`` keeps the data order (only size-1 axes move)."""
    return [a for a in range(len(shape)) if shape[a] > 1] == [a for a in perm if shape[a] > 1]


def pool_out(size: tuple[int, ...], kernel: tuple[int, ...], strides: tuple[int, ...], padding: str) -> list[int]:
    if padding == "SAME":
        return [-(-s // st) for s, st in zip(size, strides)]
    return [(s - k) // st + 1 for s, k, st in zip(size, kernel, strides)]


def short(name: str) -> str:
    return name.rsplit("/", 1)[-1]
