"""The TVM CPU rewrite before fusion: batch norms fold into the convolutions, convolutions run
channels-last, and the model still computes what the ONNX graph says."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgekiln.compile.backends.tvm import importer, tuning
from edgekiln.compile.stages import SourceModel, TensorSpec
from edgekiln.execute.progress import NullProgress


def _conv_bn_model(rng: np.random.Generator) -> onnx.ModelProto:
    """Conv → BatchNormalization → Relu → Conv (grouped) → BatchNormalization, then a
    global average pool: the shapes of a small CNN's stem, with non-trivial statistics."""

    def const(name: str, shape: tuple[int, ...], low: float = -1.0, high: float = 1.0):
        return numpy_helper.from_array(rng.uniform(low, high, shape).astype(np.float32), name)

    inits = [
        const("w1", (8, 3, 3, 3)),
        const("b1", (8,)),
        const("g1", (8,), 0.5, 1.5),
        const("beta1", (8,)),
        const("m1", (8,)),
        const("v1", (8,), 0.5, 2.0),
        const("w2", (8, 2, 3, 3)),
        const("g2", (8,), 0.5, 1.5),
        const("beta2", (8,)),
        const("m2", (8,)),
        const("v2", (8,), 0.5, 2.0),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("BatchNormalization", ["c1", "g1", "beta1", "m1", "v1"], ["n1"], epsilon=1e-3),
        helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], group=4),
        helper.make_node("BatchNormalization", ["c2", "g2", "beta2", "m2", "v2"], ["n2"]),
        helper.make_node("GlobalAveragePool", ["n2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 1, 1])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_batch_norms_fold_and_convolutions_run_channels_last(tmp_path):
    import onnxruntime as ort
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    rng = np.random.default_rng(7)
    model = _conv_bn_model(rng)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    source = SourceModel("m", path, "onnx", str(path), "0" * 64, (TensorSpec("x", "float32", (1, 3, 16, 16)),), (), 17)
    mod = importer.for_cpu_inference(tvm, importer.to_relax(source, from_onnx, NullProgress()))

    text = mod.script()
    assert "batch_norm" not in text
    assert text.count('data_layout="NHWC"') == 2 and text.count('kernel_layout="HWIO"') == 2
    target = tvm.target.Target("llvm")
    names = [t.name for t in tuning.extract_tasks(tvm, mod, target)]
    # Each convolution is one task with its bias, batch norm and ReLU fused in.
    assert sum("conv2d" in n for n in names) == 2 and not any("batch_norm" in n for n in names)

    x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    vm = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert got.shape == want.shape == (1, 8, 1, 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_model_the_layout_pass_cannot_rewrite_keeps_the_rest(tmp_path, monkeypatch):
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    model = _conv_bn_model(np.random.default_rng(0))
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    source = SourceModel("m", path, "onnx", str(path), "0" * 64, (TensorSpec("x", "float32", (1, 3, 16, 16)),), (), 17)
    mod = importer.to_relax(source, from_onnx, NullProgress())

    @tvm.transform.module_pass(opt_level=0)
    def failing(mod, ctx):  # noqa: ANN001 - TVM's pass signature
        raise ValueError("Expected nested to match tuple")

    monkeypatch.setattr(relax.transform, "ConvertLayout", lambda layouts: failing)
    text = importer.for_cpu_inference(tvm, mod).script()
    # The batch norms still fold; the convolutions stay as the model had them.
    assert "batch_norm" not in text and 'data_layout="NHWC"' not in text
    monkeypatch.setattr(relax.transform, "FoldBatchnormToConv2D", lambda: failing)
    assert importer.for_cpu_inference(tvm, mod) is mod
