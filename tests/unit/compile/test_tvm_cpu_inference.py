"""The TVM CPU rewrite before fusion: batch norms fold into the convolutions, convolutions run
channels-last, and the model still computes what the ONNX graph says."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
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


def _conv_clip_model(rng: np.random.Generator, low: float, high: float | None) -> onnx.ModelProto:
    """Conv → Clip(low, high) → Conv → Clip(low, high) → GlobalAveragePool: MobileNet's
    ReLU6 pattern (high=None: a Clip with only a lower bound)."""
    inits = [
        numpy_helper.from_array(rng.uniform(-1, 1, (8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.uniform(-1, 1, (8, 8, 1, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array(low, np.float32), "lo"),
    ]
    bounds = ["lo"]
    if high is not None:
        inits.append(numpy_helper.from_array(np.array(high, np.float32), "hi"))
        bounds.append("hi")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c1", *bounds], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"]),
        helper.make_node("Clip", ["c2", *bounds], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_clip",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 1, 1])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("low,high", [(0.0, 6.0), (-0.5, None)])
def test_clip_stays_channels_last_and_fuses_into_the_convolution(tmp_path, low, high):
    """TVM's importer writes Clip as opaque TIR calls, which the layout pass wraps in
    transposes; edgekiln rewrites them as Relax maximum/minimum (clip.py)."""
    import onnxruntime as ort
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    rng = np.random.default_rng(3)
    path = tmp_path / "m.onnx"
    onnx.save(_conv_clip_model(rng, low, high), str(path))
    source = SourceModel("m", path, "onnx", str(path), "0" * 64, (TensorSpec("x", "float32", (1, 3, 16, 16)),), (), 13)
    mod = importer.for_cpu_inference(tvm, importer.to_relax(source, from_onnx, NullProgress()))

    text = mod.script()
    assert "call_tir" not in text
    # Only where activations enter (NCHW → NHWC) and leave (before the pool) the convolutions.
    assert text.count("R.permute_dims(") == 2
    target = tvm.target.Target("llvm")
    names = [t.name for t in tuning.extract_tasks(tvm, mod, target)]
    fused = [n for n in names if "conv2d" in n]
    assert len(fused) == 2 and all("maximum" in n for n in fused)
    assert all(("minimum" in n) == (high is not None) for n in fused)
    assert not any("transpose" in n and "maximum" in n for n in names)

    x = (4 * rng.standard_normal((1, 3, 16, 16))).astype(np.float32)  # values past both bounds
    vm = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_clip_with_a_computed_bound_is_left_to_tvm(tmp_path):
    """A bound that is not a constant (here: the input's own minimum) cannot become a scalar
    operand; the importer's call stays, and the model still computes the same."""
    import onnxruntime as ort
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    rng = np.random.default_rng(4)
    w = numpy_helper.from_array(rng.uniform(-1, 1, (4, 3, 1, 1)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("ReduceMin", ["x"], ["m"], keepdims=0),
        helper.make_node("Clip", ["c", "m"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "computed_clip",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [w],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    source = SourceModel("m", path, "onnx", str(path), "0" * 64, (TensorSpec("x", "float32", (1, 3, 8, 8)),), (), 13)
    mod = importer.for_cpu_inference(tvm, importer.to_relax(source, from_onnx, NullProgress()))
    assert "call_tir" in mod.script()
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    vm = relax.VirtualMachine(tvm.compile(mod, target=tvm.target.Target("llvm")), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_numpy_fold_computes_what_tvms_fold_constant_does():
    """fold.py folds the batch-norm arithmetic and weight transposes in numpy; the constants
    it makes are the ones TVM's FoldConstant (which builds each with LLVM) makes, bit for bit."""
    import tvm
    from tvm import relax

    from edgekiln.compile.backends.tvm import fold

    rng = np.random.default_rng(5)
    x = relax.Var("x", relax.TensorType((1, 4, 8, 8), "float32"))
    var = relax.const(rng.uniform(0.5, 2, (4,)).astype(np.float32))
    gamma = relax.const(rng.uniform(0.5, 1.5, (4,)).astype(np.float32))
    weight = relax.const(rng.standard_normal((4, 4, 3, 3)).astype(np.float32))
    bound = relax.const(np.array([np.nan], np.float32))
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            scale = builder.emit(relax.op.divide(gamma, relax.op.sqrt(relax.op.add(var, relax.const(1e-5, "float32")))))
            w = builder.emit(relax.op.multiply(weight, relax.op.reshape(scale, (4, 1, 1, 1))))
            w = builder.emit(relax.op.permute_dims(w, [2, 3, 1, 0]))
            lo = builder.emit(relax.op.where(relax.op.isnan(bound), relax.const(-np.inf, "float32"), bound))
            y = builder.emit(relax.op.nn.conv2d(x, w, padding=1, kernel_layout="HWIO"))
            out = builder.emit_output(relax.op.maximum(y, lo))
        builder.emit_func_output(out)
    mod = builder.get()

    ours = fold.numpy_fold(tvm)(mod)
    theirs = relax.transform.FoldConstant()(mod)
    text = ours["main"].script(show_meta=False)
    for op in ("R.divide", "R.sqrt", "R.multiply", "R.reshape", "R.permute_dims", "R.where", "R.isnan"):
        assert op not in text, op

    def constants(m):  # noqa: ANN001, ANN202
        found = []

        def visit(e):  # noqa: ANN001, ANN202
            if hasattr(getattr(e, "value", None), "__dlpack__"):  # tensor constants
                found.append(np.from_dlpack(e.value))

        relax.analysis.post_order_visit(m["main"], visit)
        return sorted(found, key=lambda a: (a.shape, a.tobytes()))

    mine, reference = constants(ours), constants(theirs)
    assert [a.shape for a in mine] == [a.shape for a in reference]
    for a, b in zip(mine, reference):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
