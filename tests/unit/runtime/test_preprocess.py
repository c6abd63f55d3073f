"""Preprocessing reproduces torchvision's resize / center-crop / normalize."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgekiln.errors import UserError
from edgekiln.runtime.model import top_classes
from edgekiln.runtime.preprocess import preprocess

SPEC = {
    "layout": "NCHW",
    "color": "RGB",
    "resize": 256,
    "crop": 224,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "scale": 1 / 255,
}


def test_uniform_image_normalizes_to_known_values(tmp_path):
    path = tmp_path / "grey.png"
    Image.new("RGB", (320, 240), (128, 64, 255)).save(path)
    tensor = preprocess(path, SPEC, (1, 3, 224, 224))
    assert tensor.shape == (1, 3, 224, 224) and tensor.dtype == np.float32
    expected = (np.array([128, 64, 255]) / 255 - np.array(SPEC["mean"])) / np.array(SPEC["std"])
    np.testing.assert_allclose(tensor[0, :, 100, 100], expected, atol=1e-5)


def test_center_crop_takes_the_middle():
    array = np.zeros((256, 512, 3), dtype=np.uint8)
    array[:, 128:384] = 255  # a white band exactly where the crop of a 256x512 image lands
    tensor = preprocess(array, {**SPEC, "resize": None, "mean": [0, 0, 0], "std": [1, 1, 1]}, (1, 3, 224, 224))
    assert tensor.min() == pytest.approx(1.0)


def test_nhwc_layout():
    array = np.full((224, 224, 3), 255, dtype=np.uint8)
    tensor = preprocess(array, {**SPEC, "layout": "NHWC"}, (1, 224, 224, 3))
    assert tensor.shape == (1, 224, 224, 3)


def test_unreadable_images_are_user_errors(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(UserError, match="not a readable image"):
        preprocess(bad, SPEC, (1, 3, 224, 224))
    with pytest.raises(UserError, match="does not exist"):
        preprocess(tmp_path / "missing.png", SPEC, (1, 3, 224, 224))


def test_top_classes_orders_by_probability():
    logits = np.array([0.0, 3.0, 1.0, 2.0])
    top = top_classes(logits, ["a", "b", "c", "d"], 2)
    assert [t["label"] for t in top] == ["b", "d"]
    assert top[0]["probability"] == pytest.approx(np.exp(3) / np.exp([0, 3, 1, 2]).sum())


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"resize": "256"}, "resize"),
        ({"resize": 10**9}, "resize"),
        ({"resize": True}, "resize"),
        ({"mean": "imagenet"}, "mean"),
        ({"std": [0.2, 0.2]}, "std"),
        ({"std": [0, 1, 1]}, "zero"),
        ({"scale": [1]}, "scale"),
        ({"scale": float("nan")}, "scale"),
        ({"color": 3}, "color"),
    ],
)
def test_malformed_preprocessing_from_a_manifest_names_the_field(change, needle):
    from edgekiln.errors import IntegrityError

    with pytest.raises(IntegrityError, match=needle):
        preprocess(np.zeros((8, 8, 3), np.uint8), {**SPEC, **change}, (1, 3, 224, 224))


def test_a_huge_image_input_is_refused_before_pillow_allocates_it():
    from edgekiln.errors import IntegrityError

    with pytest.raises(IntegrityError, match="up to 8192"):
        preprocess(np.zeros((8, 8, 3), np.uint8), SPEC, (1, 3, 100000, 100000))
    with pytest.raises(UserError, match="4-d image tensor"):
        preprocess(np.zeros((8, 8, 3), np.uint8), SPEC, (1, 3, 224))
