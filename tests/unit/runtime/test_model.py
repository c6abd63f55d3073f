"""The Model façade on tiny ONNX Runtime artifacts built in code: input checks, metadata, the
DLR-compatible getters, packed and extracted forms, and predict()."""

from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import edgekiln
from edgekiln.artifact import (
    Manifest,
    ModelInfo,
    RuntimeRequirements,
    TensorSpec,
    Validation,
    file_entry,
    pack,
)
from edgekiln.artifact.manifest import MANIFEST_NAME
from edgekiln.errors import CompatibilityError, IntegrityError, UserError
from edgekiln.runtime import compat
from edgekiln.runtime.model import Model, load, top_classes

# logits = x @ W + b for x of shape (1, 4): known numbers to check run() against.
W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
B = np.array([0.5, -0.5, 0.0], dtype=np.float32)
LABELS = ["cat", "dog", "bird"]


def _linear_onnx() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["logits"])],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])],
        initializer=[numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _two_input_onnx() -> onnx.ModelProto:
    # out = a - b, with b an int64 count: shows the per-input dtypes and shapes.
    graph = helper.make_graph(
        [helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT), helper.make_node("Sub", ["a", "bf"], ["out"])],
        "two",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("b", TensorProto.INT64, [2, 3]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 3])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _artifact_dir(
    root: Path,
    model: onnx.ModelProto,
    inputs,
    outputs,
    *,
    labels: bool = False,
    preprocessing=None,
    arch: str | None = None,
) -> Manifest:
    """An extracted onnxruntime artifact in ``root``: model.onnx (+ labels.txt) and its manifest."""
    root.mkdir(parents=True)
    onnx.save(model, root / "model.onnx")
    files = [file_entry(root, "model.onnx", "model")]
    if labels:
        (root / "labels.txt").write_text("# ImageNet-style labels\n" + "\n".join(LABELS) + "\n")
        files.append(file_entry(root, "labels.txt", "labels"))
    manifest = Manifest(
        model=ModelInfo("tiny", "1", "onnx", "0" * 64),
        profile="generic/x86-64-avx2",
        backend="onnxruntime",
        backend_options={"session": {"intra_op_num_threads": 1}},
        target_triple="x86_64-linux-gnu",
        edgekiln_version=edgekiln.__version__,
        compiler={"onnxruntime": "test"},
        runtime=RuntimeRequirements(arch=arch or compat.host_info().arch),
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        files=tuple(files),
        validation=Validation(status="skipped", reason="built by a test"),
        preprocessing=preprocessing,
        labels="labels.txt" if labels else None,
    )
    (root / MANIFEST_NAME).write_text(manifest.to_json())
    return manifest


@pytest.fixture
def linear_dir(tmp_path) -> Path:
    _artifact_dir(
        tmp_path / "linear",
        _linear_onnx(),
        [TensorSpec("input", "float32", (1, 4))],
        [TensorSpec("logits", "float32", (1, 3))],
        labels=True,
    )
    return tmp_path / "linear"


@pytest.fixture
def two_inputs(tmp_path) -> Model:
    _artifact_dir(
        tmp_path / "two",
        _two_input_onnx(),
        [TensorSpec("a", "float32", (2, 3)), TensorSpec("b", "int64", (2, 3))],
        [TensorSpec("out", "float32", (2, 3))],
    )
    return Model(tmp_path / "two")


X = np.array([[1.0, -2.0, 0.5, 3.0]], dtype=np.float32)
EXPECTED = X @ W + B


# ---- loading: packed and extracted ------------------------------------------------------


def test_packed_and_extracted_artifacts_give_the_same_outputs(linear_dir, tmp_path):
    manifest = Manifest.from_json((linear_dir / MANIFEST_NAME).read_bytes())
    packed = pack(manifest, linear_dir, tmp_path / "linear.tar.gz")
    from_tar, from_dir = Model(packed), load(linear_dir)
    np.testing.assert_allclose(from_tar.run(X)[0], EXPECTED, rtol=1e-6)
    np.testing.assert_allclose(from_dir.run(X)[0], EXPECTED, rtol=1e-6)
    assert from_tar.manifest == from_dir.manifest == manifest


def test_packed_artifact_is_extracted_privately_and_removed_with_the_model(linear_dir, tmp_path):
    manifest = Manifest.from_json((linear_dir / MANIFEST_NAME).read_bytes())
    model = Model(pack(manifest, linear_dir, tmp_path / "linear.tar.gz"))
    extracted = model._root
    assert extracted != linear_dir and (extracted / "model.onnx").is_file()
    del model
    gc.collect()
    assert not extracted.exists()


def test_extracted_directory_is_verified_in_place(linear_dir):
    (linear_dir / "labels.txt").write_text("cat\ndog\nfish\n")  # changed after the build
    with pytest.raises(IntegrityError, match="labels.txt .* differs from the manifest"):
        Model(linear_dir)
    (linear_dir / "labels.txt").unlink()
    with pytest.raises(IntegrityError, match="labels.txt is missing or not a regular file"):
        Model(linear_dir)


def test_directory_without_manifest_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"holds no manifest\.json"):
        Model(tmp_path)


def test_symlinked_member_in_a_directory_is_refused(linear_dir, tmp_path):
    real = tmp_path / "elsewhere.onnx"
    shutil.move(linear_dir / "model.onnx", real)
    (linear_dir / "model.onnx").symlink_to(real)
    with pytest.raises(IntegrityError, match="model.onnx in .* passes through a symlink"):
        Model(linear_dir)


def test_artifact_for_another_cpu_is_refused_before_loading(tmp_path):
    other = "aarch64" if compat.host_info().arch != "aarch64" else "x86_64"
    _artifact_dir(
        tmp_path / "arm",
        _linear_onnx(),
        [TensorSpec("input", "float32", (1, 4))],
        [TensorSpec("logits", "float32", (1, 3))],
        arch=other,
    )
    with pytest.raises(CompatibilityError, match=f"needs a {other} CPU"):
        Model(tmp_path / "arm")


def test_unknown_device_is_a_user_error(linear_dir):
    with pytest.raises(UserError, match="unknown device 'tpu'"):
        Model(linear_dir, device="tpu")


# ---- metadata and the DLR-compatible getters ---------------------------------------------


def test_getters_follow_the_manifest(two_inputs):
    assert two_inputs.get_input_names() == ["a", "b"]
    assert two_inputs.get_output_names() == ["out"]
    assert two_inputs.get_input_dtypes() == ["float32", "int64"]
    assert two_inputs.get_output_dtypes() == ["float32"]
    assert two_inputs.get_input_shapes() == [(2, 3), (2, 3)]
    assert two_inputs.get_output_shapes() == [(2, 3)]


def test_metadata_is_the_manifest_as_plain_json(linear_dir):
    model = Model(linear_dir)
    meta = model.metadata
    assert meta == json.loads((linear_dir / MANIFEST_NAME).read_text())
    assert meta["backend"] == "onnxruntime" and meta["model"]["name"] == "tiny"
    assert meta["inputs"] == [{"name": "input", "dtype": "float32", "shape": [1, 4]}]
    meta["backend"] = "changed"  # a copy: the model's manifest stays as loaded
    assert model.metadata["backend"] == "onnxruntime"


# ---- inputs: forms, names, dtypes, shapes -----------------------------------------------


def test_inputs_as_array_list_or_mapping(two_inputs):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.full((2, 3), 2, dtype=np.int64)
    want = a - 2
    for inputs in ([a, b], (a, b), {"a": a, "b": b}, {"b": b, "a": a}):
        (out,) = two_inputs.run(inputs)
        np.testing.assert_array_equal(out, want)
        assert out.dtype == np.float32


def test_input_names_must_match(two_inputs):
    a, b = np.zeros((2, 3), np.float32), np.zeros((2, 3), np.int64)
    with pytest.raises(UserError, match=r"unknown input names \['c'\]; the model takes \['a', 'b'\]"):
        two_inputs.run({"a": a, "b": b, "c": a})
    with pytest.raises(UserError, match=r"missing inputs \['b'\]"):
        two_inputs.run({"a": a})


def test_input_count_must_match(two_inputs):
    with pytest.raises(UserError, match=r"the model takes 2 input\(s\), got 1"):
        two_inputs.run(np.zeros((2, 3), np.float32))


def test_input_shape_must_match(two_inputs):
    with pytest.raises(UserError, match=r"input 'a' must have shape \[2, 3\], got \[3, 2\]"):
        two_inputs.run([np.zeros((3, 2), np.float32), np.zeros((2, 3), np.int64)])


def test_input_dtype_is_cast_within_its_kind_and_refused_across(two_inputs):
    a64 = np.ones((2, 3), np.float64)  # float64 -> float32: same kind, cast
    b32 = np.full((2, 3), 3, np.int32)  # int32 -> int64: cast
    np.testing.assert_array_equal(two_inputs.run([a64, b32])[0], np.full((2, 3), -2, np.float32))
    with pytest.raises(UserError, match="input 'b' must be int64, got float32"):
        two_inputs.run([np.ones((2, 3), np.float32), np.ones((2, 3), np.float32)])
    with pytest.raises(UserError, match="input 'a' must be float32, got complex64"):
        two_inputs.run([np.ones((2, 3), np.complex64), np.ones((2, 3), np.int64)])


def test_non_contiguous_input_is_accepted(linear_dir):
    model = Model(linear_dir)
    wide = np.zeros((1, 8), np.float32)
    wide[:, ::2] = X
    np.testing.assert_allclose(model.run(wide[:, ::2])[0], EXPECTED, rtol=1e-6)


# ---- predict and labels ------------------------------------------------------------------


def test_labels_file_names_the_top_classes_of_run_outputs(linear_dir):
    model = Model(linear_dir)
    assert model._labels == LABELS  # the comment line is skipped
    top = top_classes(model.run(X)[0].reshape(-1), model._labels, 2)
    order = np.argsort(-EXPECTED[0])
    assert [t["label"] for t in top] == [LABELS[i] for i in order[:2]]
    probs = np.exp(EXPECTED[0] - EXPECTED[0].max())
    probs /= probs.sum()
    assert top[0]["probability"] == pytest.approx(probs[order[0]])


def test_predict_on_an_image_model(tmp_path):
    # A 1x3x2x2 image input averaged per channel by a 1x1 "convolution" to 3 classes.
    weight = np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "Wc"], ["c"]),
            helper.make_node("GlobalAveragePool", ["c"], ["g"]),
            helper.make_node("Flatten", ["g"], ["scores"]),
        ],
        "image",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 2, 2])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 3])],
        initializer=[numpy_helper.from_array(weight, "Wc")],
    )
    model_proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    _artifact_dir(
        tmp_path / "img",
        model_proto,
        [TensorSpec("image", "float32", (1, 3, 2, 2))],
        [TensorSpec("scores", "float32", (1, 3))],
        labels=True,
        preprocessing={"layout": "NCHW", "scale": 1 / 255},
    )
    picture = np.zeros((2, 2, 3), np.uint8)
    picture[..., 1] = 255  # all green: class 1
    Image.fromarray(picture).save(tmp_path / "green.png")
    top = Model(tmp_path / "img").predict(tmp_path / "green.png", top_k=3)
    assert [t["label"] for t in top] == ["dog", "cat", "bird"]
    assert [t["index"] for t in top] == [1, 0, 2]
    assert sum(t["probability"] for t in top) == pytest.approx(1.0)


def test_predict_needs_preprocessing(two_inputs):
    with pytest.raises(UserError, match="records no preprocessing"):
        two_inputs.predict(np.zeros((2, 2, 3), np.uint8))


def test_top_classes_without_labels_and_bad_k():
    top = top_classes(np.array([0.1, 3.0, 1.0]), None, 5)
    assert [t["index"] for t in top] == [1, 2, 0] and [t["label"] for t in top] == ["1", "2", "0"]
    with pytest.raises(UserError, match="top_k must be at least 1"):
        top_classes(np.array([1.0]), None, 0)


def test_onnxruntime_threads_stop_spinning_when_run_returns(linear_dir):
    # Spinning threads would hold the cores from whatever runs next (see the executor).
    model = Model(linear_dir)
    options = model._executor._session.get_session_options()
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    np.testing.assert_allclose(model.run(X)[0], EXPECTED, rtol=1e-6)
