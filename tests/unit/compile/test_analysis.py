"""Graph statistics on hand-built ONNX graphs whose counts are worked out by hand."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgekiln.compile.analysis import count_macs, count_params, graph_stats  # noqa: E402
from edgekiln.errors import UserError

RNG = np.random.default_rng(0)


def _init(name: str, shape, dtype=np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(dtype), name)


def _model(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _small_cnn(batch=1, height=32, width=32) -> onnx.ModelProto:
    """conv 3->8 3x3 with bias, BN, ReLU6 (Clip), depthwise 3x3 s2, GAP, Flatten, Gemm 8->10."""
    nodes = [
        helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn.g", "bn.b", "bn.m", "bn.v"], ["bn"]),
        helper.make_node("Clip", ["bn", "lo", "hi"], ["act"]),
        helper.make_node(
            "Conv",
            ["act", "dw.w"],
            ["dw"],
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
            strides=[2, 2],
            group=8,
        ),
        helper.make_node("GlobalAveragePool", ["dw"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["y"], transB=1),
    ]
    inits = [
        _init("c1.w", (8, 3, 3, 3)),
        _init("c1.b", (8,)),
        _init("bn.g", (8,)),
        _init("bn.b", (8,)),
        _init("bn.m", (8,)),
        _init("bn.v", (8,)),
        numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
        numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
        _init("dw.w", (8, 1, 3, 3)),
        _init("fc.w", (10, 8)),
        _init("fc.b", (10,)),
    ]
    return _model(nodes, [_vi("x", [batch, 3, height, width])], [_vi("y", [batch, 10])], inits)


# conv1: 8*3*3*3 + 8 bias; BN: scale + shift only; dw: 8*1*3*3; fc: 10*8 + 10.
SMALL_CNN_PARAMS = 216 + 8 + 16 + 72 + 80 + 10
# conv1 out 8x32x32, 27 MACs each; dw out 8x16x16, 9 each; fc 10 outputs x 8.
SMALL_CNN_MACS = 8 * 32 * 32 * 27 + 8 * 16 * 16 * 9 + 10 * 8


def test_small_cnn_counts():
    model = _small_cnn()
    onnx.checker.check_model(model, full_check=True)
    assert count_params(model) == SMALL_CNN_PARAMS
    assert count_macs(model) == SMALL_CNN_MACS


def test_graph_stats_shape():
    stats = graph_stats(_small_cnn())
    assert stats["params"] == SMALL_CNN_PARAMS and stats["macs"] == SMALL_CNN_MACS
    assert stats["nodes"] == 7 and stats["opset"] == 17
    assert stats["op_counts"] == {
        "Conv": 2,
        "BatchNormalization": 1,
        "Clip": 1,
        "Flatten": 1,
        "Gemm": 1,
        "GlobalAveragePool": 1,
    }
    assert list(stats["op_counts"])[0] == "Conv"  # most frequent first


def test_symbolic_batch_counts_per_image():
    assert count_macs(_small_cnn(batch="N")) == SMALL_CNN_MACS
    assert count_macs(_small_cnn(batch=4)) == 4 * SMALL_CNN_MACS


def test_dynamic_spatial_size_needs_input_shapes():
    model = _small_cnn(height="H", width="W")
    with pytest.raises(UserError, match="dynamic dimension 'H' at axis 2") as err:
        count_macs(model)
    assert "input_shapes" in err.value.hint
    assert count_macs(model, input_shapes={"x": [1, 3, 32, 32]}) == SMALL_CNN_MACS
    with pytest.raises(UserError, match="does not have"):
        count_macs(model, input_shapes={"image": [1, 3, 32, 32]})


def test_inconsistent_shapes_are_a_user_error():
    model = _small_cnn()
    # A classifier weight for 9 features where the graph has 8.
    (fc_w,) = [t for t in model.graph.initializer if t.name == "fc.w"]
    fc_w.CopyFrom(_init("fc.w", (10, 9)))
    with pytest.raises(UserError, match="shape inference failed.*mismatch"):
        count_macs(model)


def test_unknown_shape_before_a_matmul_is_a_user_error():
    # A vendor op ONNX cannot infer: the MatMul after it has no input shape to count with.
    nodes = [
        helper.make_node("Mystery", ["x"], ["h"], domain="vendor"),
        helper.make_node("MatMul", ["h", "w"], ["y"]),
    ]
    model = _model(nodes, [_vi("x", [1, 8])], [_vi("y", None)], [_init("w", (8, 3))])
    model.opset_import.append(helper.make_opsetid("vendor", 1))
    with pytest.raises(UserError, match="cannot infer the shape of 'h' at MatMul"):
        count_macs(model)
    assert count_params(model) == 24  # parameters need no shapes


def test_matmul_gemm_transposes_and_convtranspose():
    nodes = [
        helper.make_node("MatMul", ["a", "w"], ["m"]),  # (2,3,4) x (4,5)
        helper.make_node("Gemm", ["at", "g"], ["gm"], transA=1),  # (6,2)^T x (6,7)
        helper.make_node("ConvTranspose", ["img", "ct"], ["up"], strides=[2, 2], kernel_shape=[2, 2]),
    ]
    model = _model(
        nodes,
        [_vi("a", [2, 3, 4]), _vi("at", [6, 2]), _vi("img", [1, 4, 5, 5])],
        [_vi("m", None), _vi("gm", None), _vi("up", None)],
        [_init("w", (4, 5)), _init("g", (6, 7)), _init("ct", (4, 3, 2, 2))],
    )
    macs = (2 * 3 * 5) * 4 + (2 * 7) * 6 + (4 * 5 * 5) * (3 * 2 * 2)
    assert count_macs(model) == macs
    assert count_params(model) == 20 + 42 + 48


def test_constants_that_configure_ops_are_not_parameters():
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"]),
        helper.make_node("Add", ["r", "three"], ["a"]),  # exported hardswish's + 3
        helper.make_node("Mul", ["a", "gamma"], ["y"]),  # a per-channel scale: a parameter
    ]
    inits = [
        numpy_helper.from_array(np.array([1, 4, 2, 2], np.int64), "shape"),
        numpy_helper.from_array(np.array(3.0, np.float32), "three"),
        _init("gamma", (1, 4, 1, 1)),
        _init("unused", (100,)),
    ]
    model = _model(nodes, [_vi("x", [1, 16])], [_vi("y", [1, 4, 2, 2])], inits)
    assert count_params(model) == 4
    assert count_macs(model) == 0


def test_external_data_counts_without_loading(tmp_path):
    model = _small_cnn()
    path = tmp_path / "m.onnx"
    onnx.save_model(
        model,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="m.data",
        size_threshold=0,
    )
    assert (tmp_path / "m.data").stat().st_size > 0
    lazy = onnx.load_model(path, load_external_data=False)
    assert all(not t.raw_data for t in lazy.graph.initializer)
    assert count_params(lazy) == SMALL_CNN_PARAMS
    assert count_macs(lazy) == SMALL_CNN_MACS


def test_local_functions_are_counted_inside():
    fn = helper.make_function(
        "custom",
        "Proj",
        ["x", "w"],
        ["y"],
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        opset_imports=[helper.make_opsetid("", 17)],
    )
    graph = helper.make_graph(
        [helper.make_node("Proj", ["x", "w"], ["y"], domain="custom")],
        "g",
        [_vi("x", [1, 8])],
        [_vi("y", [1, 3])],
        initializer=[_init("w", (8, 3))],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)],
        functions=[fn],
    )
    model.ir_version = 8
    assert count_params(model) == 24
    assert count_macs(model) == 24
    assert graph_stats(model)["op_counts"] == {"MatMul": 1}


def test_zoo_model_bn_statistics_excluded():
    from edgekiln import zoo

    model = zoo.build("mobilenet_v3_small")
    all_float = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    bn_stats = sum(
        int(np.prod(t.dims)) for t in model.graph.initializer if t.name.endswith(("running_mean", "running_var"))
    )
    assert count_params(model) == all_float - bn_stats == 2_542_856
