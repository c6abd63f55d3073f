"""A stand-in for ``edgekiln.runtime.Model``: the attributes the agent reads, no compiled code.

Importable by path (``tests.unit.agents.fakes:FakeModel``) so that a model worker process
can load it as its model factory.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np

from edgekiln.artifact.manifest import Manifest, ModelInfo, RuntimeRequirements, TensorSpec, Validation
from edgekiln.errors import CompatibilityError


def fake_manifest() -> Manifest:
    return Manifest(
        model=ModelInfo("m", "7", "onnx", "0" * 64),
        profile="generic/x86-64",
        backend="tvm",
        backend_options={},
        target_triple="x86_64-linux-gnu",
        edgekiln_version="0",
        compiler={},
        runtime=RuntimeRequirements(arch="x86_64"),
        inputs=(TensorSpec("x", "float32", (1, 4)),),
        outputs=(TensorSpec("y", "float32", (1, 4)),),
        files=(),
        validation=Validation(status="skipped", reason="stand-in"),
    )


class FakeModel:
    """What the agent uses of runtime.Model: manifest inputs/outputs/version, run()."""

    active = 0
    max_active = 0
    _lock = threading.Lock()

    def __init__(self, path: str, delay: float = 0.0) -> None:
        self.path = path
        self.delay = delay
        self.manifest = fake_manifest()

    def get_output_names(self) -> list[str]:
        return ["y"]

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        with FakeModel._lock:
            FakeModel.active += 1
            FakeModel.max_active = max(FakeModel.max_active, FakeModel.active)
        try:
            if self.delay:
                time.sleep(self.delay)
            first = float(arrays[0].reshape(-1)[0])
            if first == -999.0:
                raise RuntimeError("kernel failure")
            if first == -777.0:
                os._exit(9)  # a crash inside a kernel (in a model worker: the worker dies)
            return [arrays[0] * 2]
        finally:
            with FakeModel._lock:
                FakeModel.active -= 1


def load_fake(path: str) -> FakeModel:
    """The loader the unit tests give the agent: the file name decides ('slow' → 0.3 s a run,
    'rasp4b' → built for another device)."""
    if "rasp4b" in Path(path).name:
        raise CompatibilityError("this artifact needs an aarch64 CPU; this device is x86_64")
    return FakeModel(path, delay=0.3 if "slow" in Path(path).name else 0.0)
