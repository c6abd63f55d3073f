"""Full-integer int8 quantization of LiteRT graphs: parameters, calibration, and the int8
model against the fp32 one on small convolutional networks."""

from __future__ import annotations

import ai_edge_litert  # noqa: F401 - an installed extra: missing must fail, not skip
import numpy as np
import onnx  # noqa: F401 - an installed extra: missing must fail, not skip
import pytest
import tflite  # noqa: F401 - an installed extra: missing must fail, not skip
from onnx import helper  # noqa: E402

from edgekiln.compile.backends.litert import quantize as q  # noqa: E402
from edgekiln.compile.backends.litert.convert import convert  # noqa: E402
from edgekiln.compile.backends.litert.graph import Graph, Op, Tensor  # noqa: E402
from edgekiln.compile.backends.litert.writer import write  # noqa: E402
from edgekiln.errors import BackendError  # noqa: E402
from tests.unit.compile.test_litert_convert import bn, bn_inits, conv_weights, make_model  # noqa: E402

RNG = np.random.default_rng(11)


@pytest.mark.parametrize("lo,hi", [(-1.0, 3.0), (0.0, 6.0), (0.5, 2.0), (-4.0, -1.0), (0.0, 0.0)])
def test_activation_params_cover_the_range_and_zero(lo, hi):
    p = q.activation_params(lo, hi)
    scale, zero = float(p.scale[0]), int(p.zero_point[0])
    assert -128 <= zero <= 127 and scale > 0
    # 0.0 is exactly representable (zero padding and ReLU outputs stay exact).
    assert q.quantize_values(np.array([0.0]), p)[0] == zero
    representable = (np.array([-128, 127]) - zero) * scale
    assert representable[0] <= min(lo, 0.0) + scale and representable[1] >= max(hi, 0.0) - scale


def test_quantize_values_round_half_away_from_zero_and_saturate():
    p = q.activation_params(-1.28, 1.27)  # scale 0.01, zero point 0
    values = q.quantize_values(np.array([0.005, -0.005, 0.015, 5.0, -5.0]), p)
    assert values.tolist() == [1, -1, 2, 127, -128]


def small_net():
    """conv+BN+ReLU6 → depthwise → HardSwish → SE-style gate → pool → FC: the zoo's int8 ops."""
    nodes = [
        helper.make_node(
            "Conv", ["x", "w1"], ["c1"], name="conv1", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
        ),
        bn("c1", "n1", "bn1"),
        helper.make_node("Clip", ["n1", "zero", "six"], ["a1"], name="relu6"),
        helper.make_node("Conv", ["a1", "w2"], ["c2"], name="dw", kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=8),
        helper.make_node("HardSwish", ["c2"], ["h"], name="hswish"),
        helper.make_node("GlobalAveragePool", ["h"], ["p"], name="gap"),
        helper.make_node("HardSigmoid", ["p"], ["g"], name="gate", alpha=1 / 6, beta=0.5),
        helper.make_node("Mul", ["h", "g"], ["s"], name="scale"),
        helper.make_node("Add", ["s", "a1"], ["r"], name="residual"),
        helper.make_node("GlobalAveragePool", ["r"], ["p2"], name="gap2"),
        helper.make_node("Flatten", ["p2"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["y"], name="fc", transB=1),
    ]
    inits = [
        ("w1", conv_weights(8, 3, 3)),
        *bn_inits("bn1", 8),
        ("zero", np.array(0.0, np.float32)),
        ("six", np.array(6.0, np.float32)),
        ("w2", RNG.standard_normal((8, 1, 3, 3)) / 3),
        ("fc.w", RNG.standard_normal((10, 8))),
        ("fc.b", RNG.standard_normal(10) * 0.1),
    ]
    return make_model(nodes, [("x", [1, 3, 16, 16])], ["y"], inits)


def run(content: bytes, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=content, num_threads=1)
    it.allocate_tensors()
    d, o = it.get_input_details()[0], it.get_output_details()[0]
    xin = x.transpose(0, 2, 3, 1)
    if d["dtype"] == np.int8:
        xin = q.quantize_values(xin, q.activation_params(*_range(d)))
    it.set_tensor(d["index"], np.ascontiguousarray(xin))
    it.invoke()
    y = it.get_tensor(o["index"])
    if o["dtype"] == np.int8:
        scale, zero = o["quantization"]
        y = (y.astype(np.float32) - zero) * scale
    return y


def _range(detail):
    scale, zero = detail["quantization"]
    return (-128 - zero) * scale, (127 - zero) * scale


def test_int8_graph_matches_fp32_closely():
    fp32 = convert(small_net())
    prepared = q.prepare(fp32)
    assert "HARD_SWISH" not in [op.kind for op in prepared.ops]
    calibration = [[RNG.standard_normal((1, 3, 16, 16)).astype(np.float32)] for _ in range(16)]
    ranges = q.calibrate(prepared, calibration)
    assert ranges.samples == 16 and ranges.method == "minmax"
    int8 = q.quantize(prepared, ranges)

    kinds = {t.dtype for t in int8.tensors.values()}
    assert kinds <= {"int8", "int32"}  # full integer: no float tensor left
    conv = next(op for op in int8.ops if op.kind == "CONV_2D")
    x_scale = float(int8.tensors[conv.inputs[0]].quant.scale[0])
    w, b = int8.tensors[conv.inputs[1]], int8.tensors[conv.inputs[2]]
    assert w.quant.axis == 0 and len(w.quant.scale) == 8 and not w.quant.zero_point.any()
    assert np.abs(w.data).max() == 127  # symmetric, per channel: each channel reaches ±127
    np.testing.assert_allclose(b.quant.scale, x_scale * w.quant.scale, rtol=1e-6)
    dw = next(op for op in int8.ops if op.kind == "DEPTHWISE_CONV_2D")
    assert int8.tensors[dw.inputs[1]].quant.axis == 3
    # Operators that must not rescale keep their input's parameters.
    for op in int8.ops:
        if op.kind in ("RESHAPE", "PAD"):
            assert int8.tensors[op.outputs[0]].quant == int8.tensors[op.inputs[0]].quant

    fp32_bytes = write(fp32, ["x"], ["y"])
    int8_bytes = write(int8, ["x"], ["y"])
    errors, agree = [], 0
    for _ in range(10):
        x = RNG.standard_normal((1, 3, 16, 16)).astype(np.float32)
        a, b8 = run(fp32_bytes, x), run(int8_bytes, x)
        errors.append(float(np.max(np.abs(a - b8)) / np.max(np.abs(a))))
        agree += int(a.argmax() == b8.argmax())
    # A few percent typically; an input beyond the calibrated ranges saturates somewhat more.
    assert np.median(errors) < 0.05 and max(errors) < 0.3 and agree >= 8


def test_prepared_hardswish_is_exact_in_fp32():
    node = helper.make_node("HardSwish", ["x"], ["y"], name="hs")
    graph = convert(make_model([node], [("x", [1, 2, 4, 4])], ["y"]))
    x = (RNG.standard_normal((1, 2, 4, 4)) * 4).astype(np.float32)
    np.testing.assert_allclose(
        run(write(q.prepare(graph), ["x"], ["y"]), x), run(write(graph, ["x"], ["y"]), x), atol=1e-6
    )


def test_percentile_calibration_is_narrower_than_minmax():
    graph = q.prepare(convert(small_net()))
    data = [[RNG.standard_normal((1, 3, 16, 16)).astype(np.float32)] for _ in range(4)]
    mm = q.calibrate(graph, data, "minmax")
    pc = q.calibrate(graph, data, "percentile")
    name = graph.ops[0].outputs[0]
    assert mm.values[name][0] <= pc.values[name][0] <= pc.values[name][1] <= mm.values[name][1]
    with pytest.raises(BackendError, match="unknown calibration method"):
        q.calibrate(graph, data, "entropy")


def test_operators_without_int8_kernels_are_refused():
    g = Graph()
    g.inputs = [g.activation("a", (1, 4))]
    b = g.activation("b", (1, 4))
    g.ops.append(Op("RELU", ["a"], [b], {}, "relu"))
    y = g.activation("y", (1, 4))
    g.ops.append(Op("DIV", ["a", b], [y], {"activation": "NONE"}, "ratio"))
    g.outputs, g.input_layouts, g.output_layouts = [y], ["same"], ["same"]
    ranges = q.Ranges({"a": (-1, 1), "b": (0, 1), "y": (-5, 5)}, 1, "minmax")
    with pytest.raises(BackendError, match=r"no int8 kernel for DIV \(node 'ratio'\)"):
        q.quantize(g, ranges)


def test_calibration_rejects_non_finite_values():
    graph = convert(small_net())
    bad = np.full((1, 3, 16, 16), np.nan, np.float32)
    with pytest.raises(BackendError, match="non-finite"):
        q.calibrate(graph, [[bad]])


def test_tensor_dataclass_constants():
    t = Tensor("w", (2,), "float32", np.zeros(2, np.float32))
    assert t.is_const and not Tensor("a", (2,), "float32").is_const
