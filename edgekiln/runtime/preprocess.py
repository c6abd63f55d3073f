"""Image preprocessing from the manifest's description (resize, center crop, normalize).

The manifest records the preprocessing the model was trained with, so that the device
reproduces it exactly; Pillow does the decoding and resampling.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from edgekiln.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def load_image(source: Any) -> Any:
    """A PIL RGB image from a path, a PIL image, or an HxWx3 uint8 array."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, np.ndarray):
        if source.ndim != 3 or source.shape[2] not in (3, 4) or source.dtype != np.uint8:
            raise UserError(f"an image array must be HxWx3 uint8, got {source.dtype} {source.shape}")
        return Image.fromarray(source[:, :, :3], "RGB")
    if isinstance(source, (str, os.PathLike)):
        try:
            with Image.open(source) as img:
                return img.convert("RGB")
        except FileNotFoundError:
            raise UserError(f"image {source} does not exist") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise UserError(f"{source} is not a readable image: {exc}") from None
    raise UserError(f"cannot read an image from {type(source).__name__}")


def preprocess(source: Any, spec: Mapping[str, Any], shape: tuple[int, ...]) -> np.ndarray:
    """Turn an image into the model's input tensor following ``spec``.

    ``shape`` is the input shape from the manifest (batch 1), NCHW or NHWC per the spec.
    """
    from PIL import Image

    image = load_image(source)
    layout = spec.get("layout", "NCHW")
    if layout not in ("NCHW", "NHWC"):
        raise UserError(f"unsupported preprocessing layout {layout!r}")
    height, width = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
    resize = spec.get("resize")
    if resize:
        # Resize the shorter side to `resize`, as torchvision's Resize(int) does.
        w, h = image.size
        scale = resize / min(w, h)
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    w, h = image.size
    left, top = max(0, (w - width) // 2), max(0, (h - height) // 2)
    image = image.crop((left, top, left + width, top + height))
    if image.size != (width, height):
        image = image.resize((width, height), Image.BILINEAR)
    array = np.asarray(image, dtype=np.float32)
    if spec.get("color", "RGB") == "BGR":
        array = array[:, :, ::-1]
    array = array * float(spec.get("scale", 1.0 / 255.0))
    mean = np.asarray(spec.get("mean", [0.0, 0.0, 0.0]), dtype=np.float32)
    std = np.asarray(spec.get("std", [1.0, 1.0, 1.0]), dtype=np.float32)
    array = (array - mean) / std
    if layout == "NCHW":
        array = array.transpose(2, 0, 1)
    return np.ascontiguousarray(array[np.newaxis], dtype=np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)
