"""Thumbnails of captured inputs, made on the server from the device's own objects.

The browser never gets a presigned URL or an object-store address: those would put
another host in the page (the dashboard must make no request outside the service) and a
bearer credential in its source.  The service reads the batch's JSON Lines object and the
record's first input from the store and answers a small PNG.  An input is either an image
file the device captured as auxiliary data, or an input tensor (float or integer, NCHW or
NHWC, one or three channels) scaled to 0-255 — what the model saw after preprocessing.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

from edgekiln.errors import UserError

THUMB_SIZE = 96
MAX_OBJECT_BYTES = 16 << 20  # a 1024×1024×3 float32 tensor is 12 MiB
MAX_PIXELS = 4096 * 4096
DTYPES = {"FLOAT32": "<f4", "FLOAT16": "<f2", "FLOAT64": "<f8", "UINT8": "u1", "INT8": "i1", "INT32": "<i4"}


class NoThumbnail(UserError):
    """The record has no input that can be shown as an image."""


def first_input(line: dict[str, Any]) -> dict[str, Any] | None:
    """The record's first input: an auxiliary input (an image file) or an input tensor."""
    for field, kind in (("inputs", "aux"), ("input_tensors", "tensor")):
        items = line.get(field) or []
        if items and isinstance(items[0], dict):
            return dict(items[0], kind=kind)
    return None


def item_bytes(item: dict[str, Any], read: Any) -> bytes:
    """An item's bytes: embedded (base64) or from its object (``read(relative key)``)."""
    if "data" in item:
        return base64.b64decode(str(item["data"]), validate=True)
    if "object" in item:
        return read(str(item["object"]))
    raise NoThumbnail("the input carries neither data nor an object key")


def tensor_image(data: bytes, data_type: str, shape: list[int]) -> Any:
    """The first image of an NCHW/NHWC/CHW/HWC tensor, scaled to 0-255, as a PIL image."""
    import numpy as np
    from PIL import Image

    dtype = DTYPES.get(str(data_type).upper())
    if dtype is None:
        raise NoThumbnail(f"tensor type {data_type} is not shown")
    dims = [int(d) for d in shape]
    if not 2 <= len(dims) <= 4 or any(d < 1 for d in dims) or int(np.prod(dims)) > MAX_PIXELS * 3:
        raise NoThumbnail(f"tensor shape {dims} is not an image")
    if len(data) != int(np.prod(dims)) * np.dtype(dtype).itemsize:
        raise NoThumbnail(f"tensor of {len(data)} bytes does not have shape {dims} of {data_type}")
    array = np.frombuffer(data, dtype=dtype)
    array = array.reshape(dims).astype(np.float64)
    if array.ndim == 4:
        array = array[0]
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, 0, -1)  # CHW -> HWC
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[-1] != 3:
        raise NoThumbnail(f"tensor shape {dims} has no 1 or 3 channel axis")
    low, high = float(np.nanmin(array)), float(np.nanmax(array))
    scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
    return Image.fromarray(np.nan_to_num(scaled).clip(0, 255).astype(np.uint8))


def file_image(data: bytes) -> Any:
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_PIXELS:
            raise NoThumbnail(f"image of {image.width}×{image.height} pixels is too large to show")
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError):
        raise NoThumbnail("the captured input is not an image file") from None
    return image.convert("RGB")


def thumbnail(jsonl: bytes, index: int, read: Any) -> bytes:
    """A PNG thumbnail of record ``index``'s first input in the batch ``jsonl``."""
    lines = [line for line in jsonl.splitlines() if line.strip()]
    if not 0 <= index < len(lines):
        raise NoThumbnail(f"the batch has no record {index}")
    try:
        line = json.loads(lines[index])
    except ValueError:
        raise NoThumbnail("the batch's record is not JSON") from None
    item = first_input(line) if isinstance(line, dict) else None
    if item is None:
        raise NoThumbnail("the record has no input")
    data = item_bytes(item, read)
    if item["kind"] == "aux":
        image = file_image(data)
    else:
        image = tensor_image(data, str(item.get("data_type", "")), list(item.get("shape") or []))
    image.thumbnail((THUMB_SIZE, THUMB_SIZE))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
