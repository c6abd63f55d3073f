"""The MXNet importer without MXNet: params files, symbol graphs worked out in numpy, errors.

One test checks the params reader against files written by real MXNet (``mx.nd.save``) and
files MXNet reads back (``mx.nd.load``); it needs the MXNet reference environment.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgekiln.compile.frontends import mxnet as mxf  # noqa: E402
from edgekiln.errors import UserError
from tests.frameworks.mxnet_reference import require_mxnet_python, run_mxnet  # noqa: E402

RNG = np.random.default_rng(0)
_FLAGS = {
    np.dtype(np.float32): 0,
    np.dtype(np.float64): 1,
    np.dtype(np.float16): 2,
    np.dtype(np.uint8): 3,
    np.dtype(np.int32): 4,
    np.dtype(np.int8): 5,
    np.dtype(np.int64): 6,
    np.dtype(np.bool_): 7,
}


# ---- writing test files ------------------------------------------------------------------


def _array_bytes(value: np.ndarray | None, layout: str) -> bytes:
    if value is None:
        # MXNet's "none" array: the shape says so and nothing follows it.
        return struct.pack("<Iii", 0xF993FAC9, 0, 0) if layout == "v2" else struct.pack("<Iii", 0xF993FACA, 0, -1)
    shape = value.shape
    if layout == "v2":
        head = struct.pack("<Iii", 0xF993FAC9, 0, len(shape)) + struct.pack(f"<{len(shape)}q", *shape)
    elif layout == "v3":
        head = struct.pack("<Iii", 0xF993FACA, 0, len(shape)) + struct.pack(f"<{len(shape)}q", *shape)
    elif layout == "v1":
        head = struct.pack("<II", 0xF993FAC8, len(shape)) + struct.pack(f"<{len(shape)}q", *shape)
    elif layout == "legacy":
        head = struct.pack("<I", len(shape)) + struct.pack(f"<{len(shape)}I", *shape)
    else:
        raise AssertionError(layout)
    body = struct.pack("<iii", 1, 0, _FLAGS[value.dtype]) + value.astype(value.dtype.newbyteorder("<")).tobytes()
    return head + body


def write_params(path: Path, arrays: dict[str, np.ndarray], layout: str = "v2") -> Path:
    """MXNet's NDArray list format, as NDArray::Save writes it (and LegacyLoad reads it)."""
    out = struct.pack("<QQQ", 0x112, 0, len(arrays))
    out += b"".join(_array_bytes(None if v is None else np.asarray(v), layout) for v in arrays.values())
    out += struct.pack("<Q", len(arrays))
    for name in arrays:
        raw = name.encode()
        out += struct.pack("<Q", len(raw)) + raw
    path.write_bytes(out)
    return path


class Graph:
    """A hand-written MXNet symbol: variables and operators in topological order."""

    def __init__(self) -> None:
        self.nodes: list[dict] = []
        self.params: dict[str, np.ndarray] = {}

    def var(self, name: str, value: np.ndarray | None = None, aux: bool = False) -> int:
        self.nodes.append({"op": "null", "name": name, "inputs": []})
        if value is not None:
            self.params[("aux:" if aux else "arg:") + name] = np.asarray(value, np.float32)
        return len(self.nodes) - 1

    def op(self, op: str, name: str, inputs: list[int], **attrs) -> int:
        self.nodes.append(
            {
                "op": op,
                "name": name,
                "attrs": {k: str(v) for k, v in attrs.items()},
                "inputs": [[i, 0, 0] for i in inputs],
            }
        )
        return len(self.nodes) - 1

    def save(self, directory: Path, heads: list[int], prefix: str = "net") -> tuple[Path, Path]:
        symbol = directory / f"{prefix}-symbol.json"
        arg_nodes = [i for i, n in enumerate(self.nodes) if n["op"] == "null"]
        symbol.write_text(
            json.dumps(
                {
                    "nodes": self.nodes,
                    "arg_nodes": arg_nodes,
                    "heads": [[h, 0, 0] for h in heads],
                    "attrs": {"mxnet_version": ["int", 10901]},
                }
            )
        )
        return symbol, write_params(directory / f"{prefix}-0000.params", self.params)


def run_onnx(model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


# ---- numpy references --------------------------------------------------------------------


def np_conv2d(x, w, b, stride=1, pad=0):
    n, _, h, wd = x.shape
    f, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n, f, ho, wo))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride]
            out += np.einsum("nchw,fc->nfhw", patch, w[:, :, i, j])
    return out + b[None, :, None, None]


def np_max_pool(x, k, s):
    n, c, h, w = x.shape
    ho, wo = (h - k) // s + 1, (w - k) // s + 1
    out = np.full((n, c, ho, wo), -np.inf)
    for i in range(k):
        for j in range(k):
            out = np.maximum(out, x[:, :, i : i + s * (ho - 1) + 1 : s, j : j + s * (wo - 1) + 1 : s])
    return out


def conv_bn_relu_pool_fc(tmp_path: Path, **bn_attrs) -> tuple[Graph, dict, list[int]]:
    g = Graph()
    p = {
        "w": RNG.standard_normal((4, 3, 3, 3)) * 0.3,
        "b": RNG.standard_normal(4) * 0.1,
        "gamma": RNG.uniform(0.5, 1.5, 4) * np.array([1, -1, 1, 1]),
        "beta": RNG.uniform(-0.3, 0.3, 4),
        "mean": RNG.standard_normal(4) * 0.2,
        "var": RNG.uniform(0.5, 2.0, 4),
        "fc_w": RNG.standard_normal((5, 4 * 4 * 4)) * 0.2,
        "fc_b": RNG.standard_normal(5) * 0.1,
    }
    data = g.var("data")
    conv = g.op(
        "Convolution",
        "conv0",
        [data, g.var("conv0_weight", p["w"]), g.var("conv0_bias", p["b"])],
        kernel="(3, 3)",
        num_filter=4,
        pad="(1, 1)",
        stride="(1, 1)",
    )
    bn = g.op(
        "BatchNorm",
        "bn0",
        [
            conv,
            g.var("bn0_gamma", p["gamma"]),
            g.var("bn0_beta", p["beta"]),
            g.var("bn0_moving_mean", p["mean"], aux=True),
            g.var("bn0_moving_var", p["var"], aux=True),
        ],
        **bn_attrs,
    )
    relu = g.op("Activation", "relu0", [bn], act_type="relu")
    pool = g.op("Pooling", "pool0", [relu], kernel="(2, 2)", stride="(2, 2)", pool_type="max")
    fc = g.op(
        "FullyConnected", "fc0", [pool, g.var("fc0_weight", p["fc_w"]), g.var("fc0_bias", p["fc_b"])], num_hidden=5
    )
    return g, p, [fc]


def np_conv_bn_relu_pool_fc(x, p, eps, gamma):
    y = np_conv2d(x, p["w"], p["b"], pad=1)
    y = (y - p["mean"][None, :, None, None]) / np.sqrt(p["var"][None, :, None, None] + eps)
    y = y * gamma[None, :, None, None] + p["beta"][None, :, None, None]
    y = np_max_pool(np.maximum(y, 0), 2, 2)
    return y.reshape(len(x), -1) @ p["fc_w"].T + p["fc_b"]


# ---- the params file ---------------------------------------------------------------------

SAMPLE = {
    "arg:w": RNG.standard_normal((4, 3, 2, 2)).astype(np.float32),
    "aux:h": RNG.standard_normal(5).astype(np.float16),
    "f64": RNG.standard_normal((2, 3)),
    "i32": np.arange(-3, 3, dtype=np.int32),
    "i8": np.arange(-4, 4, dtype=np.int8).reshape(2, 4),
    "u8": np.arange(250, 256, dtype=np.uint8),
    "i64": np.array([2**40, -7], dtype=np.int64),
    "zero_rows": np.zeros((0, 3), np.float32),
}


@pytest.mark.parametrize("layout", ["v2", "v3", "v1", "legacy"])
def test_params_reader_reads_every_layout_and_dtype(tmp_path, layout):
    arrays = dict(SAMPLE)
    if layout == "legacy":
        arrays["i64"] = np.array([7, 9], dtype=np.int64)  # uint32 dims, any dtype
    got = mxf.read_params(write_params(tmp_path / "x.params", arrays, layout))
    assert list(got) == list(arrays)
    for name, value in arrays.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
        np.testing.assert_array_equal(got[name], value)


def test_params_reader_reads_none_arrays_and_v3_scalars(tmp_path):
    one = np.ones(2, np.float32)
    v2 = mxf.read_params(write_params(tmp_path / "a.params", {"none": None, "after": one}, "v2"))
    assert v2["none"].shape == (0,)
    np.testing.assert_array_equal(v2["after"], one)
    v3 = mxf.read_params(write_params(tmp_path / "b.params", {"none": None, "s": np.array(2.5, np.float32)}, "v3"))
    assert v3["none"].shape == (0,) and v3["s"].shape == () and v3["s"] == 2.5


MXNET_IO = r"""
import sys, numpy as np, mxnet as mx
d = sys.argv[1]
rng = np.random.default_rng(0)
arrays = {
    "arg:w": rng.standard_normal((4, 3, 2, 2)).astype("float32"),
    "aux:h": rng.standard_normal(5).astype("float16"),
    "f64": rng.standard_normal((2, 3)),
    "i32": np.arange(-3, 3, dtype="int32"),
    "i8": np.arange(-4, 4, dtype="int8").reshape(2, 4),
    "u8": np.arange(250, 256, dtype="uint8"),
    "i64": np.array([2**40, -7], dtype="int64"),
    "b": np.array([True, False, True]),
    "zero_rows": np.zeros((0, 3), "float32"),
}
keys = {k: "a%d" % i for i, k in enumerate(arrays)}
np.savez(d + "/expected.npz", **{keys[k]: v for k, v in arrays.items()})
mx.nd.save(d + "/v2.params", {k: mx.nd.array(v, dtype=v.dtype) for k, v in arrays.items()})
with mx.util.np_shape(True):
    mx.nd.save(d + "/v3.params", {**{k: mx.nd.array(v, dtype=v.dtype) for k, v in arrays.items()},
                                 "scalar": mx.nd.array(np.array(2.5, "float32"))})
for name in ("v1", "legacy"):
    loaded = mx.nd.load(d + "/%s-ours.params" % name)
    np.savez(d + "/%s-loaded.npz" % name, **{k.replace(":", "_"): v.asnumpy() for k, v in loaded.items()})
"""


def test_params_reader_agrees_with_real_mxnet(tmp_path):
    """mx.nd.save's files (V2, and V3 under NumPy shape semantics) read back exactly; the
    older layouts this test writes are ones mx.nd.load reads back to the same arrays."""
    require_mxnet_python()
    legacy = {"arg:w": SAMPLE["arg:w"], "aux:h": SAMPLE["aux:h"], "i8": SAMPLE["i8"]}
    write_params(tmp_path / "v1-ours.params", legacy, "v1")
    write_params(tmp_path / "legacy-ours.params", legacy, "legacy")
    run_mxnet(MXNET_IO, str(tmp_path))

    expected_files = np.load(tmp_path / "expected.npz")
    expected = {
        k: expected_files[f"a{i}"]
        for i, k in enumerate(["arg:w", "aux:h", "f64", "i32", "i8", "u8", "i64", "b", "zero_rows"])
    }
    for layout, magic in (("v2", 0xF993FAC9), ("v3", 0xF993FACA)):
        raw = (tmp_path / f"{layout}.params").read_bytes()
        assert struct.unpack("<I", raw[24:28])[0] == magic  # MXNet wrote the layout we think
        got = mxf.read_params(tmp_path / f"{layout}.params")
        for name, value in expected.items():
            assert got[name].dtype == value.dtype and got[name].shape == value.shape, (layout, name)
            np.testing.assert_array_equal(got[name], value)
    assert mxf.read_params(tmp_path / "v3.params")["scalar"].shape == ()
    for layout in ("v1", "legacy"):
        loaded = np.load(tmp_path / f"{layout}-loaded.npz")
        for name, value in legacy.items():
            back = loaded[name.replace(":", "_")]
            assert back.dtype == value.dtype and back.shape == value.shape
            np.testing.assert_array_equal(back, value)


def test_truncated_params_file_is_a_user_error_at_every_length(tmp_path):
    data = write_params(
        tmp_path / "full.params", {"arg:w": np.ones((2, 2), np.float32), "aux:m": np.zeros(3)}
    ).read_bytes()
    cut = tmp_path / "cut.params"
    for length in range(len(data)):
        cut.write_bytes(data[:length])
        with pytest.raises(UserError, match=r"is not an MXNet \.params file"):
            mxf.read_params(cut)


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda d: b"\x13" + d[1:], "header"),
        (lambda d: d[:24] + b"\x00\x00\x00\x7f" + d[28:], "no NDArray magic"),
        (lambda d: d[:16] + struct.pack("<Q", 2**40) + d[24:], "claims"),
    ],
)
def test_corrupt_params_file_is_a_user_error(tmp_path, mutate, reason):
    path = write_params(tmp_path / "x.params", {"arg:w": np.ones(3, np.float32)})
    path.write_bytes(mutate(path.read_bytes()))
    with pytest.raises(UserError, match=rf"is not an MXNet \.params file \(.*{reason}"):
        mxf.read_params(path)


def test_name_count_mismatch_and_unnamed_list_and_sparse_are_user_errors(tmp_path):
    path = write_params(tmp_path / "x.params", {"a": np.ones(2, np.float32), "b": np.ones(2, np.float32)})
    data = path.read_bytes()
    names_at = 24 + 2 * len(_array_bytes(np.ones(2, np.float32), "v2"))
    path.write_bytes(data[:names_at] + struct.pack("<Q", 1) + data[names_at + 8 :])
    with pytest.raises(UserError, match="2 arrays but 1 names"):
        mxf.read_params(path)
    path.write_bytes(data[:names_at] + struct.pack("<Q", 0))
    with pytest.raises(UserError, match="unnamed list of 2 arrays"):
        mxf.read_params(path)
    sparse = bytearray(data)
    sparse[28:32] = struct.pack("<i", 2)
    path.write_bytes(bytes(sparse))
    with pytest.raises(UserError, match="csr.*dense arrays only"):
        mxf.read_params(path)


# ---- finding the files -------------------------------------------------------------------


def test_find_files_from_symbol_params_or_directory(tmp_path):
    symbol = tmp_path / "net-symbol.json"
    symbol.write_text("{}")
    for epoch in ("0000", "0012", "0003"):
        (tmp_path / f"net-{epoch}.params").write_bytes(b"")
    (tmp_path / "net-extra-0099.params").write_bytes(b"")  # another prefix, not an epoch of "net"
    newest = tmp_path / "net-0012.params"
    assert mxf.find_files(symbol) == (symbol, newest)
    assert mxf.find_files(tmp_path / "net-0003.params") == (symbol, tmp_path / "net-0003.params")
    assert mxf.find_files(tmp_path) == (symbol, newest)


def test_find_files_errors_say_what_was_found_and_expected(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        mxf.find_files(tmp_path / "nope-symbol.json")
    lonely = tmp_path / "lonely-symbol.json"
    lonely.write_text("{}")
    with pytest.raises(UserError, match=r"no parameters beside it: no lonely-NNNN\.params"):
        mxf.find_files(lonely)
    orphan = tmp_path / "orphan-0000.params"
    orphan.write_bytes(b"")
    with pytest.raises(UserError, match="no symbol beside it: no orphan-symbol.json"):
        mxf.find_files(orphan)
    with pytest.raises(UserError, match="holds no MXNet symbol \\+ params pair") as err:
        mxf.find_files(tmp_path)
    assert "lonely-symbol.json" in err.value.message and "orphan-0000.params" in err.value.message
    for name in ("a", "b"):
        (tmp_path / f"{name}-symbol.json").write_text("{}")
        (tmp_path / f"{name}-0000.params").write_bytes(b"")
    with pytest.raises(UserError, match="holds 2 MXNet models"):
        mxf.find_files(tmp_path)
    other = tmp_path / "model.onnx"
    other.write_bytes(b"")
    with pytest.raises(UserError, match="not an MXNet model file") as err:
        mxf.find_files(other)
    assert "PREFIX-symbol.json" in err.value.hint


# ---- conversion --------------------------------------------------------------------------


def test_conv_bn_relu_pool_fc_matches_numpy_with_mxnet_defaults(tmp_path):
    # No BatchNorm attributes: MXNet's defaults apply, eps 1e-3 and fix_gamma=True (gamma ignored).
    g, p, heads = conv_bn_relu_pool_fc(tmp_path)
    symbol, params = g.save(tmp_path, heads)
    model = mxf.to_onnx(symbol, params, {"data": [2, 3, 8, 8]})
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    (got,) = run_onnx(model, {"data": x})
    want = np_conv_bn_relu_pool_fc(x.astype(np.float64), p, eps=1e-3, gamma=np.ones(4))
    assert got.shape == (2, 5)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert [o.name for o in model.graph.output] == ["fc0"]
    assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] == [2, 5]


def test_batchnorm_attributes_are_honoured(tmp_path):
    g, p, heads = conv_bn_relu_pool_fc(tmp_path, eps="2e-05", fix_gamma="False", use_global_stats="False")
    symbol, params = g.save(tmp_path, heads)
    model = mxf.to_onnx(symbol, params, {"data": [1, 3, 8, 8]})
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    (got,) = run_onnx(model, {"data": x})
    want = np_conv_bn_relu_pool_fc(x.astype(np.float64), p, eps=2e-5, gamma=p["gamma"])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_inputs_without_shape_stay_open_and_labels_are_not_inputs(tmp_path):
    g, _, (fc,) = conv_bn_relu_pool_fc(tmp_path)
    out = g.op("SoftmaxOutput", "softmax", [fc, g.var("softmax_label")])
    symbol, params = g.save(tmp_path, [out])
    model = mxf.to_onnx(symbol, params)
    (inp,) = model.graph.input
    assert inp.name == "data" and not inp.type.tensor_type.HasField("shape")
    assert [o.name for o in model.graph.output] == ["softmax"]
    with pytest.raises(UserError, match=r"unknown inputs \['image'\]; the MXNet model's inputs are \['data'\]"):
        mxf.to_onnx(symbol, params, {"image": [1, 3, 8, 8]})
    with pytest.raises(UserError, match="positive integers"):
        mxf.to_onnx(symbol, params, {"data": [1, 3, 0, 8]})


def test_several_inputs_and_outputs_keep_symbol_order_and_names(tmp_path):
    g = Graph()
    b = g.var("b")
    a = g.var("a")
    scale = g.var("scale", np.array([[2.0]]))
    added = g.op("broadcast_add", "sum0", [a, b])
    scaled = g.op("broadcast_mul", "mul0", [added, scale])
    act = g.op("Activation", "act0", [added], act_type="tanh")
    symbol, params = g.save(tmp_path, [scaled, act])
    model = mxf.to_onnx(symbol, params, {"a": [2, 3], "b": [2, 3]})
    assert [i.name for i in model.graph.input] == ["b", "a"]
    assert [o.name for o in model.graph.output] == ["mul0", "act0"]
    xa, xb = RNG.standard_normal((2, 3)).astype(np.float32), RNG.standard_normal((2, 3)).astype(np.float32)
    got = run_onnx(model, {"a": xa, "b": xb})
    np.testing.assert_allclose(got[0], (xa + xb) * 2, atol=1e-6)
    np.testing.assert_allclose(got[1], np.tanh(xa + xb), atol=1e-6)


def test_unsupported_operator_names_mxnet_the_operator_and_the_node(tmp_path):
    g = Graph()
    data = g.var("data")
    rois = g.var("rois")
    pooled = g.op("ROIPooling", "roi_pool0", [data, rois], pooled_size="(7, 7)", spatial_scale="0.0625")
    symbol, params = g.save(tmp_path, [g.op("Flatten", "flat0", [pooled])])
    with pytest.raises(UserError) as err:
        mxf.to_onnx(symbol, params)
    assert err.value.message == (
        "MXNet operator 'ROIPooling' at node 'roi_pool0' is not supported by edgekiln's MXNet importer"
    )
    assert "Convolution" in err.value.hint and "BatchNorm" in err.value.hint


def test_param_that_does_not_fit_its_operator_names_node_and_param(tmp_path):
    g, p, heads = conv_bn_relu_pool_fc(tmp_path)
    g.params["arg:conv0_weight"] = np.ones((8, 3, 3, 3), np.float32)  # num_filter is 4
    symbol, params = g.save(tmp_path, heads)
    with pytest.raises(
        UserError,
        match=r"parameter 'conv0_weight' \(weight of MXNet node 'conv0', Convolution\) "
        r"has shape \(8, 3, 3, 3\)",
    ):
        mxf.to_onnx(symbol, params)


def test_batchnorm_channels_that_do_not_match_the_conv_are_caught_without_input_shapes(tmp_path):
    g, p, heads = conv_bn_relu_pool_fc(tmp_path)
    for name in ("arg:bn0_gamma", "arg:bn0_beta", "aux:bn0_moving_mean", "aux:bn0_moving_var"):
        g.params[name] = np.ones(6, np.float32)
    symbol, params = g.save(tmp_path, heads)
    with pytest.raises(
        UserError,
        match=r"'bn0_gamma' of MXNet node 'bn0' \(BatchNorm\) fits channels 6, "
        r"but the node's input has 4",
    ):
        mxf.to_onnx(symbol, params)


def test_input_shape_that_does_not_fit_the_weights_is_a_user_error(tmp_path):
    g, p, heads = conv_bn_relu_pool_fc(tmp_path)
    symbol, params = g.save(tmp_path, heads)
    with pytest.raises(UserError, match=r"'conv0_weight' of MXNet node 'conv0' fits input channels 3, .* has 1"):
        mxf.to_onnx(symbol, params, {"data": [1, 1, 8, 8]})
    with pytest.raises(UserError, match=r"'fc0_weight' of MXNet node 'fc0' fits input features 64, .* has 100"):
        mxf.to_onnx(symbol, params, {"data": [1, 3, 10, 10]})


def test_missing_param_is_named(tmp_path):
    g, p, heads = conv_bn_relu_pool_fc(tmp_path)
    del g.params["aux:bn0_moving_var"]
    symbol, params = g.save(tmp_path, heads)
    with pytest.raises(
        UserError,
        match=r"parameter 'bn0_moving_var' \(moving_var of MXNet node 'bn0', BatchNorm\) "
        r"is missing from .*net-0000\.params",
    ):
        mxf.to_onnx(symbol, params)


@pytest.mark.parametrize(
    "text, reason",
    [
        ('{"nodes": [', "malformed JSON"),
        ("[1, 2]", "expected a JSON object with 'nodes' and 'heads'"),
        ('{"nodes": [{"op": "null", "name": "data", "inputs": []}], "heads": []}', "no outputs"),
        (
            '{"nodes": [{"op": "relu", "name": "r", "inputs": [[1, 0, 0]]}, {"op": "null", "name": "x", "inputs": []}],'
            ' "heads": [[0, 0, 0]]}',
            "node 'r': entry \\[1, 0, 0\\] refers to a node that does not come before it",
        ),
    ],
)
def test_malformed_symbol_is_a_user_error(tmp_path, text, reason):
    symbol = tmp_path / "bad-symbol.json"
    symbol.write_text(text)
    params = write_params(tmp_path / "bad-0000.params", {})
    with pytest.raises(UserError, match=rf"is not an MXNet symbol file \(.*{reason}"):
        mxf.to_onnx(symbol, params)


def test_bad_attribute_values_are_user_errors(tmp_path):
    g = Graph()
    data = g.var("data")
    pool = g.op("Pooling", "pool0", [data], kernel="(a, 3)", pool_type="max")
    symbol, params = g.save(tmp_path, [pool])
    with pytest.raises(
        UserError,
        match=r"attribute kernel='\(a, 3\)' of MXNet node 'pool0' \(Pooling\) is not "
        r"a tuple of integers",
    ):
        mxf.to_onnx(symbol, params)


def test_attribute_spellings_are_parsed(tmp_path):
    g = Graph()
    data = g.var("data")
    w = g.var("w", RNG.standard_normal((2, 3, 1, 1)))
    # Python 2 era longs, list brackets and lower-case booleans all occur in saved symbols.
    conv = g.op(
        "Convolution",
        "conv0",
        [data, w],
        kernel="[1L, 1L]",
        num_filter="2L",
        no_bias="true",
        stride="(1,1)",
        pad="()",
        layout="None",
    )
    symbol, params = g.save(tmp_path, [conv])
    model = mxf.to_onnx(symbol, params, {"data": [1, 3, 4, 4]})
    x = RNG.standard_normal((1, 3, 4, 4)).astype(np.float32)
    (got,) = run_onnx(model, {"data": x})
    np.testing.assert_allclose(got, np.einsum("nchw,fc->nfhw", x, g.params["arg:w"][:, :, 0, 0]), atol=1e-5)


def test_full_pooling_is_ceil_mode_and_refuses_a_last_window_in_the_padding(tmp_path):
    g = Graph()
    pool = g.op(
        "Pooling", "pool0", [g.var("data")], kernel="(3, 3)", stride="(2, 2)", pad="(1, 1)", pooling_convention="full"
    )
    symbol, params = g.save(tmp_path, [pool])
    model = mxf.to_onnx(symbol, params, {"data": [1, 1, 6, 6]})
    x = RNG.standard_normal((1, 1, 6, 6)).astype(np.float32)
    (got,) = run_onnx(model, {"data": x})
    # MXNet "full": 1 + ceil((6 + 2 - 3) / 2) = 4 windows a side, where "valid" gives 3.
    padded = np.pad(x, ((0, 0), (0, 0), (1, 2), (1, 2)), constant_values=-np.inf)
    assert got.shape == (1, 1, 4, 4)
    np.testing.assert_array_equal(got, np_max_pool(padded, 3, 2))

    g = Graph()
    pool = g.op(
        "Pooling", "pool1", [g.var("data")], kernel="(2, 2)", stride="(2, 2)", pad="(1, 1)", pooling_convention="full"
    )
    symbol, params = g.save(tmp_path, [pool], prefix="edge")
    with pytest.raises(UserError, match="'pool1'.*last window inside the padding for input size 5"):
        mxf.to_onnx(symbol, params, {"data": [1, 1, 5, 5]})


def test_importing_the_module_has_no_side_effects():
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, edgekiln.compile.frontends.mxnet; print('onnx' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert probe.stdout.strip() == "False"


# ---- numbers that overflow ---------------------------------------------------------------


def _params_with_dims(path: Path, dims: tuple[int, ...]) -> Path:
    """One float32 array whose header claims ``dims``, with no data after it."""
    head = struct.pack("<Iii", 0xF993FAC9, 0, len(dims)) + struct.pack(f"<{len(dims)}q", *dims)
    path.write_bytes(
        struct.pack("<QQQ", 0x112, 0, 1) + head + struct.pack("<iii", 1, 0, 0) + struct.pack("<QQ", 1, 1) + b"w"
    )
    return path


@pytest.mark.parametrize("dims", [(0, 2**62, 2**62), (2**62, 2**62), (2**63 - 1, 0, 3)])
def test_params_shape_that_overflows_is_a_user_error(tmp_path, dims):
    # An empty axis makes the array zero bytes long, but numpy still refuses the shape.
    with pytest.raises(UserError, match=r"is not an MXNet \.params file \(array #0 has shape .* whose size overflows"):
        mxf.read_params(_params_with_dims(tmp_path / "x.params", dims))


@pytest.mark.parametrize(
    "op, attrs, key",
    [
        ("Pooling", {"kernel": f"({10**30}, 3)", "pool_type": "max"}, "kernel"),
        ("Reshape", {"shape": f"(1, {2**63})"}, "shape"),
        ("softmax", {"axis": str(-(2**63) - 1)}, "axis"),
        ("Concat", {"dim": str(10**30)}, "dim"),
        ("transpose", {"axes": f"(1, {10**30})"}, "axes"),
    ],
)
def test_attribute_that_overflows_int64_is_a_user_error(tmp_path, op, attrs, key):
    g = Graph()
    node = g.op(op, "n0", [g.var("data")], **attrs)
    symbol, params = g.save(tmp_path, [node])
    with pytest.raises(
        UserError,
        match=rf"attribute {key}=.* of MXNet node 'n0' \({op}\) is not an? .*"
        r"fits? in 64 bits",
    ):
        mxf.to_onnx(symbol, params, {"data": [1, 3, 8, 8]})


@pytest.mark.parametrize("shape", [[1, 10**30], [1, 2**62, 2**62]])
def test_input_shape_that_overflows_is_a_user_error(tmp_path, shape):
    g = Graph()
    node = g.op("relu", "r", [g.var("data")])
    symbol, params = g.save(tmp_path, [node])
    with pytest.raises(UserError, match=r"the input shape .* for 'data' overflows"):
        mxf.to_onnx(symbol, params, {"data": shape})


@pytest.mark.parametrize(
    "text, reason",
    [
        ('{"nodes": [], "heads": [[0, ' + "9" * 5000 + ", 0]]}", "an integer in it is too long"),
        ('{"nodes": ' + "[" * 100_000 + "]" * 100_000 + ', "heads": []}', "nested too deeply"),
        (
            '{"nodes": [{"op": "null", "name": "data", "inputs": []}, '
            '{"op": "relu", "name": "r", "inputs": [[0, ' + str(2**70) + ', 0]]}], "heads": [[1, 0, 0]]}',
            "reads output 1180591620717411303424 of variable 'data', which has only output 0",
        ),
    ],
)
def test_symbol_numbers_that_overflow_are_user_errors(tmp_path, text, reason):
    symbol = tmp_path / "big-symbol.json"
    symbol.write_text(text)
    params = write_params(tmp_path / "big-0000.params", {})
    with pytest.raises(UserError, match=reason):
        mxf.to_onnx(symbol, params, {"data": [1, 3]})
