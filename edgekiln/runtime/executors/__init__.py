"""One executor per backend; each runs an extracted artifact on this device."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from edgekiln.artifact.manifest import Manifest
from edgekiln.errors import CompatibilityError


class Executor(Protocol):
    """What the Model façade needs from a backend's executor."""

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]: ...


def create(manifest: Manifest, root: Path, device: str) -> Executor:
    """The executor for ``manifest.backend``, loaded from the extracted artifact at ``root``."""
    if manifest.backend == "tvm":
        from edgekiln.runtime.executors.tvm import TVMExecutor

        return TVMExecutor(manifest, root, device)
    if manifest.backend == "onnxruntime":
        from edgekiln.runtime.executors.onnxruntime import ONNXRuntimeExecutor

        return ONNXRuntimeExecutor(manifest, root, device)
    if manifest.backend == "litert":
        from edgekiln.runtime.executors.litert import LiteRTExecutor

        return LiteRTExecutor(manifest, root, device)
    if manifest.backend == "openvino":
        from edgekiln.runtime.executors.openvino import OpenVINOExecutor

        return OpenVINOExecutor(manifest, root, device)
    raise CompatibilityError(
        f"this edgekiln runtime has no executor for backend {manifest.backend!r}",
        hint="upgrade edgekiln on the device",
    )
