"""Real parts for the agent's integration tests: SeaweedFS, the fleet service as a process,
compiled artifacts, and agents (in process, with their loop in a thread)."""

from __future__ import annotations

import threading
import time

import pytest


@pytest.fixture(scope="session")
def mobilenet(compiled):
    """zoo:mobilenet_v2 compiled for this x86-64 host (once per session)."""
    return compiled("zoo:mobilenet_v2", "x86_64").path


@pytest.fixture
def agent_factory(short_dir):
    """agent_factory(fleet=None, token=None, endpoint=None, **sections) -> a running Agent.

    The agent runs in this process with its supervised loop in a thread; everything it
    stores lives under a short temp dir (Unix socket paths are limited to 107 bytes).
    """
    from edgekiln.agents.config import from_dict
    from edgekiln.agents.daemon import Agent

    agents: list[tuple[Agent, threading.Thread]] = []

    def make(
        *,
        endpoint: str | None = None,
        token: str | None = None,
        name: str = "dev-1",
        fleet_name: str = "plant",
        **sections,
    ) -> Agent:
        root = short_dir / name
        (root / "models").mkdir(parents=True, exist_ok=True)
        data = {
            "device": {"name": name, "fleet": fleet_name},
            "agent": {
                "socket": str(root / "agent.sock"),
                "model_dir": str(root / "models"),
                "state_dir": str(root / "state"),
            },
            "fleet": {"heartbeat_period_seconds": 0.5, "retry_max_seconds": 0.5, "request_timeout_seconds": 5},
            "capture": {
                "destination": "Cloud" if endpoint else "Disk",
                "disk_path": str(root / "captures"),
                "batch_size": 4,
                "push_period_seconds": 0.2,
                "periodic_upload_period_seconds": 0.5,
                # These agents die only by the test's hand, never by a power cut: skip the fsyncs.
                "sync_writes": False,
            },
        }
        if endpoint:
            (root / "token").write_text(token or "none")
            data["fleet"].update(endpoint=endpoint, token_file=str(root / "token"))
        for section, values in sections.items():
            data.setdefault(section, {}).update(values)
        agent = Agent(from_dict(data, base_dir=root))
        agent.start()
        thread = threading.Thread(target=agent.run, name=f"agent-loop-{name}", daemon=True)
        thread.start()
        agents.append((agent, thread))
        return agent

    yield make
    for agent, thread in agents:
        stop_agent(agent, thread)


def stop_agent(agent, thread=None) -> None:
    agent.request_stop()
    if thread is not None:
        thread.join(30)
    agent.stop(grace=1)


def wait_until(what: str, check, timeout: float, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def wait():
    """wait(what, check, timeout) -> check()'s first truthy value, or an AssertionError."""
    return wait_until


@pytest.fixture(scope="session")
def deploy_parts(tmp_path_factory):
    """Keys and tiny artifacts for the deployment tests, compiled once per session: good
    versions whose weights are scaled by 1 and 2 (the output tells which serves), the same
    with a large labels file (a package large enough to cut and kill mid-download), and
    broken ones: a model.onnx that is not ONNX, one that returns NaN, one that is slow."""
    from edgekiln.artifact.signing import generate_keypair
    from tests.integration.agents.deploy_kit import broken_artifact, compile_tiny, padded_artifact

    root = tmp_path_factory.mktemp("deploy")
    parts = {"root": root}
    parts["key"], parts["pub"] = generate_keypair(root, "release")
    parts["other_key"], parts["other_pub"] = generate_keypair(root, "stranger")
    parts["a1"] = compile_tiny(root, "a1", 1.0)
    parts["a2"] = compile_tiny(root, "a2", 2.0)
    parts["p1"] = padded_artifact(parts["a1"], root / "p1.tar.gz")
    parts["p2"] = padded_artifact(parts["a2"], root / "p2.tar.gz")
    for kind in ("garbage", "nan", "slow"):
        parts[kind] = broken_artifact(parts["a2"], kind, root / f"{kind}.tar.gz")
    return parts


@pytest.fixture
def package(deploy_parts, tmp_path):
    """package(artifact_key, version, handle="tiny", key="key", **build_options) -> signed package path."""
    from edgekiln.artifact.signing import build_package

    def make(artifact: str, version: int, handle: str = "tiny", key: str = "key", **options) -> object:
        out = tmp_path / f"{handle}-{artifact}-{version}-{key}.pkg"
        build_package(deploy_parts[artifact], deploy_parts[key], handle, version, out, **options)
        return out

    return make
