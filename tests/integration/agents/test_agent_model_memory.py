"""Loading and unloading a compiled TVM model many times: the agent gives back what the
model took (each model runs in a worker process), and what that costs Predict."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np
import pytest

from edgekiln.agents.client import AgentClient

CYCLES = 30


def _rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _mapped_model_libraries() -> int:
    with open("/proc/self/maps", encoding="ascii", errors="replace") as fh:
        return sum(1 for line in fh if "model.so" in line or "edgekiln-model-" in line)


@pytest.mark.slow
def test_load_unload_cycles_do_not_grow_the_agent(agent_factory, mobilenet):
    agent = agent_factory(agent={"model_dirs": [str(Path(mobilenet).parent)]})
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    with AgentClient(agent.config.agent.socket) as client:
        client.load_model(mobilenet, "warm")  # grpc, numpy and the first worker's costs
        (expected,) = client.predict("warm", [x])
        client.unload_model("warm")
        before, mapped = _rss(), _mapped_model_libraries()
        started = time.monotonic()
        for i in range(CYCLES):
            client.load_model(mobilenet, f"m{i}")
            (y,) = client.predict(f"m{i}", [x])
            np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
            client.unload_model(f"m{i}")
        elapsed = time.monotonic() - started
        after = _rss()
    work = agent.state_dir / "work"
    print(
        f"\nload/unload: {CYCLES} cycles in {elapsed:.1f} s; agent RSS {before / 2**20:.0f} -> "
        f"{after / 2**20:.0f} MiB ({(after - before) / 2**20:+.1f} MiB)"
    )
    assert after - before < 60 * 2**20
    # The agent (this process) never maps a model's code; other tests' Model() may have before.
    assert _mapped_model_libraries() == mapped
    assert list(work.iterdir()) == []  # each worker's extracted artifact went with it


@pytest.mark.slow
def test_predict_latency_through_the_worker(agent_factory, mobilenet):
    from edgekiln.runtime import Model

    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    model = Model(mobilenet)
    model.run([x])
    agent = agent_factory(agent={"model_dirs": [str(Path(mobilenet).parent)]})
    direct, through = [], []
    with AgentClient(agent.config.agent.socket) as client:
        client.load_model(mobilenet, "m")
        client.predict("m", [x])
        # Interleaved, so that load from other work on the machine hits both alike.
        for _ in range(20):
            start = time.perf_counter()
            model.run([x])
            direct.append(time.perf_counter() - start)
            start = time.perf_counter()
            client.predict("m", [x])
            through.append(time.perf_counter() - start)
    d, t = statistics.median(direct) * 1e3, statistics.median(through) * 1e3
    print(
        f"\nPredict mobilenet_v2 1x3x224x224: run() in process {d:.2f} ms, agent Predict (gRPC + worker) "
        f"{t:.2f} ms median of 20"
    )
    assert t < d + 50  # the worker adds copies of 600 KB in and 4 KB out, not a second run
