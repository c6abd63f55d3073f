"""edgekiln tune on a one-matmul model: a few real MetaSchedule trials, a resumed rerun that
measures nothing, and a compile that applies the records (and says so in the manifest)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")
pytest.importorskip("xgboost")

from edgekiln.cli.main import main  # noqa: E402
from edgekiln.compile.api import CompileOptions, compile_model  # noqa: E402
from edgekiln.compile.backends.tvm import tuner, tuning  # noqa: E402
from edgekiln.compile.backends.tvm.backend import TVMOptions  # noqa: E402
from edgekiln.compile.backends.tvm.tuner import TuneOptions, tune_model  # noqa: E402

# MetaSchedule crashes writing its database with the tvm-ffi pinned before 0.1.14.post0.
pytestmark = pytest.mark.skipif(tuning.ffi_writes_databases() is not None, reason=str(tuning.ffi_writes_databases()))


def _one_node_onnx(path: Path, op: str, constant: np.ndarray, x_shape: list[int], y_shape: list[int]) -> Path:
    """An ONNX model of one ``op`` node: y = op(x, constant)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node(op, ["x", "C"], ["y"])],
        op.lower(),
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(constant, "C")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _matmul_onnx(path: Path) -> Path:
    weight = np.random.default_rng(0).random((64, 64), dtype=np.float32)
    return _one_node_onnx(path, "MatMul", weight, [1, 64], [1, 64])


def _library(artifact: Path) -> bytes:
    with tarfile.open(artifact) as tar:
        member = tar.extractfile("lib/model.so")
        assert member is not None
        return member.read()


def _prepacked_kernels(model: Path, db: Path, tmp_path: Path) -> tuple[list[str], list[str]]:
    """The names of the model's kernels that read prepacked weights, and of the weight-packing
    functions left to run at inference, once the records in ``db`` are applied."""
    import tvm

    from edgekiln.compile.api import import_source
    from edgekiln.device_profiles import get_profile
    from edgekiln.execute.progress import NullProgress

    source = import_source(
        str(model), tmp_path / "source", framework=None, input_shape=None, name=None, progress=NullProgress()
    )
    tvm_, mod, target = tuning.model_module(source, get_profile("x86_64"), NullProgress())
    applied = tuning.records_for_build(tvm_, mod, target, get_profile("x86_64"), str(db), NullProgress())
    assert applied is not None and applied.prepack
    with target, applied.database, tvm.transform.PassContext(opt_level=3):
        names = [g.name_hint for g in tuning.apply_records(tvm_, mod, target, applied).functions]
    return [n for n in names if n.endswith("_prepacked")], [n for n in names if n.endswith("_weight_prepack")]


def test_tune_resume_and_compile_with_the_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("EDGEKILN_CACHE", str(tmp_path / "cache"))
    model = _matmul_onnx(tmp_path / "matmul.onnx")
    db = tmp_path / "db"

    result = tune_model(str(model), "x86_64", TuneOptions(trials_per_task=3, tuning_db=db, threads=1))
    # One task, the matmul (named by TVM: its weight marked layout-free makes a new function).
    (name,) = result.planned
    assert name.startswith("matmul") and result.trials_before == 0 and result.trials_run == 3
    assert result.coverage.share == pytest.approx(1.0)
    (task,) = result.coverage.tasks
    assert task.source == "flag" and task.run_ms is not None and 0 < task.run_ms < 50
    assert len((db / tuning.RECORD_FILE).read_text().splitlines()) == 3

    # A rerun resumes: the task has its trials, nothing is measured again.
    assert (
        main(["tune", str(model), "--target", "x86_64", "--trials-per-task", "3", "--tuning-db", str(db), "--json"])
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["trials_before"] == 3 and summary["trials_run"] == 0
    assert summary["coverage"]["flops_share"] == pytest.approx(1.0)

    # A pass ordered by time: the task has a record, so it is planned by its time; its one
    # more trial is measured, and the plan is kept beside the database for a rerun.
    argv = ["tune", str(model), "--target", "x86_64", "--trials-per-task", "4", "--tuning-db", str(db)]
    assert main([*argv, "--order", "time", "--threads", "1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tasks_planned"] == [name] and (summary["trials_before"], summary["trials_run"]) == (3, 1)
    (kept,) = json.loads((db / tuner.PLANS_FILE).read_text()).values()
    assert len(kept) == 1

    tuned = compile_model(
        model,
        "x86_64",
        tmp_path / "tuned.tar.gz",
        options=CompileOptions(backend="tvm", backend_options=TVMOptions(tuning_db=str(db))),
    )
    entry = tuned.manifest.tuning
    assert entry is not None and entry["sources"] == ["flag"] and entry["databases"]["flag"] == str(db)
    assert [(t["name"], t["flops_share"], t["source"]) for t in entry["tasks"]] == [(name, 1.0, "flag")]
    assert tuned.manifest.validation.status == "passed"
    assert tuned.summary()["tuning"] == entry
    assert entry["prepacked_weights"] is True
    packed, packing = _prepacked_kernels(model, db, tmp_path)
    # The tuned kernel reads its weight in a layout of its own, which compile packed once.
    assert packed and not packing

    plain = compile_model(
        model,
        "x86_64",
        tmp_path / "plain.tar.gz",
        options=CompileOptions(backend="tvm", backend_options=TVMOptions(tuning_records=False)),
    )
    assert plain.manifest.tuning is None
    # The tuned schedule is different machine code.
    assert _library(tuned.path) != _library(plain.path)


def test_a_task_whose_search_runs_out_is_not_searched_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1x4 add has only a few distinct schedules: MetaSchedule stops short of the budget.
    The database's note keeps a rerun with the same budget from searching it again; without a
    readable note the task is searched again."""
    monkeypatch.setenv("EDGEKILN_CACHE", str(tmp_path / "cache"))
    _one_node_onnx(tmp_path / "add.onnx", "Add", np.ones((1, 4), np.float32), [1, 4], [1, 4])
    db = tmp_path / "db"

    first = tune_model(str(tmp_path / "add.onnx"), "x86_64", TuneOptions(trials_per_task=200, tuning_db=db, threads=1))
    assert 0 < first.trials_run < 200
    notes = json.loads((db / tuner.SEARCHED_FILE).read_text())
    assert list(notes.values()) == [200]

    again = tune_model(str(tmp_path / "add.onnx"), "x86_64", TuneOptions(trials_per_task=200, tuning_db=db, threads=1))
    assert again.trials_run == 0 and again.trials_before == first.trials_run

    # A malformed note only costs time: the task is searched again.
    (db / tuner.SEARCHED_FILE).write_text("[not a note")
    third = tune_model(str(tmp_path / "add.onnx"), "x86_64", TuneOptions(trials_per_task=200, tuning_db=db, threads=1))
    assert third.trials_before == first.trials_run
    assert json.loads((db / tuner.SEARCHED_FILE).read_text()) == notes
