"""--preprocess and --labels for a user's own classifier: presets, JSON, checks against the
model, and the artifact that takes images (onnxruntime backend: no TVM build)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from edgekiln.artifact.manifest import TensorSpec
from edgekiln.artifact.package import read_manifest
from edgekiln.compile import preprocessing
from edgekiln.compile.api import CompileOptions, compile_model
from edgekiln.compile.preprocessing import (
    PREPROCESSING_PRESETS,
    apply,
    output_scores,
    parse_preprocessing,
    read_labels_file,
)
from edgekiln.compile.quantize import QuantizeOptions
from edgekiln.compile.stages import SourceModel
from edgekiln.errors import UserError
from edgekiln.runtime.model import Model
from edgekiln.runtime.preprocess import preprocess
from tests.data.classifiers import write_classifier, write_jpeg

LABELS = ["cat", "dog", "fox", "owl", "bee"]


def _source(shape=(1, 3, 32, 32), classes=5) -> SourceModel:
    return SourceModel(
        name="m",
        path=__import__("pathlib").Path("m.onnx"),
        source_format="onnx",
        source_ref="m.onnx",
        source_sha256="0" * 64,
        inputs=(TensorSpec("image", "float32", shape),),
        outputs=(TensorSpec("scores", "float32", (1, classes)),),
        opset=17,
    )


def test_presets_have_their_documented_values():
    torch_ = parse_preprocessing("imagenet-torch")
    assert torch_ == {
        "color": "RGB",
        "scale": 1 / 255,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    tf = parse_preprocessing("imagenet-tf")
    # Pixel 0 becomes -1 and 255 becomes 1: (p * scale - mean) / std.
    assert [(p * tf["scale"] - tf["mean"][0]) / tf["std"][0] for p in (0, 255)] == [-1.0, 1.0]
    caffe = parse_preprocessing("imagenet-caffe")
    assert caffe["color"] == "BGR" and caffe["scale"] == 1.0 and caffe["mean"] == [103.939, 116.779, 123.68]
    assert set(PREPROCESSING_PRESETS) == {"imagenet-torch", "imagenet-tf", "imagenet-caffe"}
    parse_preprocessing("imagenet-torch")["mean"][0] = 9  # a copy: the preset stays as it was
    assert PREPROCESSING_PRESETS["imagenet-torch"]["mean"][0] == 0.485


def test_json_sets_keys_and_may_change_a_preset():
    spec = parse_preprocessing('{"preset": "imagenet-caffe", "resize": 320, "crop": 288}')
    assert spec["color"] == "BGR" and spec["resize"] == 320 and spec["crop"] == 288
    own = parse_preprocessing({"layout": "NHWC", "color": "RGB", "scale": 1, "mean": [0, 0, 0], "std": [1, 1, 1]})
    assert own["layout"] == "NHWC" and "preset" not in own


@pytest.mark.parametrize(
    "value, message",
    [
        ("{bad", "--preprocess is not valid JSON"),
        ("imagenet-pt", "unknown preprocessing preset 'imagenet-pt'"),
        ('{"preset": "nope"}', "unknown preprocessing preset 'nope'"),
        ("[1, 2]", "must be a JSON object or a preset, got list"),
        ('{"colour": "RGB"}', r"unknown keys \['colour'\]"),
        ('{"mean": [1, 2]}', "mean \\[1, 2\\] is not three numbers"),
        ('{"std": [1, 0, 1]}', "std has a zero"),
        ('{"color": "HSV"}', "is not RGB or BGR"),
        ('{"resize": -3}', "resize -3 is not a size"),
        ('{"crop": 1.5}', "crop 1.5 is not a size"),
        ('{"layout": "CHW"}', "layout 'CHW' is not NCHW or NHWC"),
        ("{" + " " * 5000 + "}", "over 4096"),
    ],
)
def test_bad_preprocessing_is_one_user_error_with_a_hint(value, message):
    with pytest.raises(UserError, match=message) as info:
        parse_preprocessing(value)
    assert "imagenet-torch" in info.value.hint and "\n" not in info.value.one_line()


def test_layout_resize_and_crop_come_from_the_model():
    nchw = apply(_source(), parse_preprocessing("imagenet-torch"), None).preprocessing
    assert nchw["layout"] == "NCHW" and nchw["resize"] == 37 and nchw["crop"] == 32  # 32 / 0.875
    assert apply(_source((1, 3, 224, 224)), {}, None).preprocessing["resize"] == 256
    nhwc = apply(_source((1, 32, 32, 3)), parse_preprocessing("imagenet-tf"), None).preprocessing
    assert nhwc["layout"] == "NHWC"
    given = apply(_source(), {"resize": 64}, None).preprocessing
    assert given["resize"] == 64 and "crop" not in given
    with pytest.raises(UserError, match=r"not a 3-channel NHWC image"):
        apply(_source(), {"layout": "NHWC"}, None)
    with pytest.raises(UserError, match=r"one image input \(4-d\); this one takes \[\[1, 8\]\]"):
        apply(_source((1, 8)), {}, None)


def test_labels_file_is_bounded_and_checked_against_the_output(tmp_path):
    good = tmp_path / "labels.txt"
    good.write_text("# classes\ncat\r\ndog\n\nfox\nowl\nbee\n", encoding="utf-8")
    assert read_labels_file(good) == tuple(LABELS)  # comments, blank lines and CRs dropped
    assert apply(_source(), None, read_labels_file(good)).labels == tuple(LABELS)
    with pytest.raises(UserError, match="gives 5 class names; the model's output 'scores' has 1000 classes"):
        apply(_source(classes=1000), None, read_labels_file(good))
    with pytest.raises(UserError, match="cannot read the labels file"):
        read_labels_file(tmp_path / "missing.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00cat")
    with pytest.raises(UserError, match="not UTF-8"):
        read_labels_file(tmp_path / "bin.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(UserError, match="names no class"):
        read_labels_file(tmp_path / "empty.txt")
    (tmp_path / "huge.txt").write_bytes(b"x\n" * (3 << 20))
    with pytest.raises(UserError, match="over 4 MiB"):
        read_labels_file(tmp_path / "huge.txt")
    (tmp_path / "many.txt").write_text("c\n" * (preprocessing.MAX_LABELS + 1))
    with pytest.raises(UserError, match="over the limit of 100000"):
        read_labels_file(tmp_path / "many.txt")


def test_a_final_softmax_makes_probabilities(tmp_path):
    assert output_scores(onnx.load(write_classifier(tmp_path / "p.onnx", softmax=True))) == "probabilities"
    assert output_scores(onnx.load(write_classifier(tmp_path / "l.onnx"))) == "logits"
    model = onnx.load(tmp_path / "p.onnx")
    # Through a reshape the output is still the softmax's.
    model.graph.node[-1].output[0] = "sm"
    model.graph.node.append(onnx.helper.make_node("Flatten", ["sm"], ["scores"]))
    assert output_scores(model) == "probabilities"


@pytest.fixture
def user_model(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    return write_classifier(tmp_path / "user.onnx"), labels, write_jpeg(tmp_path / "photo.jpg")


def test_users_classifier_takes_images_and_names_classes(user_model, tmp_path):
    model_path, labels, photo = user_model
    options = CompileOptions(backend="onnxruntime", preprocessing="imagenet-torch", labels=str(labels))
    artifact = compile_model(model_path, "x86_64", tmp_path / "user.tar.gz", options=options)
    manifest = read_manifest(artifact.path)
    assert manifest.preprocessing["layout"] == "NCHW" and manifest.preprocessing["mean"] == [0.485, 0.456, 0.406]
    assert manifest.labels == "labels.txt" and manifest.scores == "logits"
    with Model(artifact.path) as model:
        top = model.predict(photo, top_k=5)
        tensor = preprocess(photo, manifest.preprocessing, (1, 3, 32, 32))
        logits = model.run([tensor])[0].reshape(-1)
    assert [t["label"] for t in top] == [LABELS[i] for i in np.argsort(-logits, kind="stable")]
    assert top[0]["logit"] == pytest.approx(float(logits.max()), rel=1e-6)
    assert sum(t["probability"] for t in top) == pytest.approx(1.0, abs=1e-6)


def test_labels_that_do_not_fit_fail_before_the_build(user_model, tmp_path):
    model_path, _, _ = user_model
    three = tmp_path / "three.txt"
    three.write_text("a\nb\nc\n")
    with pytest.raises(UserError, match="gives 3 class names; the model's output 'scores' has 5"):
        options = CompileOptions(backend="onnxruntime", labels=str(three))
        compile_model(model_path, "x86_64", tmp_path / "x.tar.gz", options=options)
    assert not (tmp_path / "x.tar.gz").exists()


def test_calibration_images_and_the_gate_work_for_a_users_model(user_model, tmp_path):
    model_path, labels, _ = user_model
    folder = tmp_path / "calibration"
    folder.mkdir()
    for i in range(10):
        write_jpeg(folder / f"{i}.jpg", seed=i)
    options = CompileOptions(
        backend="onnxruntime",
        preprocessing='{"preset": "imagenet-tf"}',
        labels=str(labels),
        quantize=QuantizeOptions(calibration=str(folder), calibration_samples=10, accuracy_tolerance=0.9),
    )
    artifact = compile_model(model_path, "x86_64", tmp_path / "int8.tar.gz", options=options)
    quantization = read_manifest(artifact.path).quantization
    assert quantization["calibration_samples"] == 8  # every 5th image is held out for the gate
    assert quantization["accuracy_gate"]["samples"] == 2
    assert json.loads(json.dumps(read_manifest(artifact.path).preprocessing))["scale"] == pytest.approx(1 / 127.5)
