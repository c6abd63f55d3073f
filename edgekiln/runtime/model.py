"""The runtime façade: load an artifact and run it, with DLR-compatible method names."""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgekiln.artifact.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, Manifest, TensorSpec
from edgekiln.artifact.package import sha256_file, unpack
from edgekiln.artifact.paths import read_labels, resolve_member
from edgekiln.errors import IntegrityError, UserError
from edgekiln.runtime import compat
from edgekiln.runtime.preprocess import looks_like_probabilities, preprocess, softmax


class Model:
    """A compiled model loaded for one device.

    ``path`` is an artifact ``.tar.gz`` (verified and extracted into a private temporary
    directory) or a directory that holds an extracted artifact (verified in place).
    Every file's sha256 and the device compatibility are checked before anything loads.
    A context manager: ``with Model(path) as model:`` releases the runtime and the
    extracted files on leaving the block (:meth:`close`).
    """

    _cleanup: Any = None

    def __init__(self, path: str | os.PathLike[str], device: str = "cpu") -> None:
        path = Path(path)
        if path.is_dir():
            manifest = _verify_directory(path)
            root = path
        else:
            root = Path(tempfile.mkdtemp(prefix="edgekiln-model-"))
            # unpack() wants a fresh directory so that nothing stale mixes in.
            root.rmdir()
            manifest = unpack(path, root)
            self._cleanup = weakref.finalize(self, shutil.rmtree, root, True)
        compat.check(manifest, device)
        from edgekiln.runtime import executors

        self._manifest = manifest
        self._root = root
        self._device = device
        self._executor = executors.create(manifest, root, device)
        self._labels = self._read_labels()

    def close(self) -> None:
        """Release the executor and remove the files extracted from a ``.tar.gz``; the
        model cannot run afterwards. Calling it twice does nothing."""
        self._executor = None
        if self._cleanup is not None:
            self._cleanup()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- DLR-compatible introspection -------------------------------------------------
    @property
    def metadata(self) -> dict[str, Any]:
        """The artifact's manifest as a dict."""
        return self._manifest.to_dict()

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def loaded_library(self) -> str | None:
        """The artifact file whose code runs, where the backend chooses one at load (a TVM
        artifact with CPU variants: the build for this CPU); None for the others."""
        return getattr(self._executor, "library", None)

    def get_input_names(self) -> list[str]:
        return [t.name for t in self._manifest.inputs]

    def get_output_names(self) -> list[str]:
        return [t.name for t in self._manifest.outputs]

    def get_input_dtypes(self) -> list[str]:
        return [t.dtype for t in self._manifest.inputs]

    def get_output_dtypes(self) -> list[str]:
        return [t.dtype for t in self._manifest.outputs]

    def get_input_shapes(self) -> list[tuple[int, ...]]:
        return [t.shape for t in self._manifest.inputs]

    def get_output_shapes(self) -> list[tuple[int, ...]]:
        return [t.shape for t in self._manifest.outputs]

    # -- inference -------------------------------------------------------------------
    def run(self, inputs: np.ndarray | Sequence[np.ndarray] | Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the model; ``inputs`` is one array, a list in input order, or name → array.

        An array of another dtype is cast to the input's dtype within its kind (float64 →
        float32, int64 → int32), as the agent's Predict does; across kinds (int → float,
        float → int) it is refused (:func:`castable`).
        """
        if self._executor is None:
            raise UserError("this model was closed; load it again")
        arrays = self._arrange(inputs)
        return self._executor.run(arrays)

    def predict(self, image: Any, top_k: int = 5) -> list[dict[str, Any]]:
        """Classify an image (path, PIL image, HxWx3 uint8 array or HxW grayscale array)
        with the manifest's preprocessing; returns the ``top_k`` classes, best first, with
        their probability (the model's own when it outputs probabilities, else the
        softmax of its logits; see :func:`top_classes`)."""
        spec = self._manifest.preprocessing
        if not spec:
            raise UserError(
                "this artifact records no preprocessing",
                hint="compile it with --preprocess (e.g. imagenet-torch), or call run() with a tensor",
            )
        if len(self._manifest.inputs) != 1:
            raise UserError("predict() needs a model with one image input; call run() instead")
        tensor = preprocess(image, spec, self._manifest.inputs[0].shape)
        scores = self.run([tensor])[0].reshape(-1)
        return top_classes(scores, self._labels, top_k, self._manifest.scores)

    @property
    def labels(self) -> list[str] | None:
        """The class names of the artifact's labels file, or None."""
        return None if self._labels is None else list(self._labels)

    # -- helpers ---------------------------------------------------------------------
    def _arrange(self, inputs: Any) -> list[np.ndarray]:
        specs = self._manifest.inputs
        if isinstance(inputs, np.ndarray):
            inputs = [inputs]
        if isinstance(inputs, Mapping):
            unknown = sorted(set(inputs) - {s.name for s in specs})
            if unknown:
                raise UserError(f"unknown input names {unknown}; the model takes {[s.name for s in specs]}")
            missing = [s.name for s in specs if s.name not in inputs]
            if missing:
                raise UserError(f"missing inputs {missing}")
            inputs = [inputs[s.name] for s in specs]
        inputs = list(inputs)
        if len(inputs) != len(specs):
            raise UserError(f"the model takes {len(specs)} input(s), got {len(inputs)}")
        return [_conform(np.asarray(a), spec) for a, spec in zip(inputs, specs)]

    def _read_labels(self) -> list[str] | None:
        if not self._manifest.labels:
            return None
        return read_labels(self._root, self._manifest.labels)


def castable(given: Any, expected: Any) -> bool:
    """Whether an input of dtype ``given`` is cast to the model's ``expected`` dtype: within
    one kind only (float64 → float32, int32 → int64), never across (int → float, float → int),
    where a silent cast would hide a wrong input. ``Model.run`` and the agent's Predict share
    this rule."""
    a, b = np.dtype(given), np.dtype(expected)
    same = a.kind == b.kind == "f" or (a.kind in "iu" and b.kind in "iu")
    return same and bool(np.can_cast(a, b, casting="same_kind"))


def _conform(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if tuple(array.shape) != spec.shape:
        raise UserError(f"input {spec.name!r} must have shape {list(spec.shape)}, got {list(array.shape)}")
    if array.dtype != np.dtype(spec.dtype):
        if not castable(array.dtype, spec.dtype):
            raise UserError(f"input {spec.name!r} must be {spec.dtype}, got {array.dtype}")
        array = array.astype(spec.dtype)
    return np.ascontiguousarray(array)


def scores_kind(scores: np.ndarray, recorded: str | None = None) -> str:
    """What one output vector holds: "probabilities" when the manifest says so (the model
    ends in Softmax) or its values are non-negative and sum to 1, else "logits"."""
    if recorded == "probabilities" or looks_like_probabilities(scores):
        return "probabilities"
    return "logits"


def top_classes(
    scores: np.ndarray, labels: list[str] | None, top_k: int, recorded: str | None = None
) -> list[dict[str, Any]]:
    """The ``top_k`` classes of one output vector, best first.

    Each has ``index``, ``label`` and ``probability``. What the output holds is decided by
    :func:`scores_kind` (``recorded`` is the manifest's ``scores``): probabilities are
    reported as the model gave them; logits are reported as ``logit`` too, with their
    softmax as ``probability`` -- softmax is never applied to probabilities.
    """
    if top_k < 1:
        raise UserError("top_k must be at least 1")
    values = scores.astype(np.float64).reshape(-1)
    kind = scores_kind(values, recorded)
    probs = values if kind == "probabilities" else softmax(values)
    order = np.argsort(-probs, kind="stable")[:top_k]
    return [
        {
            "index": int(i),
            "label": labels[i] if labels and i < len(labels) else str(int(i)),
            "probability": float(probs[i]),
            **({"logit": float(values[i])} if kind == "logits" else {}),
        }
        for i in order
    ]


def _verify_directory(root: Path) -> Manifest:
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file() or manifest_path.is_symlink():
        raise UserError(f"{root} holds no {MANIFEST_NAME}; give an artifact .tar.gz or its extracted directory")
    with open(manifest_path, "rb") as handle:
        manifest = Manifest.from_json(handle.read(MAX_MANIFEST_BYTES + 1))
    # The same path checks as for a packed artifact (the manifest's parser refuses absolute
    # and ../ paths), and no symlink on the way: the directory may come from anywhere.
    for entry in manifest.files:
        path = resolve_member(root, entry.path)
        if not path.is_file():
            raise IntegrityError(f"{entry.path} is missing or not a regular file in {root}")
        if path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
            raise IntegrityError(f"{entry.path} in {root} differs from the manifest (changed after the build)")
    return manifest


def load(path: str | os.PathLike[str], device: str = "cpu") -> Model:
    """Load an artifact; shorthand for ``Model(path, device)``."""
    return Model(path, device=device)
