"""The worker protocol over a channel, runners, and interleaved pair timing (no processes)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from edgekiln.errors import BackendError, DependencyError
from edgekiln.execute import timing, worker
from edgekiln.execute.progress import ConsoleProgress
from edgekiln.execute.runners import AgentRunner, ExitInfo, LocalRunner, Worker, runner_for


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
    with pytest.raises(BackendError, match="fake: it broke"):
        Worker(InProcessChannel(run), "fake")._call({"op": "boom"})


def test_unknown_subject_and_op_are_errors_of_the_worker():
    state = worker._State()
    with pytest.raises(ValueError, match="unknown op"):
        worker.handle({"op": "dance"}, state)
    with pytest.raises(RuntimeError, match="run before load"):
        worker.handle({"op": "run"}, state)
    with pytest.raises(ValueError, match="unknown subject kind 'tensorrt'"):
        worker.open_subject({"kind": "tensorrt"})


def test_agent_runner_uses_the_connect_function_it_is_given():
    runner = AgentRunner("addr", connect=lambda address, label: InProcessChannel(lambda x: x))
    assert runner.kind == "agent" and runner.timings_meaningful
    assert isinstance(runner.start("tvm"), Worker)
    assert runner_for(None, "cpu", agent="addr", connect=lambda a, label: InProcessChannel(lambda x: x)).kind == "agent"
    with pytest.raises(DependencyError, match="no agent client"):
        runner_for(None, "cpu", agent="addr")


def test_runner_for_picks_this_host_or_the_emulated_board():
    from edgekiln.execute.host import host_info

    here = SimpleNamespace(id="here", cpu=SimpleNamespace(arch=host_info().arch), emulation=None)
    assert isinstance(runner_for(here, "cpu"), LocalRunner)
    other = "aarch64" if host_info().arch != "aarch64" else "x86_64"
    board = SimpleNamespace(id="board", cpu=SimpleNamespace(arch=other), emulation=SimpleNamespace(cpu="x"))
    runner = runner_for(board, "cpu")
    assert runner.kind == "emulated" and not runner.timings_meaningful and "emulator" in runner.reason
    from edgekiln.errors import UserError

    with pytest.raises(UserError, match="no emulated board"):
        runner_for(SimpleNamespace(id="far", cpu=SimpleNamespace(arch=other), emulation=None), "cpu")


def _slow(factor):
    def run(inputs):
        import time

        time.sleep(0.001 * factor)
        return [inputs[0]]

    return run


def test_pairs_interleave_and_balance_and_report_progress(capsys):
    import io

    subjects = [
        timing.Timed("slow", Worker(InProcessChannel(_slow(8)), "slow")),
        timing.Timed("fast", Worker(InProcessChannel(_slow(1)), "fast")),
    ]
    for s in subjects:
        s.worker.load({"kind": "fake"}, [[np.zeros((1, 2), np.float32)]])
    # Three warm-ups: the balance reads their median, so one query stalled by a busy
    # host does not decide how many queries the fast one runs per pair.
    timing.warm_up(subjects, 3, 1)
    assert all(s.first_s > 0 and len(s.warm) == 3 for s in subjects)
    stream = io.StringIO()
    pairs = timing.measure_pairs(subjects, 1, runs=4, label="m", progress=ConsoleProgress(stream))
    assert pairs == 4 and all(len(s.pairs) == 4 for s in subjects)
    slow, fast = subjects
    # Each half lasts at least MIN_HALF_S (50 ms): the 8 ms one runs several queries in it,
    # the faster one about eight times as many (up to the cap).
    assert 4 <= slow.per_pair <= 7 and len(slow.times) == 4 * slow.per_pair
    assert fast.per_pair >= 3 * slow.per_pair and len(fast.times) == 4 * fast.per_pair
    assert timing.median_ratio(slow, fast) > 2
    assert "pair 1/4  m: slow" in stream.getvalue() and "pair 4/4" in stream.getvalue()


def test_local_worker_runs_an_onnx_model_and_reports_a_child_death(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "tiny.onnx"
    onnx.save(model, str(path))
    from edgekiln.execute.runners import outputs_of

    samples = [[np.array([[-1, 2, -3], [4, -5, 6]], np.float32)], [np.ones((2, 3), np.float32)]]
    outputs = outputs_of(LocalRunner(), "ort", {"kind": "onnxruntime", "model": str(path)}, samples)
    assert np.array_equal(outputs[0][0], [[0, 2, 0], [4, 0, 6]]) and np.array_equal(outputs[1][0], samples[1][0])
    w = LocalRunner().start("ort")
    info = w.load({"kind": "onnxruntime", "model": str(path), "threads": 1}, samples)
    assert info.version.startswith("onnxruntime") and info.compiler_loaded is False
    assert len(w.run(3)) == 3
    assert w.close().peak_rss_kb > 0
    with pytest.raises(BackendError, match="ort: .*(no_such.onnx|NO_SUCHFILE|No such file|not exist)"):
        outputs_of(LocalRunner(), "ort", {"kind": "onnxruntime", "model": str(tmp_path / "no_such.onnx")}, samples)


def test_a_board_without_the_python_packages_still_runs_native_programs(monkeypatch):
    from edgekiln import emulation
    from edgekiln.execute.runners import emulated_board_problem

    board = SimpleNamespace(id="board", aliases=("b",), emulation=SimpleNamespace(cpu="x"))
    monkeypatch.setattr(emulation, "find_qemu", lambda profile: object())
    monkeypatch.setattr(emulation, "find_sysroot", lambda profile: SimpleNamespace(missing=("apache-tvm-ffi: none",)))
    assert emulated_board_problem(board) == "the emulated board lacks apache-tvm-ffi: none"
    assert emulated_board_problem(board, python=False) is None
    monkeypatch.setattr(emulation, "find_sysroot", lambda profile: None)
    assert "`edgekiln emulate b --info`" in emulated_board_problem(board, python=False)
    assert emulated_board_problem(SimpleNamespace(emulation=None), python=False) == "the profile has no emulated board"


def test_unmet_requirements_name_what_the_board_lacks():
    from edgekiln.execute.runners import unmet_requirements

    installed = {"onnxruntime": "1.32.0", "ai-edge-litert": "2.3.0", "apache-tvm-ffi": "0.1.15.post2", "numpy": "2.4.6"}
    met = ["onnxruntime>=1.32.0", "onnxruntime>=1.9", "ai_edge_litert==2.3.0", "apache-tvm-ffi==0.1.15.post2", "numpy"]
    assert unmet_requirements(met, installed) == []
    assert unmet_requirements(["onnxruntime>=1.33.0", "ai-edge-litert==2.2.0", "torch", "x[y]>1"], installed) == [
        "onnxruntime>=1.33.0 (it has 1.32.0)",
        "ai-edge-litert==2.2.0 (it has 2.3.0)",
        "torch (not installed there)",
        "x[y]>1 (a requirement this board check cannot read)",
    ]


def test_balance_is_not_thrown_by_one_stalled_warm_up():
    slow = timing.Timed("slow", None, first_s=0.01, warm=[0.008, 0.008])
    # The fast one's second warm-up stalled behind another process.
    fast = timing.Timed("fast", None, first_s=0.002, warm=[0.001, 0.050])
    timing.balance([slow, fast], min_half_s=0.0)
    assert slow.per_pair == 1 and fast.per_pair == 8


def test_every_half_of_a_pair_lasts_at_least_the_floor_and_at_most_the_cap():
    slow = timing.Timed("slow", None, first_s=0.01, warm=[0.008, 0.008])
    fast = timing.Timed("fast", None, first_s=0.002, warm=[0.002, 0.002])
    timing.balance([slow, fast])  # a 50 ms half: 6 queries of 8 ms, 25 of 2 ms
    assert (slow.per_pair, fast.per_pair) == (6, 25)
    tiny = timing.Timed("tiny", None, first_s=0.0002, warm=[0.0002])
    timing.balance([tiny])  # 250 queries would fill the half: capped
    assert tiny.per_pair == timing.MAX_QUERIES_PER_PAIR
    big = timing.Timed("big", None, first_s=0.9, warm=[0.5])
    timing.balance([big, fast])  # the slow one's half is one query; the fast one's stops at BALANCE_S
    assert (big.per_pair, fast.per_pair) == (1, 50)
