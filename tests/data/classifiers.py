"""A user's image classifier built in code (Conv → ReLU → pool → Gemm → Softmax?), seeded, and
seeded JPEG photos: tests of preprocessing, labels and scores for models outside the zoo."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_classifier(
    path: Path, classes: int = 5, softmax: bool = False, side: int = 32, layout: str = "NCHW", constant: bool = False
) -> Path:
    """An ONNX classifier of ``side``x``side`` RGB images into ``classes`` scores: logits, or
    probabilities when ``softmax``; ``constant`` multiplies the features by zero, so that the
    output does not depend on the input."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    conv = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    fc = rng.normal(size=(4, classes)).astype(np.float32)
    bias = rng.normal(size=(classes,)).astype(np.float32)
    nodes = []
    image = "image"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]))
        image = "nchw"
    nodes += [
        helper.make_node("Conv", [image, "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
    ]
    if constant:
        nodes.append(helper.make_node("Mul", ["f", "zero"], ["f0"]))
    nodes.append(helper.make_node("Gemm", ["f0" if constant else "f", "fc", "b"], ["l" if softmax else "scores"]))
    if softmax:
        nodes.append(helper.make_node("Softmax", ["l"], ["scores"], axis=1))
    shape = [1, 3, side, side] if layout == "NCHW" else [1, side, side, 3]
    weights = [
        helper.make_tensor("w", TensorProto.FLOAT, conv.shape, conv.ravel()),
        helper.make_tensor("fc", TensorProto.FLOAT, fc.shape, fc.ravel()),
        helper.make_tensor("b", TensorProto.FLOAT, bias.shape, bias),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
    ]
    graph = helper.make_graph(
        nodes,
        "user_classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, classes])],
        weights,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def write_jpeg(path: Path, seed: int = 0, size: tuple[int, int] = (96, 64)) -> Path:
    """A seeded colour JPEG (smooth gradients plus noise, as a photo compresses)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    ramp = np.linspace(0, 255, w)[None, :, None] * rng.uniform(0.2, 1.0, size=(1, 1, 3))
    pixels = np.clip(ramp + rng.normal(0, 30, size=(h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels, "RGB").save(path, "JPEG", quality=90)
    return path
