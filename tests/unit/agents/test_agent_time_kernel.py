"""TimeKernel's refusals over a real Unix socket: off by default, bounded, only shared
libraries, a library that is not a kernel answered (not crashed on), nothing left behind."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import numpy.linalg._umath_linalg as _numpy_extension
import pytest

from edgekiln.agents.client import AgentCallError, AgentClient
from edgekiln.agents.config import TuningConfig
from edgekiln.agents.registry import ModelRegistry
from edgekiln.agents.server import serve
from edgekiln.agents.servicer import AgentServicer
from edgekiln.errors import UserError

ARGS = [("float32", (4, 4)), ("float32", (4, 4))]
# A real ELF shared library that is no TVM kernel.
NOT_A_KERNEL = Path(_numpy_extension.__file__)


def _runtime_library() -> Path:
    spec = importlib.util.find_spec("tvm")  # located, not imported (that loads the compiler)
    assert spec is not None and spec.origin
    return Path(spec.origin).parent / "lib" / "libtvm_runtime.so"


@pytest.fixture
def agent(short_dir, fake_loader, monkeypatch):
    """agent(tuning=TuningConfig(...)) -> a client of a served agent; temp files go to short_dir/tmp."""
    servers, clients = [], []
    scratch = short_dir / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    def make(tuning: TuningConfig | None = None) -> AgentClient:
        (short_dir / "models").mkdir(exist_ok=True)
        registry = ModelRegistry(short_dir / "models", short_dir / "models.json", loader=fake_loader)
        servicer = AgentServicer(registry, None, tuning) if tuning else AgentServicer(registry, None)
        servers.append(serve(short_dir / "agent.sock", servicer))
        client = AgentClient(short_dir / "agent.sock", timeout=60)
        client.wait_ready(5)
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close()
    for s in servers:
        s.stop(0).wait(2)


def _refusal(client: AgentClient, kernel: bytes, runtime: bytes = b"\x7fELF", args=ARGS) -> AgentCallError:
    with pytest.raises(AgentCallError) as info:
        client.time_kernel(kernel, runtime, args, number=1, repeat=1, min_repeat_ms=0)
    return info.value


def test_off_by_default(agent):
    error = _refusal(agent(), NOT_A_KERNEL.read_bytes())
    assert error.code == "FAILED_PRECONDITION"
    assert "[tuning] enabled = true" in error.details


def test_oversized_libraries_are_refused_before_anything_is_written(agent, short_dir):
    client = agent(TuningConfig(enabled=True, max_library_bytes=4096))
    error = _refusal(client, b"\x7fELF" + bytes(5000))
    assert error.code == "RESOURCE_EXHAUSTED" and "5008 bytes" in error.details and "4096" in error.details
    assert list((short_dir / "tmp").iterdir()) == []


def test_not_a_shared_library_and_bad_arguments(agent):
    client = agent(TuningConfig(enabled=True))
    error = _refusal(client, b"#!/bin/sh\nrm -rf /\n")
    assert error.code == "INVALID_ARGUMENT" and "kernel is not a shared library" in error.details
    error = _refusal(client, b"\x7fELF", runtime=b"")
    assert error.code == "INVALID_ARGUMENT" and "runtime library is not a shared library" in error.details
    error = _refusal(client, b"\x7fELF", args=[("complex64", (4,))])
    assert error.code == "INVALID_ARGUMENT" and "dtype 'complex64'" in error.details
    error = _refusal(client, b"\x7fELF", args=[("float32", (1 << 20, 1 << 20))])
    assert error.code == "INVALID_ARGUMENT" and "over the" in error.details
    with pytest.raises(AgentCallError) as info:
        client.time_kernel(b"\x7fELF", b"\x7fELF", ARGS, number=0)  # 0 means the default 3: fine
    assert "number" not in info.value.details
    with pytest.raises(AgentCallError) as info:
        client.time_kernel(b"\x7fELF", b"\x7fELF", ARGS, repeat=1000)
    assert info.value.code == "INVALID_ARGUMENT" and "repeat must be an integer in 1..100" in info.value.details


def test_a_library_that_is_no_kernel_is_an_answer_and_is_deleted(agent, short_dir):
    client = agent(TuningConfig(enabled=True, max_library_bytes=32 * 1024 * 1024))
    error = _refusal(client, NOT_A_KERNEL.read_bytes(), runtime=_runtime_library().read_bytes())
    assert error.code == "INVALID_ARGUMENT" and error.details.startswith("the kernel failed:")
    assert list((short_dir / "tmp").iterdir()) == []  # the private copy is gone
    # A kernel that crashes its process takes only that process: the agent answers on.
    assert _refusal(client, b"junk").code == "INVALID_ARGUMENT"


def test_check_agent_says_in_one_line_why_a_device_cannot_tune(agent, short_dir):
    from edgekiln.cli.tune_device import check_agent

    agent()
    with pytest.raises(UserError) as info:
        check_agent(f"unix:{short_dir / 'agent.sock'}")
    assert "cannot time kernels: tuning is not enabled" in info.value.one_line()
    assert "\n" not in info.value.one_line()


def test_check_agent_accepts_an_agent_that_tunes(agent, short_dir):
    from edgekiln.cli.tune_device import check_agent

    agent(TuningConfig(enabled=True))
    check_agent(str(short_dir / "agent.sock"))  # no error


def test_tuning_config_is_checked(agent_config):
    assert agent_config().tuning == TuningConfig(enabled=False)
    assert agent_config(tuning={"enabled": True}).tuning.enabled is True
    with pytest.raises(UserError, match="tuning.enabled"):
        agent_config(tuning={"enabled": "yes"})
    with pytest.raises(UserError, match="tuning.max_library_bytes must be between"):
        agent_config(tuning={"max_library_bytes": 10})
    with pytest.raises(UserError, match="unknown key tuning.allow"):
        agent_config(tuning={"allow": True})
