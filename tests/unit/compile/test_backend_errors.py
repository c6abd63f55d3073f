"""Backend failures name the ONNX node and say what to try; TVM's own output stays off the
terminal; shape arithmetic is folded before TVM's importer sees it."""

from __future__ import annotations

import os

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekiln.compile.backends.onnxruntime.backend import load_error
from edgekiln.compile.backends.tvm import importer
from edgekiln.compile.quiet import captured_output
from edgekiln.compile.stages import SourceModel, TensorSpec
from edgekiln.errors import BackendError
from edgekiln.execute.progress import NullProgress


def test_onnxruntime_error_leads_with_the_node_and_the_alternatives():
    message = (
        '[ONNXRuntimeError] : 10 : INVALID_GRAPH : This is an invalid model. In Node, ("my_foo", Foo, "", -1) : '
        '("x": tensor(float),) -> ("y": tensor(float),) , Error No Op registered for Foo with domain_version of 17'
    )
    error = load_error(message, "model.onnx")
    assert str(error).startswith("ONNX Runtime cannot load model.onnx at Foo (node 'my_foo'): ")
    assert "--backend tvm" in error.one_line() and "opset" in error.one_line()
    named = load_error("[ONNXRuntimeError] : 1 : FAIL : Node (conv_7) Op (Conv) [ShapeInferenceError] bad", "m")
    assert "at Conv (node 'conv_7')" in str(named)
    assert str(load_error("something else", "m")).startswith("ONNX Runtime cannot load m: something else")


def test_captured_output_takes_python_and_file_descriptor_writes(capfd):
    with captured_output() as out:
        print("from python")
        os.write(2, b"[12:00:00] transform.h:1261: Warning: Fast mode\n")
        os.write(1, b"raw stdout\n")
    assert capfd.readouterr().err == ""
    assert out.lines == ["from python", "[12:00:00] transform.h:1261: Warning: Fast mode", "raw stdout"]
    assert out.summary("TVM") == "TVM printed 3 line(s) of warnings, the first: from python"


def test_failing_node_is_the_innermost_frame_holding_a_node():
    def convert(node):
        raise ValueError("cannot")

    def walk(nodes):
        for node in nodes:  # noqa: B007 - the frame's local is what is looked up
            convert(nodes[1])

    nodes = [helper.make_node("Relu", ["x"], ["y"], name="outer"), helper.make_node("Split", ["y"], ["z"], name="")]
    with pytest.raises(ValueError) as err:
        walk(nodes)
    assert importer._failing_node(err.value.__traceback__) == "Split (node '<unnamed>')"


def _chunk_model():
    """torch.onnx's ``x.chunk(2, dim=1)``: Slice bounds computed from Shape."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["c"], axis=0),
        helper.make_node("Div", ["c", "two"], ["half"]),
        helper.make_node("Slice", ["x", "zero", "half", "one"], ["a"]),
        helper.make_node("Slice", ["x", "half", "big", "one"], ["b"]),
        helper.make_node("Relu", ["b"], ["r"]),
        helper.make_node("Concat", ["a", "r"], ["y"], axis=1),
    ]
    inits = [
        numpy_helper.from_array(np.array([v], np.int64), n)
        for n, v in (("zero", 0), ("one", 1), ("two", 2), ("big", 2**62))
    ]
    graph = helper.make_graph(
        nodes,
        "chunk",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _source(model, tmp_path) -> SourceModel:
    import onnx

    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    spec = TensorSpec("x", "float32", (1, 8, 4, 4))
    return SourceModel("m", path, "onnx", str(path), "0" * 64, (spec,), (), 17)


def test_tvm_sees_static_shapes_after_folding(tmp_path):
    from tvm.relax.frontend.onnx import from_onnx

    mod = importer.to_relax(_source(_chunk_model(), tmp_path), from_onnx, NullProgress())
    text = mod.script()
    assert "dynamic_strided_slice" not in text
    assert 'R.Tensor((1, 8, 4, 4), dtype="float32") = R.concat' in text


def test_tvm_conversion_error_names_the_node(tmp_path):
    from tvm.relax.frontend.onnx import from_onnx

    model = _chunk_model()
    # A Concat of tensors whose ranks differ: the importer fails on that node.
    model.graph.node[-1].input[1] = "shape"
    model.graph.node[-1].name = "cat"
    with pytest.raises(BackendError) as err:
        importer.to_relax(_source(model, tmp_path), from_onnx, NullProgress())
    assert "TVM cannot convert Concat (node 'cat')" in str(err.value)
    assert "--backend onnxruntime" in err.value.one_line()
