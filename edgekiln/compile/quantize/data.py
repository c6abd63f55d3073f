"""Calibration and validation data: a folder of images or a .npy/.npz file.

- A folder of images (PNG/JPEG/…), preprocessed as the model's manifest says. Images in
  sub-folders are labelled by the sub-folder: its name as one of the model's class labels,
  or a class index. Images directly in the folder are unlabelled.
- ``.npz`` with ``x`` (N × input shape without batch, or N × 1 × …) and optionally ``y``
  (N class indices); ``.npy`` with ``x`` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from edgekiln.compile.stages import SourceModel
from edgekiln.errors import UserError
from edgekiln.runtime.preprocess import IMAGE_SUFFIXES, preprocess

# Fraction of the calibration data held out for the accuracy gate when no --validation is given.
HOLD_OUT = 0.2


@dataclass(frozen=True)
class Dataset:
    inputs: tuple[np.ndarray, ...]
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(self.inputs)

    def head(self, n: int) -> Dataset:
        return Dataset(self.inputs[:n], None if self.labels is None else self.labels[:n])


def split(data: Dataset, hold_out: float = HOLD_OUT) -> tuple[Dataset, Dataset]:
    """Calibration part and held-out validation part (every k-th sample, deterministic)."""
    if len(data) < 2:
        raise UserError("the calibration data has fewer than 2 samples; give more, or a separate --validation set")
    step = max(2, round(1 / hold_out))
    held = [i for i in range(len(data)) if i % step == step - 1] or [len(data) - 1]
    kept = [i for i in range(len(data)) if i not in set(held)]

    def pick(idx: Sequence[int]) -> Dataset:
        labels = None if data.labels is None else data.labels[list(idx)]
        return Dataset(tuple(data.inputs[i] for i in idx), labels)

    return pick(kept), pick(held)


def load_dataset(path: str | Path, model: SourceModel, limit: int | None = None) -> Dataset:
    """Inputs (each shaped as the model's single input) and labels when the data has them."""
    path = Path(path)
    spec = model.inputs[0]
    if not path.exists():
        raise UserError(f"data path {path} does not exist")
    if path.is_dir():
        data = _images(path, model)
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            if "x" not in npz.files:
                raise UserError(f"{path} has no array named 'x' (found {', '.join(npz.files)})")
            data = _arrays(npz["x"], npz["y"] if "y" in npz.files else None, spec.shape, path)
    elif path.suffix == ".npy":
        data = _arrays(np.load(path, allow_pickle=False), None, spec.shape, path)
    else:
        raise UserError(f"{path} is neither a folder of images nor a .npy/.npz file")
    if not len(data):
        raise UserError(f"{path} holds no samples")
    return data.head(limit) if limit else data


def _arrays(x: np.ndarray, y: np.ndarray | None, shape: tuple[int, ...], path: Path) -> Dataset:
    per_sample = tuple(shape[1:])
    if tuple(x.shape[1:]) == per_sample:
        samples = [x[i : i + 1] for i in range(x.shape[0])]
    elif tuple(x.shape[1:]) == tuple(shape):
        samples = list(x)
    else:
        raise UserError(
            f"{path}: x has shape {list(x.shape)}; expected N x {list(per_sample)} for input shape {list(shape)}"
        )
    if y is not None and len(y) != len(samples):
        raise UserError(f"{path}: x has {len(samples)} samples but y has {len(y)} labels")
    return Dataset(
        tuple(np.ascontiguousarray(s, dtype=np.float32) for s in samples),
        None if y is None else np.asarray(y, dtype=np.int64).reshape(-1),
    )


def _images(folder: Path, model: SourceModel) -> Dataset:
    if not model.preprocessing:
        raise UserError(
            "image data needs a model with preprocessing (zoo models have it)",
            hint="give --preprocess (e.g. imagenet-torch) with the images, or .npy/.npz arrays instead",
        )
    spec = model.inputs[0]
    label_index = {name: i for i, name in enumerate(model.labels or ())}
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    inputs, labels = [], []
    for file in files:
        inputs.append(preprocess(file, model.preprocessing, spec.shape))
        rel = file.relative_to(folder)
        if len(rel.parts) > 1:
            cls = rel.parts[0]
            if cls in label_index:
                labels.append(label_index[cls])
            elif cls.isdigit():
                labels.append(int(cls))
            else:
                raise UserError(
                    f"sub-folder {cls!r} of {folder} is neither a class label of the model nor a class index"
                )
        else:
            labels.append(None)
    if any(label is None for label in labels) and any(label is not None for label in labels):
        raise UserError(f"{folder} mixes labelled (in sub-folders) and unlabelled images")
    has_labels = bool(labels) and labels[0] is not None
    return Dataset(tuple(inputs), np.array(labels, dtype=np.int64) if has_labels else None)
