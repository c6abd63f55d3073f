"""Fixtures for the agent's unit tests: configs in short temp dirs, a fake clock, fake models.

Unit tests use a stand-in for ``edgekiln.runtime.Model`` (:mod:`tests.unit.agents.fakes`)
so that they run in milliseconds; the integration tests load real compiled artifacts.
"""

from __future__ import annotations

import pytest

from tests.unit.agents.fakes import FakeModel, load_fake


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
            "agent": {
                "socket": str(short_dir / "agent.sock"),
                "model_dir": str(short_dir / "models"),
                "state_dir": str(short_dir / "state"),
            },
            "capture": {"destination": "Disk", "disk_path": str(short_dir / "captures")},
        }
        for name, values in sections.items():
            data.setdefault(name, {}).update(values)
        return from_dict(data, base_dir=short_dir)

    return make


@pytest.fixture
def fake_loader():
    """A model loader for the agent, in process: file name decides ('slow' → 0.3 s a run)."""
    FakeModel.active = FakeModel.max_active = 0
    return load_fake
