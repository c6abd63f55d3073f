"""Image preprocessing from the manifest's description (resize, center crop, normalize).

The manifest records the preprocessing the model was trained with, so that the device
reproduces it exactly; Pillow does the decoding and resampling.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from edgekiln.errors import IntegrityError, UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# Sides of the resized image: far above any classifier's input, far below what exhausts memory.
MAX_SIDE = 8192


def load_image(source: Any) -> Any:
    """A PIL RGB image from a path, a PIL image, or a uint8 array: HxWx3 (RGB), HxWx4 (RGBA)
    or HxW / HxWx1 (grayscale, made RGB as a grayscale file is)."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, np.ndarray):
        gray = source.ndim == 2 or (source.ndim == 3 and source.shape[2] == 1)
        if source.dtype != np.uint8 or not (gray or (source.ndim == 3 and source.shape[2] in (3, 4))):
            raise UserError(
                f"an image array must be uint8 HxWx3 (RGB) or HxW (grayscale), got {source.dtype} {source.shape}"
            )
        if gray:
            return Image.fromarray(np.ascontiguousarray(source.reshape(source.shape[:2])), "L").convert("RGB")
        return Image.fromarray(np.ascontiguousarray(source[:, :, :3]), "RGB")
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

    layout = spec.get("layout", "NCHW")
    if layout not in ("NCHW", "NHWC"):
        raise UserError(f"unsupported preprocessing layout {layout!r}")
    if len(shape) != 4:
        raise UserError(f"preprocessing makes a 4-d image tensor; the model's input has shape {list(shape)}")
    height, width = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
    check_spec(spec, height, width)
    image = load_image(source)
    resize = spec.get("resize")
    if resize:
        # Resize the shorter side to `resize`, as torchvision's Resize(int) does.
        w, h = image.size
        scale = resize / min(w, h)
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    # A center crop of `crop` (default: the input size), then resized to the input if the
    # two differ, as torchvision's CenterCrop before a model with another input size.
    crop_w, crop_h = (spec["crop"], spec["crop"]) if spec.get("crop") else (width, height)
    w, h = image.size
    left, top = max(0, (w - crop_w) // 2), max(0, (h - crop_h) // 2)
    image = image.crop((left, top, left + crop_w, top + crop_h))
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


def check_spec(spec: Mapping[str, Any], height: int, width: int) -> None:
    """The manifest's preprocessing values have the types and ranges preprocess() uses: a
    foreign or altered manifest fails here with the field's name, not in numpy or Pillow."""

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)

    for key in ("resize", "crop"):
        side = spec.get(key)
        if side is not None and not (isinstance(side, int) and not isinstance(side, bool) and 0 < side <= MAX_SIDE):
            raise IntegrityError(f"preprocessing {key} {side!r} is not a size from 1 to {MAX_SIDE}")
    if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE):
        raise IntegrityError(f"the image input is {height}x{width}; preprocessing makes images up to {MAX_SIDE}")
    if spec.get("color", "RGB") not in ("RGB", "BGR"):
        raise IntegrityError(f"preprocessing color {spec.get('color')!r} is not RGB or BGR")
    if "scale" in spec and not number(spec["scale"]):
        raise IntegrityError(f"preprocessing scale {spec['scale']!r} is not a number")
    for key in ("mean", "std"):
        value = spec.get(key, [1.0, 1.0, 1.0])
        if not (isinstance(value, (list, tuple)) and len(value) == 3 and all(number(v) for v in value)):
            raise IntegrityError(f"preprocessing {key} {value!r} is not three numbers")
    if any(v == 0 for v in spec.get("std", [1.0])):
        raise IntegrityError("preprocessing std has a zero")


# How far from 1 the sum of a probability vector may be: float32 softmax over 1000 classes
# sums to 1 within about 1e-6; a float16 or int8-dequantized one within a few 1e-3.
PROBABILITY_SUM_TOLERANCE = 1e-2


def looks_like_probabilities(values: np.ndarray) -> bool:
    """True when ``values`` (one score vector) are non-negative and sum to 1: the output of a
    softmax already, which must not be put through softmax again."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size < 2 or not np.all(np.isfinite(values)) or values.min() < 0:
        return False
    return abs(float(values.sum()) - 1.0) <= PROBABILITY_SUM_TOLERANCE


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)
