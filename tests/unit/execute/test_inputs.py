"""Seeded inputs and the comparison of outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgekiln.artifact.manifest import TensorSpec
from edgekiln.errors import BackendError
from edgekiln.execute.inputs import compare_outputs, decode_outputs, encode_outputs, make_inputs

IMAGENET = {
    "layout": "NCHW",
    "color": "RGB",
    "resize": 256,
    "crop": 224,
    "scale": 1 / 255.0,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
}


def test_the_same_seed_gives_the_same_inputs_and_another_seed_others():
    specs = (TensorSpec("x", "float32", (1, 3, 4, 4)), TensorSpec("ids", "int64", (1, 5)))
    first, again, other = make_inputs(specs, 3, 7), make_inputs(specs, 3, 7), make_inputs(specs, 3, 8)
    assert len(first) == 3 and all(len(sample) == 2 for sample in first)
    assert all(np.array_equal(a, b) for s, t in zip(first, again) for a, b in zip(s, t))
    assert not np.array_equal(first[0][0], other[0][0])
    assert first[0][0].dtype == np.float32 and first[0][0].shape == (1, 3, 4, 4)
    assert first[0][1].dtype == np.int64 and first[0][1].min() >= -128 and first[0][1].max() < 127


@pytest.mark.parametrize("dtype, low, high", [("uint8", 0, 127), ("int8", -128, 127), ("float16", -math.inf, math.inf)])
def test_dtypes_stay_in_their_range(dtype, low, high):
    (sample,) = make_inputs((TensorSpec("x", dtype, (2, 64)),), 1, 0)
    assert sample[0].dtype == np.dtype(dtype) and sample[0].shape == (2, 64)
    assert low <= sample[0].min() and sample[0].max() <= high


def test_a_model_with_preprocessing_gets_the_image_first_over_its_whole_batch():
    from edgekiln import zoo

    spec = TensorSpec("x", "float32", (2, 3, 224, 224))
    samples = make_inputs((spec,), 2, 0, IMAGENET, zoo.sample_image_path())
    image = samples[0][0]
    assert image.shape == (2, 3, 224, 224) and np.array_equal(image[0], image[1])
    # Normalised pixels, not standard normal noise: a picture has smooth neighbours.
    assert abs(float(image[0, 0, 100, 100]) - float(image[0, 0, 100, 101])) < 0.5
    assert not np.array_equal(samples[1][0], image)
    # Without an image (or preprocessing) every sample is random.
    assert np.array_equal(make_inputs((spec,), 1, 0, IMAGENET, None)[0][0], make_inputs((spec,), 1, 0)[0][0])


def test_a_missing_image_only_loses_that_sample(tmp_path):
    spec = TensorSpec("x", "float32", (1, 3, 224, 224))
    samples = make_inputs((spec,), 2, 0, IMAGENET, tmp_path / "nope.png")
    assert len(samples) == 2 and np.array_equal(samples[0][0], make_inputs((spec,), 1, 0)[0][0])


def test_comparison_gives_the_worst_difference_per_output_and_top1_per_row():
    ref = [[np.array([[0.1, 0.9], [0.8, 0.2]], np.float32), np.zeros(3, np.float32)]]
    same = [[ref[0][0].copy(), ref[0][1].copy()]]
    flipped = [[np.array([[0.1, 0.9], [0.1, 0.2]], np.float32), np.array([0, 0.5, 0], np.float32)]]
    exact = compare_outputs(ref, same)
    assert exact.max_abs_diff == (0.0, 0.0) and exact.top1_agreement == 1.0 and exact.samples == 1
    diff = compare_outputs(ref, flipped)
    assert diff.max_abs_diff == pytest.approx((0.7, 0.5)) and diff.worst == pytest.approx(0.7)
    assert diff.top1_agreement == 0.5


def test_nan_and_inf_outputs_are_an_infinite_difference():
    ref = [[np.ones((1, 3), np.float32)]]
    for bad in (np.nan, np.inf):
        got = [[np.array([[1, bad, 1]], np.float32)]]
        assert compare_outputs(ref, got).max_abs_diff == (math.inf,)


def test_shape_or_count_mismatches_are_backend_errors_naming_the_output():
    ref = [[np.ones((1, 3), np.float32)]]
    with pytest.raises(BackendError, match=r"output 'logits' has shape \[1, 4\]; the reference gives \[1, 3\]"):
        compare_outputs(ref, [[np.ones((1, 4), np.float32)]], ["logits"])
    with pytest.raises(BackendError, match="2 outputs; the reference gives 1"):
        compare_outputs(ref, [[np.ones((1, 3)), np.ones(1)]])
    with pytest.raises(BackendError, match="0 output samples against 1"):
        compare_outputs(ref, [])


def test_recorded_outputs_come_back_as_they_were_with_their_byte_count():
    big_endian = np.arange(6, dtype=">f4").reshape(2, 3)
    samples = [[big_endian, np.array([[-3, 7]], np.int64)], [np.zeros((1, 2), np.float16), np.ones(0, np.uint8)]]
    specs, data = encode_outputs(samples)
    assert specs[0] == [{"dtype": "float32", "shape": [2, 3]}, {"dtype": "int64", "shape": [1, 2]}]
    assert len(data) == 6 * 4 + 2 * 8 + 2 * 2 + 0
    assert data[:8] == np.array([0.0, 1.0], "<f4").tobytes()  # little-endian whatever the source
    back = decode_outputs(specs, data)
    assert [[a.dtype.name for a in s] for s in back] == [["float32", "int64"], ["float16", "uint8"]]
    for got, want in zip(back, samples):
        for g, w in zip(got, want):
            assert g.shape == w.shape and np.array_equal(g, w)
