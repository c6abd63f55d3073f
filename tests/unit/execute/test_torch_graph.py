"""The PyTorch baseline's graph converter against ONNX Runtime on the same graph."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edgekiln.errors import UserError


def test_zoo_mobilenet_v3_small_matches_onnxruntime():
    # MobileNetV3 covers every op the zoo uses but MaxPool: Conv (grouped), BatchNorm,
    # HardSwish, HardSigmoid, Relu, Mul, Add, GlobalAveragePool, Flatten, Gemm.
    from edgekiln import zoo
    from edgekiln.execute.torch_graph import convert

    model = zoo.build("mobilenet_v3_small")
    module = convert(model)
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    with torch.inference_mode():
        got = module(torch.from_numpy(x)).numpy()
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[
        0
    ]
    assert got.shape == want.shape == (1, 1000)
    assert np.max(np.abs(got - want)) < 1e-4
    assert np.argmax(got) == np.argmax(want)


def test_small_graph_with_pooling_clip_and_asymmetric_pads():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgekiln.execute.torch_graph import convert

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    lo = numpy_helper.from_array(np.array(0.0, np.float32), "lo")
    hi = numpy_helper.from_array(np.array(6.0, np.float32), "hi")
    shape = numpy_helper.from_array(np.array([1, -1], np.int64), "shape")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[0, 0, 1, 1], strides=[2, 2]),
        helper.make_node("Clip", ["c", "lo", "hi"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("AveragePool", ["p"], ["a"], kernel_shape=[2, 2], strides=[1, 1]),
        helper.make_node("Reshape", ["a", "shape"], ["y0"]),
        helper.make_node("Softmax", ["y0"], ["y"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 36])],
        [w, lo, hi, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    with torch.inference_mode():
        got = convert(model)(torch.from_numpy(x)).numpy()
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert got.shape == want.shape == (1, 36)
    assert np.max(np.abs(got - want)) < 1e-5


def test_unsupported_operators_are_named():
    from onnx import TensorProto, helper

    from edgekiln.execute.torch_graph import convert

    graph = helper.make_graph(
        [helper.make_node("LSTM", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
    )
    with pytest.raises(UserError, match="LSTM"):
        convert(helper.make_model(graph))
