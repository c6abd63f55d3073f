"""Typed options, the worker protocol over a channel, and runner selection."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgekiln.bench import worker
from edgekiln.bench.harness import BenchOptions, compare_outputs
from edgekiln.bench.runners import AgentRunner, ExitInfo, Worker
from edgekiln.errors import BackendError, UserError


def test_defaults_and_round_trip():
    options = BenchOptions()
    assert options.baselines == ("onnxruntime",) and options.scenario == "single-stream"
    assert BenchOptions.from_dict(options.to_dict()) == options
    assert BenchOptions(baselines=("none",)).baselines == ()
    assert BenchOptions(baselines=("openvino", "openvino", "torch")).baselines == ("openvino", "torch")


@pytest.mark.parametrize("kwargs, needle", [
    ({"runs": 3, "duration_s": 2.0}, "not both"),
    ({"runs": 0}, "--runs"),
    ({"duration_s": -1.0}, "--duration"),
    ({"scenario": "server"}, "scenario"),
    ({"baselines": ("tensorrt",)}, "unknown baseline"),
    ({"baselines": ("none", "onnxruntime")}, "cannot be combined"),
    ({"batch": 0}, "--batch"),
    ({"device": "tpu"}, "device"),
])
def test_bad_options_are_user_errors(kwargs, needle):
    with pytest.raises(UserError, match=needle):
        BenchOptions(**kwargs)
    with pytest.raises(UserError, match="unknown bench options"):
        BenchOptions.from_dict({"rnus": 3})


class InProcessChannel:
    """A LineChannel that answers with the worker's own request handler, no process."""

    def __init__(self, run):
        self.state = worker._State()
        self.replies: list[str] = []
        self._run = run

    def send(self, line):
        request = json.loads(line)
        if request["op"] == "load":
            self.state.inputs = worker.unpack_samples(worker.decode_arrays(request["inputs_npz"]))
            self.state.run = self._run
            self.replies.append(json.dumps({"ok": True, "load_s": 0.25, "version": "fake 1"}))
        elif request["op"] == "boom":
            self.replies.append(json.dumps({"ok": False, "error": "it broke", "kind": "RuntimeError"}))
        else:
            self.replies.append(json.dumps(worker.handle(request, self.state)))

    def receive(self):
        return self.replies.pop(0)

    def close(self):
        return ExitInfo(peak_rss_kb=2048)


def test_worker_protocol_over_any_channel():
    seen = []

    def run(inputs):
        seen.append(float(inputs[0][0, 0]))
        return [inputs[0] * 2]

    w = Worker(InProcessChannel(run), "fake")
    samples = [[np.full((1, 4), float(i), np.float32)] for i in range(3)]
    assert w.load({"kind": "fake"}, samples).version == "fake 1"
    times = w.run(4, calls_per_query=2)
    assert len(times) == 4 and all(t >= 0 for t in times)
    assert seen == [0, 1, 2, 0, 1, 2, 0, 1]  # queries cycle through the samples
    outputs = w.outputs()
    assert [o[0][0, 0] for o in outputs] == [0.0, 2.0, 4.0]
    assert w.close().peak_rss_kb == 2048
    with pytest.raises(BackendError, match="it broke"):
        Worker(InProcessChannel(run), "fake")._call({"op": "boom"})


def test_agent_runner_connects_through_the_agents_bench_client():
    from edgekiln.agents import bench_client

    assert AgentRunner("unix:///run/edgekiln/agent.sock")._connect is bench_client.connect
    runner = AgentRunner("addr", connect=lambda address, label: InProcessChannel(lambda x: x))
    assert runner.kind == "agent" and runner.timings_meaningful
    assert isinstance(runner.start("tvm"), Worker)


def test_output_comparison_counts_rows():
    ref = [[np.array([[0.1, 0.9], [0.8, 0.2]], np.float32)]]
    same = [[ref[0][0].copy()]]
    flipped = [[np.array([[0.1, 0.9], [0.1, 0.2]], np.float32)]]
    assert compare_outputs(ref, same) == (0.0, 1.0)
    diff, top1 = compare_outputs(ref, flipped)
    assert diff == pytest.approx(0.7) and top1 == 0.5
