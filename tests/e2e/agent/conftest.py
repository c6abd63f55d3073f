"""Processes for the agent's end-to-end tests: SeaweedFS, the fleet service, agent processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


class AgentProcess:
    """``edgekiln agent --config`` as a child process."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.socket = Path(self._socket_of(config))
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def _socket_of(config: Path) -> str:
        from edgekiln.agents.config import load_config

        return str(load_config(config).agent.socket)

    def start(self, timeout: float = 30.0) -> AgentProcess:
        from edgekiln.agents.client import AgentClient

        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edgekiln.cli.main", "agent", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"agent exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
            if self.socket.exists():
                with AgentClient(self.socket, timeout=2) as client:
                    try:
                        client.list_models()
                        return self
                    except Exception:  # noqa: BLE001 - not serving yet
                        pass
            time.sleep(0.02)
        raise AssertionError(f"agent did not come up in {timeout} s: {self.log.read_text()[-2000:]}")

    def kill9(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self, timeout: float = 30.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


@pytest.fixture
def agent_process(short_dir):
    """agent_process(config_dict) -> a started AgentProcess; all are stopped at the end."""
    from edgekiln.agents.config import dump_toml

    started: list[AgentProcess] = []

    def make(config: dict, name: str = "agent") -> AgentProcess:
        path = short_dir / f"{name}.toml"
        path.write_text(dump_toml(config))
        agent = AgentProcess(path, short_dir / f"{name}.log")
        started.append(agent)
        return agent.start()

    yield make
    for agent in started:
        if agent.process is not None and agent.process.poll() is None:
            agent.process.kill()
            agent.process.wait(10)
