"""ONNX → TFLite conversion, one operator (or pattern) at a time: each small graph is
converted, written as a .tflite, run by LiteRT (XNNPACK) and compared with ONNX Runtime."""

from __future__ import annotations

import ai_edge_litert  # noqa: F401 - an installed extra: missing must fail, not skip
import numpy as np
import pytest
import tflite  # noqa: F401 - an installed extra: missing must fail, not skip
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgekiln.compile.backends.litert.convert import convert  # noqa: E402
from edgekiln.compile.backends.litert.writer import write  # noqa: E402
from edgekiln.errors import BackendError  # noqa: E402

RNG = np.random.default_rng(7)


def make_model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        initializer=[
            numpy_helper.from_array(np.asarray(a, np.float32 if a.dtype.kind == "f" else a.dtype), n) for n, a in inits
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def run_tflite(content: bytes, graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=content, num_threads=1)
    it.allocate_tensors()
    for detail, x, layout in zip(it.get_input_details(), inputs, graph.input_layouts):
        it.set_tensor(detail["index"], np.ascontiguousarray(x.transpose(0, 2, 3, 1) if layout == "NHWC" else x))
    it.invoke()
    outs = []
    for detail, layout in zip(it.get_output_details(), graph.output_layouts):
        y = it.get_tensor(detail["index"])
        outs.append(y.transpose(0, 3, 1, 2) if layout == "NHWC" else y)
    return outs


def check(model, atol=1e-5, inputs=None):
    """Convert ``model``, run both engines on random inputs, return the LiteRT graph."""
    import onnxruntime as ort

    graph = convert(model, "test")
    content = write(graph, [i.name for i in model.graph.input], [o.name for o in model.graph.output])
    if inputs is None:
        inputs = [
            RNG.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
            for i in model.graph.input
            if i.name not in {t.name for t in model.graph.initializer}
        ]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {i.name: x for i, x in zip(model.graph.input, inputs)})
    got = run_tflite(content, graph, inputs)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, atol=atol, rtol=0)
    return graph


def kinds(graph) -> list[str]:
    return [op.kind for op in graph.ops]


def conv_weights(cout, cin, k):
    return RNG.standard_normal((cout, cin, k, k)).astype(np.float32) / np.sqrt(cin * k * k)


@pytest.mark.parametrize(
    "size,k,stride,pads,dilation",
    [
        (9, 3, 1, [1, 1, 1, 1], 1),  # SAME
        (8, 3, 2, [1, 1, 1, 1], 1),  # ONNX pads the top, TFLite SAME the bottom: explicit PAD
        (9, 3, 2, [1, 1, 1, 1], 1),  # odd size: SAME agrees
        (8, 7, 2, [3, 3, 3, 3], 1),  # ResNet stem
        (8, 1, 2, [0, 0, 0, 0], 1),  # VALID
        (9, 3, 1, [2, 2, 2, 2], 2),  # dilated
        (8, 3, 1, [0, 1, 2, 0], 1),  # asymmetric explicit pads
    ],
)
def test_conv_padding_strides_dilation(size, k, stride, pads, dilation):
    w = conv_weights(6, 4, k)
    b = RNG.standard_normal(6).astype(np.float32)
    node = helper.make_node(
        "Conv",
        ["x", "w", "b"],
        ["y"],
        name="conv",
        kernel_shape=[k, k],
        strides=[stride, stride],
        pads=pads,
        dilations=[dilation, dilation],
    )
    graph = check(make_model([node], [("x", [1, 4, size, size])], ["y"], [("w", w), ("b", b)]))
    assert kinds(graph)[-1] == "CONV_2D"


def test_auto_pad_same_upper_and_lower():
    w = conv_weights(4, 4, 3)
    for mode in ("SAME_UPPER", "SAME_LOWER", "VALID"):
        node = helper.make_node(
            "Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[3, 3], strides=[2, 2], auto_pad=mode
        )
        check(make_model([node], [("x", [1, 4, 8, 8])], ["y"], [("w", w)]))


@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_conv(multiplier):
    w = RNG.standard_normal((4 * multiplier, 1, 3, 3)).astype(np.float32)
    node = helper.make_node(
        "Conv", ["x", "w"], ["y"], name="dw", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], group=4
    )
    graph = check(make_model([node], [("x", [1, 4, 8, 8])], ["y"], [("w", w)]))
    assert "DEPTHWISE_CONV_2D" in kinds(graph)
    dw = next(op for op in graph.ops if op.kind == "DEPTHWISE_CONV_2D")
    assert dw.options["depth_multiplier"] == multiplier


def bn_inits(prefix, c):
    return [
        (f"{prefix}.g", 1 + 0.1 * RNG.standard_normal(c)),
        (f"{prefix}.b", 0.1 * RNG.standard_normal(c)),
        (f"{prefix}.m", 0.1 * RNG.standard_normal(c)),
        (f"{prefix}.v", 1 + 0.2 * RNG.random(c)),
    ]


def bn(x, y, prefix, eps=1e-3):
    return helper.make_node(
        "BatchNormalization",
        [x, f"{prefix}.g", f"{prefix}.b", f"{prefix}.m", f"{prefix}.v"],
        [y],
        name=prefix,
        epsilon=eps,
    )


def clip(x, y, name):
    return helper.make_node("Clip", [x, "zero", "six"], [y], name=name)


SCALARS = [("zero", np.array(0.0, np.float32)), ("six", np.array(6.0, np.float32))]


def test_conv_batchnorm_relu6_fuse_into_one_operator():
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        bn("c", "n", "bn"),
        clip("n", "y", "act"),
    ]
    graph = check(
        make_model(nodes, [("x", [1, 3, 8, 8])], ["y"], [("w", conv_weights(8, 3, 3)), *bn_inits("bn", 8), *SCALARS])
    )
    assert kinds(graph) == ["CONV_2D"]
    assert graph.ops[0].options["activation"] == "RELU6"


def test_batchnorm_not_fused_when_its_input_has_other_readers():
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[1, 1]),
        bn("c", "n", "bn"),
        helper.make_node("Add", ["n", "c"], ["y"], name="add"),
    ]
    graph = check(make_model(nodes, [("x", [1, 3, 5, 5])], ["y"], [("w", conv_weights(3, 3, 1)), *bn_inits("bn", 3)]))
    assert kinds(graph) == ["CONV_2D", "MUL", "ADD", "ADD"]


def test_activations():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu"),
        helper.make_node("Clip", ["x", "m1", "p1"], ["b"], name="clip_n1_1"),
        helper.make_node("Clip", ["x", "lo", "hi"], ["c"], name="clip_general"),
        helper.make_node("Clip", ["x", "", "hi"], ["d"], name="clip_max_only"),
        helper.make_node("HardSwish", ["x"], ["e"], name="hswish"),
        helper.make_node("HardSigmoid", ["x"], ["f"], name="hsig_torch", alpha=1 / 6, beta=0.5),
        helper.make_node("HardSigmoid", ["x"], ["g"], name="hsig_onnx"),
        helper.make_node("Sigmoid", ["x"], ["h"], name="sigmoid"),
        helper.make_node("Tanh", ["x"], ["i"], name="tanh"),
        helper.make_node("LeakyRelu", ["x"], ["j"], name="leaky", alpha=0.1),
    ]
    inits = [
        ("m1", np.array(-1.0, np.float32)),
        ("p1", np.array(1.0, np.float32)),
        ("lo", np.array(-0.5, np.float32)),
        ("hi", np.array(0.7, np.float32)),
    ]
    x = [3 * RNG.standard_normal((1, 4, 6, 6)).astype(np.float32)]
    graph = check(make_model(nodes, [("x", [1, 4, 6, 6])], list("abcdefghij"), inits), atol=2e-6, inputs=x)
    assert {"RELU", "RELU_N1_TO_1", "MAXIMUM", "MINIMUM", "HARD_SWISH", "LOGISTIC", "TANH", "LEAKY_RELU"} <= set(
        kinds(graph)
    )


def test_binary_operators_with_broadcast_constants():
    c = RNG.standard_normal((4, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Relu", ["x"], ["rx"], name="relu"),
        helper.make_node("Add", ["rx", "one"], ["p"], name="positive"),
        helper.make_node("Add", ["x", "c"], ["a"], name="add_const"),
        helper.make_node("Sub", ["a", "s"], ["b"], name="sub_scalar"),
        helper.make_node("Mul", ["c4", "b"], ["m"], name="mul_const_first"),
        helper.make_node("Div", ["m", "d"], ["q"], name="div_const"),
        helper.make_node("Sub", ["q", "x"], ["r"], name="sub_computed"),
        helper.make_node("Div", ["r", "p"], ["y"], name="div_computed"),
    ]
    inits = [
        ("c", c),
        ("s", np.array(0.25, np.float32)),
        ("c4", RNG.standard_normal((1, 4, 1, 1))),
        ("d", np.array([2.0, 4.0, 0.5, 1.5, 3.0, 1.0], np.float32)),
        ("one", np.array(1.0, np.float32)),
    ]
    graph = check(make_model(nodes, [("x", [1, 4, 5, 6])], ["y"], inits), atol=1e-5)
    assert "DIV" in kinds(graph) and "SUB" in kinds(graph)


def test_squeeze_excitation_pattern():
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["p"], name="pool"),
        helper.make_node("Conv", ["p", "w1", "b1"], ["f1"], name="fc1", kernel_shape=[1, 1]),
        helper.make_node("Relu", ["f1"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2", "b2"], ["f2"], name="fc2", kernel_shape=[1, 1]),
        helper.make_node("HardSigmoid", ["f2"], ["g"], name="gate", alpha=1 / 6, beta=0.5),
        helper.make_node("Mul", ["x", "g"], ["y"], name="scale"),
    ]
    inits = [
        ("w1", conv_weights(2, 8, 1)),
        ("b1", RNG.standard_normal(2)),
        ("w2", conv_weights(8, 2, 1)),
        ("b2", RNG.standard_normal(8)),
    ]
    graph = check(make_model(nodes, [("x", [1, 8, 5, 5])], ["y"], inits))
    assert kinds(graph).count("CONV_2D") == 2 and "RELU" not in kinds(graph)


@pytest.mark.parametrize("axes,keepdims", [([2, 3], 1), ([2, 3], 0), ([1], 1), ([3], 1)])
def test_reduce_mean(axes, keepdims):
    node = helper.make_node("ReduceMean", ["x"], ["y"], name="mean", axes=axes, keepdims=keepdims)
    check(make_model([node], [("x", [1, 4, 5, 6])], ["y"]))


def test_reduce_mean_opset18_axes_input():
    node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="mean", keepdims=1)
    check(make_model([node], [("x", [1, 4, 5, 6])], ["y"], [("axes", np.array([2, 3], np.int64))], opset=18))


@pytest.mark.parametrize("trans_b,alpha,beta", [(1, 1.0, 1.0), (0, 0.5, 2.0)])
def test_gemm_and_flatten(trans_b, alpha, beta):
    b = RNG.standard_normal((10, 48) if trans_b else (48, 10)).astype(np.float32)
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "b", "c"], ["y"], name="fc", transB=trans_b, alpha=alpha, beta=beta),
    ]
    # A 4x3x4 map: flattening must follow ONNX's NCHW order, not the model's NHWC.
    graph = check(make_model(nodes, [("x", [1, 4, 3, 4])], ["y"], [("b", b), ("c", RNG.standard_normal(10))]))
    assert kinds(graph) == ["TRANSPOSE", "RESHAPE", "FULLY_CONNECTED"]


def test_matmul_and_reshape_through_shape_arithmetic():
    # What torch.onnx exports for x.view(x.size(0), -1): Shape → Gather → Unsqueeze → Concat.
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "zero_i"], ["n"], name="gather", axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"], name="unsq"),
        helper.make_node("Concat", ["n1", "minus1"], ["shape2"], name="cat", axis=0),
        helper.make_node("Reshape", ["x", "shape2"], ["f"], name="reshape"),
        helper.make_node("MatMul", ["f", "w"], ["y"], name="matmul"),
    ]
    inits = [
        ("zero_i", np.array(0, np.int64)),
        ("axes0", np.array([0], np.int64)),
        ("minus1", np.array([-1], np.int64)),
        ("w", RNG.standard_normal((2 * 3 * 3, 5))),
    ]
    graph = check(make_model(nodes, [("x", [1, 2, 3, 3])], ["y"], inits))
    assert kinds(graph) == ["TRANSPOSE", "RESHAPE", "FULLY_CONNECTED"]


def test_reshape_to_4d_and_transpose():
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"], name="reshape"),
        helper.make_node("Transpose", ["r"], ["t"], name="transpose", perm=[0, 2, 1, 3]),
        helper.make_node("Relu", ["t"], ["y"], name="relu"),
    ]
    check(make_model(nodes, [("x", [1, 4, 6, 2])], ["y"], [("shape", np.array([1, 8, 3, 2], np.int64))]))


@pytest.mark.parametrize("after_relu", [True, False])
def test_maxpool_with_onnx_padding(after_relu):
    nodes = [
        helper.make_node("Relu" if after_relu else "Identity", ["x"], ["r"], name="pre"),
        helper.make_node("MaxPool", ["r"], ["y"], name="pool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    ]
    graph = check(make_model(nodes, [("x", [1, 4, 8, 8])], ["y"]))
    # After a ReLU zero padding equals -inf padding and stays inside XNNPACK (PADV2 does not).
    assert ("PAD" if after_relu else "PADV2") in kinds(graph)


@pytest.mark.parametrize("pads,include", [([0, 0, 0, 0], 0), ([1, 1, 1, 1], 1), ([1, 1, 1, 1], 0)])
def test_average_pool(pads, include):
    node = helper.make_node(
        "AveragePool",
        ["x"],
        ["y"],
        name="avg",
        kernel_shape=[3, 3],
        strides=[1, 1],
        pads=pads,
        count_include_pad=include,
    )
    check(make_model([node], [("x", [1, 4, 7, 7])], ["y"]))


def test_pad_softmax_concat_dropout():
    nodes = [
        helper.make_node("Pad", ["x", "pads", "val"], ["p"], name="pad"),
        helper.make_node("Pad", ["x", "pads"], ["p0"], name="pad0"),
        helper.make_node("Concat", ["p", "p0"], ["c"], name="concat", axis=1),
        helper.make_node("Dropout", ["c"], ["d"], name="dropout"),
        helper.make_node("GlobalAveragePool", ["d"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Softmax", ["f"], ["y"], name="softmax", axis=-1),
    ]
    inits = [("pads", np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)), ("val", np.array(0.5, np.float32))]
    graph = check(make_model(nodes, [("x", [1, 3, 4, 4])], ["y", "c"], inits))
    assert graph.output_layouts == ["same", "NHWC"]
    assert {"PAD", "PADV2", "CONCATENATION", "SOFTMAX"} <= set(kinds(graph))


def test_unsupported_operators_are_all_named():
    nodes = [
        helper.make_node("Erf", ["x"], ["a"], name="erf1"),
        helper.make_node("Relu", ["a"], ["b"], name="ok"),
        helper.make_node("LpNormalization", ["b"], ["y"], name="lpnorm"),
    ]
    with pytest.raises(BackendError) as err:
        convert(make_model(nodes, [("x", [1, 4])], ["y"]), "zoo:custom")
    message = str(err.value)
    assert "2 operator(s) of zoo:custom" in message
    assert "Erf (node 'erf1')" in message and "LpNormalization (node 'lpnorm')" in message
    assert err.value.exit_code == 4


def test_unsupported_attributes_name_the_node():
    node = helper.make_node("LRN", ["x"], ["y"], name="even", size=4)
    with pytest.raises(BackendError, match=r"LRN \(node 'even'\).*even window size \(4\)") as err:
        convert(make_model([node], [("x", [1, 8, 6, 6])], ["y"]))
    assert "--backend onnxruntime" in err.value.one_line()


@pytest.mark.parametrize("group,cin,cout", [(2, 4, 6), (3, 24, 24), (8, 16, 32)])
def test_grouped_conv_is_one_conv2d_with_batchnorm_folded(group, cin, cout):
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=group),
        bn("c", "b", "bn", eps=1e-5),
        helper.make_node("Relu", ["b"], ["y"]),
    ]
    inits = [("w", conv_weights(cout, cin // group, 3)), *bn_inits("bn", cout)]
    graph = check(make_model(nodes, [("x", [1, cin, 8, 8])], ["y"], inits))
    assert kinds(graph) == ["CONV_2D"]


def test_slice_and_split_as_torch_exports_chunk():
    nodes = [
        helper.make_node("Split", ["x", "sizes"], ["a", "b"], axis=1),
        helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["c"]),
        helper.make_node("Concat", ["b", "a", "c"], ["y"], axis=1),
    ]
    inits = [
        ("sizes", np.array([3, 5], np.int64)),
        ("st", np.array([1, -9], np.int64)),
        ("en", np.array([np.iinfo(np.int64).max, 9], np.int64)),
        ("ax", np.array([1, -1], np.int64)),
        ("sp", np.array([2, 1], np.int64)),
    ]
    graph = check(make_model(nodes, [("x", [1, 8, 5, 5])], ["y"], inits), atol=0)
    assert kinds(graph).count("STRIDED_SLICE") == 3


def test_sum_lrn_and_old_opset_slice():
    nodes = [
        helper.make_node("Sum", ["x", "x2", "c"], ["s"]),
        helper.make_node("LRN", ["s"], ["n"], size=5, alpha=1e-2, beta=0.75, bias=2.0),
        helper.make_node("Slice", ["n"], ["y"], starts=[1], ends=[3], axes=[2]),
    ]
    inits = [("c", RNG.standard_normal((6, 1, 1)).astype(np.float32))]
    graph = check(make_model(nodes, [("x", [1, 6, 5, 5]), ("x2", [1, 6, 5, 5])], ["y"], inits, opset=9))
    assert kinds(graph) == ["ADD", "ADD", "LOCAL_RESPONSE_NORMALIZATION", "STRIDED_SLICE"]


def test_convnext_block_layernorm_gelu_without_transposes():
    """permute → LayerNorm → Linear → GELU (torch's Erf formula) → Linear → permute."""
    c = 8
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("LayerNormalization", ["t", "g", "b"], ["ln"], axis=-1, epsilon=1e-6),
        helper.make_node("MatMul", ["ln", "w1"], ["h"]),
        helper.make_node("Div", ["h", "sqrt2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"], name="erf"),
        helper.make_node("Add", ["e", "one"], ["e1"]),
        helper.make_node("Mul", ["h", "e1"], ["m"]),
        helper.make_node("Mul", ["m", "half"], ["gelu"]),
        helper.make_node("MatMul", ["gelu", "w2"], ["o"]),
        helper.make_node("Transpose", ["o"], ["y"], perm=[0, 3, 1, 2]),
    ]
    inits = [
        ("g", 1 + 0.1 * RNG.standard_normal(c)),
        ("b", 0.1 * RNG.standard_normal(c)),
        ("w1", RNG.standard_normal((c, 4 * c)) / np.sqrt(c)),
        ("w2", RNG.standard_normal((4 * c, c)) / np.sqrt(4 * c)),
        ("sqrt2", np.array(np.sqrt(2.0))),
        ("one", np.array(1.0)),
        ("half", np.array(0.5)),
    ]
    graph = check(make_model(nodes, [("x", [1, c, 5, 5])], ["y"], inits))
    assert "TRANSPOSE" not in kinds(graph) and "GELU" in kinds(graph)
    assert kinds(graph).count("FULLY_CONNECTED") == 2


def test_layernorm_over_channels_of_an_nchw_tensor_and_ceil_mode_pool():
    nodes = [
        helper.make_node("LayerNormalization", ["x", "g"], ["n"], axis=1, epsilon=1e-5),
        helper.make_node("MaxPool", ["n"], ["y"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    ]
    inits = [("g", RNG.standard_normal((4, 6, 6)))]
    check(make_model(nodes, [("x", [1, 4, 6, 6])], ["y"], inits))


def test_custom_domain_is_unsupported():
    node = helper.make_node("Gelu", ["x"], ["y"], name="g", domain="com.microsoft")
    model = make_model([node], [("x", [1, 4])], ["y"])
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(BackendError, match=r"com\.microsoft\.Gelu \(node 'g'\)"):
        convert(model)
