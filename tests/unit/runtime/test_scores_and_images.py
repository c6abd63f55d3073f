"""Scores reported for what they are (probabilities or logits), grayscale arrays as
grayscale files, the crop key, and Model as a context manager."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from edgekiln.artifact import TensorSpec
from edgekiln.errors import UserError
from edgekiln.runtime.model import Model, castable, scores_kind, top_classes
from edgekiln.runtime.preprocess import looks_like_probabilities, preprocess
from tests.unit.runtime.test_model import _artifact_dir, _linear_onnx

SPEC = {"layout": "NCHW", "scale": 1 / 255, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def test_probabilities_are_reported_as_the_model_gave_them():
    probs = np.array([0.9324, 0.0376, 0.03], np.float32)
    top = top_classes(probs, ["a", "b", "c"], 2)
    assert [t["probability"] for t in top] == pytest.approx([0.9324, 0.0376], abs=1e-6)  # not softmax again
    assert all("logit" not in t for t in top)
    # Recorded in the manifest, they are probabilities even where they do not sum to 1
    # (an int8 softmax rounds).
    rounded = np.array([0.5, 0.3, 0.1], np.float32)
    assert top_classes(rounded, None, 1, "probabilities")[0]["probability"] == pytest.approx(0.5)


def test_logits_are_reported_with_their_softmax():
    logits = np.array([2.0, 1.0, 0.1])
    top = top_classes(logits, None, 3, "logits")
    expected = np.exp(logits) / np.exp(logits).sum()
    assert [t["probability"] for t in top] == pytest.approx(expected.tolist())
    assert [t["logit"] for t in top] == [2.0, 1.0, 0.1]


@pytest.mark.parametrize(
    "values, probabilities",
    [
        ([0.7, 0.2, 0.1], True),
        ([0.7, 0.2, 0.105], True),  # within the tolerance
        ([0.7, 0.2, 0.2], False),  # sums to 1.1
        ([1.2, -0.1, -0.1], False),  # negative: logits that happen to sum to 1
        ([1.0], False),  # one value says nothing
        ([np.nan, 0.5, 0.5], False),
    ],
)
def test_probability_outputs_are_detected(values, probabilities):
    assert looks_like_probabilities(np.array(values)) is probabilities
    assert scores_kind(np.array(values)) == ("probabilities" if probabilities else "logits")


def test_a_grayscale_array_is_taken_as_a_grayscale_file(tmp_path):
    gray = np.random.default_rng(0).integers(0, 256, size=(40, 30), dtype=np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    from_file = preprocess(tmp_path / "gray.png", SPEC, (1, 3, 24, 24))
    np.testing.assert_array_equal(preprocess(gray, SPEC, (1, 3, 24, 24)), from_file)
    np.testing.assert_array_equal(preprocess(gray[:, :, None], SPEC, (1, 3, 24, 24)), from_file)
    assert np.array_equal(from_file[0, 0], from_file[0, 2])  # the three channels are the gray one
    with pytest.raises(UserError, match=r"uint8 HxWx3 \(RGB\) or HxW \(grayscale\), got float32"):
        preprocess(gray.astype(np.float32), SPEC, (1, 3, 24, 24))
    with pytest.raises(UserError, match="got uint8 \\(4, 4, 2\\)"):
        preprocess(np.zeros((4, 4, 2), np.uint8), SPEC, (1, 3, 24, 24))


def test_crop_is_a_center_square_resized_to_the_input():
    picture = np.zeros((40, 40, 3), np.uint8)
    picture[10:30, 10:30] = 255  # a white 20x20 square in the middle
    spec = {"layout": "NHWC", "scale": 1 / 255, "crop": 20}
    tensor = preprocess(picture, spec, (1, 10, 10, 3))
    assert tensor.shape == (1, 10, 10, 3) and tensor.min() == pytest.approx(1.0)  # only the square is left
    whole = preprocess(picture, {**spec, "crop": 40}, (1, 10, 10, 3))
    assert whole.min() == 0.0 and whole.max() == 1.0


def test_model_is_a_context_manager_that_releases_its_files(tmp_path):
    from edgekiln.artifact import Manifest, pack
    from edgekiln.artifact.manifest import MANIFEST_NAME

    _artifact_dir(
        tmp_path / "linear",
        _linear_onnx(),
        [TensorSpec("input", "float32", (1, 4))],
        [TensorSpec("logits", "float32", (1, 3))],
    )
    manifest = Manifest.from_json((tmp_path / "linear" / MANIFEST_NAME).read_bytes())
    packed = pack(manifest, tmp_path / "linear", tmp_path / "linear.tar.gz")
    with Model(packed) as model:
        extracted = model._root
        assert model.run(np.ones((1, 4), np.float64))[0].shape == (1, 3)  # float64: cast, as the agent does
    assert not extracted.exists()
    with pytest.raises(UserError, match="this model was closed"):
        model.run(np.ones((1, 4), np.float32))
    model.close()  # twice is harmless


def test_model_and_agent_share_one_dtype_rule():
    assert castable("float64", "float32") and castable("float16", "float32") and castable("int32", "int64")
    assert not castable("int32", "float32") and not castable("float32", "int64") and not castable("bool", "int64")


def test_predict_reports_a_softmax_models_own_probability(tmp_path):
    weight = np.array([[4.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.5]], np.float32).reshape(3, 3, 1, 1)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "Wc"], ["c"]),
            helper.make_node("GlobalAveragePool", ["c"], ["g"]),
            helper.make_node("Flatten", ["g"], ["f"]),
            helper.make_node("Softmax", ["f"], ["probs"], axis=1),
        ],
        "softmax",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 2, 2])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 3])],
        initializer=[numpy_helper.from_array(weight, "Wc")],
    )
    _artifact_dir(
        tmp_path / "sm",
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
        [TensorSpec("image", "float32", (1, 3, 2, 2))],
        [TensorSpec("probs", "float32", (1, 3))],
        preprocessing={"layout": "NCHW", "scale": 1 / 255},
    )
    white = np.full((2, 2, 3), 255, np.uint8)
    with Model(tmp_path / "sm") as model:
        own = model.run(preprocess(white, {"layout": "NCHW", "scale": 1 / 255}, (1, 3, 2, 2)))[0].reshape(-1)
        top = model.predict(white, top_k=3)
    assert [t["probability"] for t in top] == pytest.approx(sorted(own.tolist(), reverse=True), abs=1e-7)
    assert top[0]["probability"] == pytest.approx(np.exp(4) / (np.exp(4) + np.exp(1) + np.exp(0.5)), rel=1e-5)
