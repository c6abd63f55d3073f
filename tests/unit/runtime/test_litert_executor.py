"""The LiteRT executor's boundary conversions (int8 quantization, threads), without a model."""

from __future__ import annotations

import os

import numpy as np

from edgekiln.runtime.executors import litert


def test_float_inputs_are_quantized_like_tflite_quantize():
    detail = {"dtype": np.int8, "quantization": (0.5, -3)}
    x = np.array([0.3, -0.3, 0.8, 100.0, -100.0, 0.0, 0.75], np.float32)
    # x / scale rounded to the nearest integer (ties to even), plus the zero point, saturated
    assert litert._to_tensor(x, detail).tolist() == [-2, -4, -1, 127, -128, -3, -1]
    assert litert._to_tensor(x, detail).dtype == np.int8


def test_float_tensors_pass_through_and_int8_outputs_are_dequantized():
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    out = litert._to_tensor(x, {"dtype": np.float32, "quantization": (0.0, 0)})
    assert out.dtype == np.float32 and np.array_equal(out, x)
    q = np.array([-3, -1, 127], np.int8)
    y = litert._from_tensor(q, {"dtype": np.int8, "quantization": (0.5, -3)})
    assert y.dtype == np.float32 and y.tolist() == [0.0, 1.0, 65.0]


def test_threads_never_exceed_the_usable_cores():
    usable = len(os.sched_getaffinity(0))
    assert litert._threads(None) == usable
    assert litert._threads(1) == 1
    assert litert._threads(10_000) == usable
