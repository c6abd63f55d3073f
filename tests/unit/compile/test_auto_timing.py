"""auto's timing: candidates interleaved with ONNX Runtime on the source model, no bench."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from edgekiln.compile import auto
from edgekiln.compile.sequential import TimingBudget
from edgekiln.execute.progress import NullProgress
from edgekiln.execute.runners import Worker

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from edgekiln.compile.api import CompileOptions, compile_model
    from edgekiln.execute.host import host_info

    if host_info().arch != "x86_64":
        pytest.skip("x86_64 artifacts")  # the only host this profile runs on
    tmp = tmp_path_factory.mktemp("auto")
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 10)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    source = tmp / "tiny.onnx"
    onnx.save(model, str(source))
    artifacts = {
        name: compile_model(
            source, "x86_64", tmp / f"{name}.tar.gz", options=CompileOptions(backend="onnxruntime", validate=False)
        )
        for name in ("a", "b")
    }
    return source, artifacts


ORDER = ("a", "b", "broken")
# Small and quick: a tiny MatMul against itself never separates, so the budget decides.
BUDGET = TimingBudget(min_pairs=5, max_pairs=8, max_seconds=30.0, threads=1)


def test_every_candidate_is_timed_against_onnxruntime_with_pinned_threads(built, monkeypatch):
    source, artifacts = built
    loads = []
    real_load = Worker.load
    monkeypatch.setattr(
        Worker, "load", lambda self, subject, samples: loads.append(subject) or real_load(self, subject, samples)
    )
    records = [{"backend": name, "status": "built"} for name in artifacts]
    choice, why, facts = auto._measure(artifacts, records, str(source), NullProgress(), ORDER, "the test order", BUDGET)
    # The baseline and every candidate on the same pinned thread count, each in two processes.
    assert [s["kind"] for s in loads] == ["onnxruntime"] * 2 + ["artifact"] * 4
    assert {s["threads"] for s in loads} == {1}
    # (A graph this small runs in microseconds, where a loaded machine may even drop one twin.)
    assert facts["threads"] == 1 and facts["outcome"] in ("tied", "undecided", "separated", "only one left")
    assert facts["processes"] == 2
    assert facts["timing_seconds"] > 0 and choice in artifacts
    for record in records:
        # The same runtime on the same graph: the ratio is about 1, and the figures agree.
        assert 3 <= record["pairs"] <= 8 and record["p50_ms"] > 0
        assert record["ci95_low"] <= record["ratio_to_onnxruntime"] <= record["ci95_high"]
        assert 0.05 < record["ratio_to_onnxruntime"] < 20
        ci = f"95% CI {record['ci95_low']:.3f}-{record['ci95_high']:.3f}"
        figures = f"{record['ratio_to_onnxruntime']:.3f}x ({ci}, {record['pairs']} pairs)"
        assert (f"{record['backend']} {figures}" in why) == (record["status"] == "built")
        assert record["status"] == "built" or record["reason"].startswith(
            f"dropped after {record['pairs']} pairs: {figures}"
        )
    # An imported source model is used as it is, nothing re-imported.
    again = [{"backend": name, "status": "built"} for name in artifacts]
    auto._measure(artifacts, again, SimpleNamespace(path=source), NullProgress(), ORDER, "the test order", BUDGET)
    assert all("ratio_to_onnxruntime" in r for r in again)


def test_a_candidate_that_cannot_run_is_recorded_and_the_others_decide(built, tmp_path):
    source, artifacts = built
    broken = SimpleNamespace(path=tmp_path / "missing.tar.gz", manifest=artifacts["a"].manifest)
    records = [{"backend": "broken", "status": "built"}, {"backend": "b", "status": "built"}]
    choice, why, facts = auto._measure(
        {"broken": broken, "b": artifacts["b"]}, records, str(source), NullProgress(), ORDER, "the test order", BUDGET
    )
    assert choice == "b" and facts["outcome"] == "only one left"
    assert records[0]["status"] == "not measured" and "missing.tar.gz" in records[0]["reason"]
    assert why.startswith("b is the only candidate left")


def test_no_source_model_means_no_timing_and_the_first_choice(built, tmp_path):
    _, artifacts = built
    records = [{"backend": name, "status": "built"} for name in artifacts]
    choice, why, facts = auto._measure(
        artifacts, records, str(tmp_path / "gone.onnx"), NullProgress(), ORDER, "the test order", BUDGET
    )
    assert choice == "a" and "no candidate could be timed" in why and facts == {"outcome": "not timed"}


@pytest.mark.parametrize("processes", [1, 2])
def test_each_candidate_takes_its_process_copies_in_turn_and_the_order_flips_once_all_had_a_round(
    built, monkeypatch, processes
):
    # One process is one draw of a runtime's speed (litert ran 0.85-0.90 of ONNX Runtime's
    # time in some fresh processes, 0.99-1.05 in others), so the rounds go through the copies.
    source, artifacts = built
    calls: list[tuple[tuple[str, int], ...]] = []
    real_run_pair = auto.timing.run_pair

    def spy(subjects, *args, **kwargs):
        calls.append(tuple((s.name, id(s.worker)) for s in subjects))
        return real_run_pair(subjects, *args, **kwargs)

    monkeypatch.setattr(auto.timing, "run_pair", spy)
    records = [{"backend": name, "status": "built"} for name in artifacts]
    budget = TimingBudget(min_pairs=5, max_pairs=8, max_seconds=30.0, threads=1, processes=processes)
    _, _, facts = auto._measure(artifacts, records, str(source), NullProgress(), ORDER, "the test order", budget)
    assert facts["processes"] == processes
    baselines: set[int] = set()
    for name in artifacts:
        mine = [c for c in calls if name in dict(c)]
        assert len(mine) >= 3  # nothing is judged before drop_after pairs
        copies = []
        for k, pair in enumerate(mine):
            flipped = (k // processes) % 2 == 1  # once every copy has had a round
            assert [n for n, _ in pair] == (["onnxruntime", name] if flipped else [name, "onnxruntime"])
            worker, baseline = (pair[1][1], pair[0][1]) if flipped else (pair[0][1], pair[1][1])
            copies.append((worker, baseline))
            baselines.add(baseline)
        # Copy k % processes in round k, each candidate worker always with the same baseline.
        assert len(set(copies)) == processes and all(copies[k] == copies[k % processes] for k in range(len(copies)))
    assert len(baselines) == processes  # the candidates share the baseline processes
