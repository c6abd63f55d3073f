"""Fixtures for the agent's unit tests: configs in short temp dirs, a fake clock, fake models.

Unit tests use a stand-in for ``edgekiln.runtime.Model`` (same attributes the agent reads)
so that they run in milliseconds; the integration tests load real compiled artifacts.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edgekiln.artifact.manifest import TensorSpec


class FakeClock:
    """Wall and monotonic time that move only when told to (``jump_wall`` moves only the wall)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self.mono = 1000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds

    def jump_wall(self, seconds: float) -> None:
        self.now += seconds


class FakeModel:
    """What the agent uses of runtime.Model: manifest inputs/outputs/version, run()."""

    active = 0
    max_active = 0
    _lock = threading.Lock()

    def __init__(self, path: str, delay: float = 0.0) -> None:
        self.path = path
        self.delay = delay
        self.manifest = SimpleNamespace(
            inputs=(TensorSpec("x", "float32", (1, 4)),), outputs=(TensorSpec("y", "float32", (1, 4)),),
            model=SimpleNamespace(version="7"))

    def get_output_names(self) -> list[str]:
        return ["y"]

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        with FakeModel._lock:
            FakeModel.active += 1
            FakeModel.max_active = max(FakeModel.max_active, FakeModel.active)
        try:
            if self.delay:
                time.sleep(self.delay)
            if float(arrays[0].reshape(-1)[0]) == -999.0:
                raise RuntimeError("kernel failure")
            return [arrays[0] * 2]
        finally:
            with FakeModel._lock:
                FakeModel.active -= 1


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def agent_config(short_dir):
    """agent_config(**section_overrides) -> AgentConfig with everything under short_dir."""
    from edgekiln.agents.config import from_dict

    def make(**sections) -> object:
        (short_dir / "models").mkdir(exist_ok=True)
        data = {
            "device": {"name": "dev-1", "fleet": "fleet-a"},
            "agent": {"socket": str(short_dir / "agent.sock"), "model_dir": str(short_dir / "models"),
                      "state_dir": str(short_dir / "state")},
            "capture": {"destination": "Disk", "disk_path": str(short_dir / "captures")},
        }
        for name, values in sections.items():
            data.setdefault(name, {}).update(values)
        return from_dict(data, base_dir=short_dir)

    return make


@pytest.fixture
def fake_loader():
    """A model loader for the agent: file name decides the delay ('slow' → 0.3 s)."""
    def load(path: str) -> FakeModel:
        from edgekiln.errors import CompatibilityError

        if "rasp4b" in Path(path).name:
            raise CompatibilityError("this artifact needs an aarch64 CPU; this device is x86_64")
        return FakeModel(path, delay=0.3 if "slow" in Path(path).name else 0.0)

    FakeModel.active = FakeModel.max_active = 0
    return load
