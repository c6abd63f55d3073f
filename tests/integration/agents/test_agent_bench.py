"""The harness benchmarks an artifact on a device through the agent's Bench call."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgekiln.errors import BackendError


def _shape(value):
    """The JSON shape of a report: keys and value types, not values."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__


def test_bench_through_the_agent(agent_factory, mobilenet, capsys):
    from edgekiln.agents.bench_client import connect
    from edgekiln.bench import BenchOptions, bench
    from edgekiln.cli.main import main

    agent = agent_factory()
    socket = str(agent.config.agent.socket)
    options = BenchOptions(runs=3, warmup=1, baselines=("none",), agent=socket)
    remote = bench([mobilenet], options, connect=connect).to_dict()
    local = bench([mobilenet], BenchOptions(runs=3, warmup=1, baselines=("none",))).to_dict()

    (r,) = remote["results"]
    assert r["runner"] == "agent" and r["timings_meaningful"] and socket in r["runner_description"]
    (candidate,) = r["subjects"]
    assert candidate["latency"]["n"] == len(candidate["times_ms"]) >= 3
    assert candidate["latency"]["p50_ms"] > 0 and candidate["load_s"] > 0
    assert candidate["peak_rss_mb"] > 50  # the worker's own VmHWM, relayed by the agent
    assert remote["options"] == {**local["options"], "agent": socket}
    assert _shape({**remote, "options": None}) == _shape({**local, "options": None})  # the same schema
    assert remote["results"][0]["runner"] != local["results"][0]["runner"]

    # The CLI's --agent, with the report as JSON.
    assert (
        main(
            [
                "bench",
                str(mobilenet),
                "--agent",
                f"unix:{socket}",
                "--runs",
                "2",
                "--warmup",
                "0",
                "--baseline",
                "none",
                "--json",
                "-",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["results"][0]["runner"] == "agent" and report["results"][0]["subjects"][0]["latency"]["n"] >= 2


def test_agent_worker_outputs_match_the_local_runtime(agent_factory, mobilenet):
    """Correctness through the relay: the device's outputs are the runtime's, bit for bit."""
    from edgekiln.agents.bench_client import connect
    from edgekiln.bench.harness import make_samples, read_manifest
    from edgekiln.execute.runners import AgentRunner, LocalRunner

    agent = agent_factory()
    samples = make_samples(read_manifest(mobilenet), 2, 0)
    subject = {"kind": "artifact", "path": str(mobilenet), "device": "cpu"}
    remote = AgentRunner(str(agent.config.agent.socket), connect=connect).start("tvm")
    local = LocalRunner().start("tvm")
    try:
        remote.load(subject, samples)
        local.load(subject, samples)
        for got, want in zip(remote.outputs(), local.outputs()):
            np.testing.assert_array_equal(got[0], want[0])
    finally:
        exit_info = remote.close()
        local.close()
    assert exit_info.peak_rss_kb and exit_info.peak_rss_kb > 50_000
    assert exit_info.ru_maxrss_kb and exit_info.ru_maxrss_kb > 50_000


def test_one_bench_at_a_time_and_the_worker_dies_with_the_client(agent_factory, mobilenet, wait):
    import os

    from edgekiln.agents.bench_client import connect

    agent = agent_factory()
    socket = str(agent.config.agent.socket)
    first = connect(socket, "first")
    first.send(json.dumps({"op": "run"}))
    reply = json.loads(first.receive())  # run before load: the worker answers, so it is running
    assert reply["ok"] is False and "before load" in reply["error"]
    first.send(
        json.dumps({"op": "load", "subject": {"kind": "artifact", "path": "/nonexistent.tar.gz"}, "inputs_npz": ""})
    )
    assert json.loads(first.receive())["ok"] is False

    second = connect(socket, "second")
    second.send(json.dumps({"op": "exit"}))
    with pytest.raises(BackendError, match="RESOURCE_EXHAUSTED"):
        second.receive()
    second.close()

    def read(path: str) -> str:
        """A /proc file's text, or "" for a thread or process that ended since it was listed."""
        try:
            with open(path) as fh:
                return fh.read()
        except OSError:
            return ""

    # Find the worker (a child of this process, where the agent runs) and drop the client.
    tasks = os.listdir(f"/proc/{os.getpid()}/task")  # children of every thread: a gRPC thread started it
    children = {int(p) for t in tasks for p in read(f"/proc/{os.getpid()}/task/{t}/children").split()}
    workers = [p for p in children if "edgekiln.execute.worker" in read(f"/proc/{p}/cmdline")]
    assert len(workers) == 1
    first._call.cancel()
    first.close()

    def gone(pid: int) -> bool:
        fields = read(f"/proc/{pid}/stat").split()
        return not fields or fields[2] == "Z"  # reaped, or killed and not yet reaped

    wait("the worker to be killed", lambda: gone(workers[0]), 10)

    # The slot is free again; an exit ends the stream cleanly with the worker's exit code.
    third = connect(socket, "third")
    third.send(json.dumps({"op": "exit"}))
    assert json.loads(third.receive())["ok"] is True
    assert third.close().exit_code == 0
