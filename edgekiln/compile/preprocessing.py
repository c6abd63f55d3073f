"""A user's preprocessing, labels and output kind for any model: ``--preprocess``, ``--labels``.

The manifest's ``preprocessing`` holds the keys the runtime applies (runtime/preprocess.py):
``layout`` (NCHW | NHWC), ``color`` (RGB | BGR), ``resize`` (shorter side, pixels), ``crop``
(center square, pixels; default the input size), ``scale`` (pixel values 0-255 times this),
``mean`` and ``std`` (per channel, in ``color`` order, after scaling):
``x = (pixel[color] * scale - mean) / std``. Zoo models carry theirs; for any other model
``--preprocess`` gives them as JSON or by a preset name, and ``--labels`` the class names.
When neither ``resize`` nor ``crop`` is given, the shorter side is resized to the input side /
0.875 (256 for 224) and the center crop is the input, as ImageNet models are evaluated.
With both, images work for that model wherever they work for the zoo's: ``edgekiln run``,
``predict`` (Python and the agent), ``--calibration img/`` and the int8 accuracy gate.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from typing import Any, Mapping, Sequence

from edgekiln.artifact.manifest import TensorSpec
from edgekiln.artifact.paths import MAX_LABELS_BYTES, parse_labels
from edgekiln.compile.stages import SourceModel
from edgekiln.errors import IntegrityError, UserError
from edgekiln.runtime.preprocess import check_spec

KEYS = ("layout", "color", "resize", "crop", "mean", "std", "scale")
# A preprocessing description is a few hundred bytes; the bound refuses a runaway argument.
MAX_JSON_CHARS = 4096
# Input side / resized side of the ImageNet evaluation convention (224 / 256).
RESIZE_RATIO = 0.875
# Far above any classifier's class count (ImageNet-21k has 21,841).
MAX_LABELS = 100_000

# The common conventions by name; the layout, resize and crop come from the model's input
# shape (see _fit_layout).
PREPROCESSING_PRESETS: Mapping[str, Mapping[str, Any]] = {
    # torchvision: RGB in [0, 1], normalized with ImageNet's mean and std.
    "imagenet-torch": {
        "color": "RGB",
        "scale": 1 / 255,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    },
    # Keras applications' "tf" mode (MobileNet, EfficientNet-Lite, Inception): RGB in [-1, 1].
    "imagenet-tf": {
        "color": "RGB",
        "scale": 1 / 127.5,
        "mean": [1.0, 1.0, 1.0],
        "std": [1.0, 1.0, 1.0],
    },
    # Caffe and Keras' "caffe" mode (VGG, ResNet50 of keras.applications): BGR in 0-255,
    # minus ImageNet's mean pixel in BGR order, not scaled.
    "imagenet-caffe": {
        "color": "BGR",
        "scale": 1.0,
        "mean": [103.939, 116.779, 123.68],
        "std": [1.0, 1.0, 1.0],
    },
}

_HINT = (
    f"give a preset ({', '.join(PREPROCESSING_PRESETS)}) or a JSON object with the keys "
    f'{", ".join(KEYS)}, e.g. \'{{"preset": "imagenet-torch", "resize": 320, "crop": 288}}\''
)


def parse_preprocessing(value: str | Mapping[str, Any]) -> dict[str, Any]:
    """``--preprocess``: a preset name, a JSON object, or a mapping, as a preprocessing dict.

    A JSON object may name a ``preset`` and change some of its keys. The layout is filled in
    from the model by :func:`apply` when not given.
    """
    if isinstance(value, str):
        text = value.strip()
        if len(text) > MAX_JSON_CHARS:
            raise UserError(f"--preprocess is {len(text)} characters, over {MAX_JSON_CHARS}", hint=_HINT)
        if not text.startswith(("{", "[")):
            return _preset(text)
        try:
            value = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise UserError(f"--preprocess is not valid JSON: {str(exc)[:120]}", hint=_HINT) from None
    if not isinstance(value, Mapping):
        raise UserError(f"--preprocess must be a JSON object or a preset, got {type(value).__name__}", hint=_HINT)
    given = dict(value)
    base = _preset(given.pop("preset")) if "preset" in given else {}
    unknown = sorted(str(k) for k in given if k not in KEYS)
    if unknown:
        raise UserError(f"--preprocess has unknown keys {unknown[:10]}", hint=_HINT)
    spec = {**base, **given}
    try:
        # Every value's type and range, as the device will check them (the input size is
        # checked against the model later, by apply()).
        check_spec(spec, 1, 1)
    except IntegrityError as exc:
        raise UserError(f"--preprocess: {exc.message}", hint=_HINT) from None
    if spec.get("layout", "NCHW") not in ("NCHW", "NHWC"):
        raise UserError(f"--preprocess layout {spec['layout']!r} is not NCHW or NHWC", hint=_HINT)
    return spec


def _preset(name: Any) -> dict[str, Any]:
    preset = PREPROCESSING_PRESETS.get(name) if isinstance(name, str) else None
    if preset is None:
        raise UserError(f"unknown preprocessing preset {str(name)[:60]!r}", hint=_HINT)
    return json.loads(json.dumps(preset))  # a deep copy: the caller may change it


def read_labels_file(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """``--labels``: one class name per line (UTF-8; blank lines and ``#`` comments are
    skipped, as the runtime reads them), at most ``MAX_LABELS`` names in ``MAX_LABELS_BYTES``."""
    hint = "give a UTF-8 text file with one class name per line, in the order of the model's outputs"
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_LABELS_BYTES + 1)
    except OSError as exc:
        raise UserError(f"cannot read the labels file {path}: {exc.strerror or exc}", hint=hint) from None
    try:
        labels = [line.strip() for line in parse_labels(data, str(path))]
    except IntegrityError as exc:
        raise UserError(exc.message, hint=hint) from None
    if not labels:
        raise UserError(f"the labels file {path} names no class", hint=hint)
    if len(labels) > MAX_LABELS:
        raise UserError(f"the labels file {path} has {len(labels)} names, over the limit of {MAX_LABELS}", hint=hint)
    return tuple(labels)


def given(
    preprocessing: str | Mapping[str, Any] | None, labels: str | os.PathLike[str] | Sequence[str] | None
) -> tuple[dict[str, Any] | None, tuple[str, ...] | None]:
    """``CompileOptions.preprocessing`` and ``labels`` read and checked before any work:
    the preprocessing dict (layout not yet fitted) and the class names, each None when not given."""
    spec = None if preprocessing is None else parse_preprocessing(preprocessing)
    if labels is None or isinstance(labels, (str, os.PathLike)):
        names = None if labels is None else read_labels_file(labels)
    else:
        names = tuple(str(name) for name in labels)
        if not names or len(names) > MAX_LABELS or any(not n or "\n" in n for n in names):
            raise UserError(f"labels must be 1 to {MAX_LABELS} non-empty names without line breaks")
    return spec, names


def apply(
    source: SourceModel,
    preprocessing: Mapping[str, Any] | None,
    labels: Sequence[str] | None,
    labels_origin: str = "--labels",
) -> SourceModel:
    """``source`` with the user's preprocessing and labels in place of its own, each checked
    against the model: one image input that the layout fits, one name per output class."""
    if preprocessing is not None:
        preprocessing = _fit_layout(dict(preprocessing), source.inputs)
        source = replace(source, preprocessing=preprocessing)
    if labels is not None:
        width = class_count(source.outputs)
        if len(labels) != width:
            raise UserError(
                f"{labels_origin} gives {len(labels)} class names; the model's output "
                f"{source.outputs[0].name!r} has {width} classes",
                hint="give one name per class in output order; a background class needs a name too",
            )
        source = replace(source, labels=tuple(labels))
    return source


def class_count(outputs: Sequence[TensorSpec]) -> int:
    """Values per sample of the first output: the classes of a classifier."""
    if not outputs:
        raise UserError("the model has no output to name classes of")
    count = 1
    for dim in outputs[0].shape[1:]:
        count *= dim
    return count


def _fit_layout(spec: dict[str, Any], inputs: Sequence[TensorSpec]) -> dict[str, Any]:
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        shapes = [list(t.shape) for t in inputs]
        raise UserError(
            f"--preprocess needs a model with one image input (4-d); this one takes {shapes}",
            hint="run the model with tensors (.npy) instead",
        )
    shape = inputs[0].shape
    layouts = [name for name, axis in (("NCHW", 1), ("NHWC", 3)) if shape[axis] == 3]
    layout = spec.get("layout") or (layouts[0] if layouts else None)
    if layout not in layouts:
        raise UserError(
            f"the model's input {inputs[0].name!r} has shape {list(shape)}, which is not a 3-channel "
            f"{layout or 'NCHW or NHWC'} image",
            hint="preprocessing makes RGB/BGR images; give the layout whose channel axis has 3",
        )
    spec["layout"] = layout
    height, width = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
    if "resize" not in spec and "crop" not in spec:
        # The ImageNet evaluation convention: shorter side to input / 0.875 (256 for 224),
        # then the center crop the model takes.
        spec["resize"] = round(min(height, width) / RESIZE_RATIO)
        if height == width:
            spec["crop"] = height
    try:
        check_spec(spec, height, width)
    except IntegrityError as exc:
        raise UserError(f"--preprocess: {exc.message}", hint=_HINT) from None
    return spec


# Operators that pass a value on unchanged (up to shape), between a final Softmax and the output.
_PASS_THROUGH = (
    "Identity",
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Cast",
    "Dropout",
    "QuantizeLinear",
    "DequantizeLinear",
)


def output_scores(model: Any) -> str:
    """What the first output of ``model`` (an onnx.ModelProto) holds: "probabilities" when
    a Softmax makes it (through reshapes only), else "logits"."""
    producers = {out: node for node in model.graph.node for out in node.output}
    if not model.graph.output:
        return "logits"
    name = model.graph.output[0].name
    for _ in range(len(model.graph.node) + 1):
        node = producers.get(name)
        if node is None:
            return "logits"
        if node.op_type == "Softmax":
            return "probabilities"
        if node.op_type not in _PASS_THROUGH or not node.input:
            return "logits"
        name = node.input[0]
    return "logits"
