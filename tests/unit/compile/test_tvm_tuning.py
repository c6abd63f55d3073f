"""Tuning databases: merge, precedence (flag, cache, shipped), coverage, the resume plan and
the manifest's tuning entry. Records are made from schedule traces, without measuring."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

tvm = pytest.importorskip("tvm")

from edgekiln.compile.backends.tvm import tuning  # noqa: E402
from edgekiln.compile.backends.tvm.tuner import TuneOptions, plan  # noqa: E402
from edgekiln.device_profiles import get_profile  # noqa: E402
from edgekiln.errors import DependencyError, UserError  # noqa: E402

# Writing a JSON tuning database crashes the process with the tvm-ffi that edgekiln pinned
# before 0.1.14.post0; these tests run once the pin is installed.
WRITES = pytest.mark.skipif(tuning.ffi_writes_databases() is not None, reason=str(tuning.ffi_writes_databases()))


def test_tuning_refuses_a_tvm_ffi_that_crashes_writing_records(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    from edgekiln.compile.backends.tvm.tuner import tune

    monkeypatch.setattr(metadata, "version", lambda name: "0.1.15.post2")
    assert "apache-tvm-ffi 0.1.15.post2" in str(tuning.ffi_writes_databases())
    with pytest.raises(DependencyError, match="crashes writing tuning records") as info:
        tune(None, _profile(), TuneOptions())
    assert "0.1.14.post0" in info.value.hint
    with pytest.raises(DependencyError):
        tuning.merge_databases(Path("dest"), [Path("src")])


def _matmul(n: int, block: str = "C") -> tvm.IRModule:
    from tvm import te

    a = te.placeholder((n, n), name="A")
    b = te.placeholder((n, n), name="B")
    k = te.reduce_axis((0, n), name="k")
    c = te.compute((n, n), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name=block)
    return tvm.IRModule({"main": te.create_prim_func([a, b, c])})


def _task(name: str, n: int, weight: int = 1) -> tuning.Task:
    return tuning.Task(name, weight, float(2 * n**3), _matmul(n))


LLVM = {"kind": "llvm"}
AVX512 = {"kind": "llvm", "mcpu": "skylake-avx512", "mattr": ["+avx512f"], "num-cores": 18}


def _write(
    path: Path,
    records: list[tuple[tvm.IRModule, float]],
    trace_of: tvm.IRModule | None = None,
    target_dict: dict = LLVM,
) -> Path:
    """A JSON database at ``path`` with one record per (workload, seconds) for ``target_dict``;
    the trace splits the first loop of ``trace_of`` (default: the workload itself)."""
    from tvm.s_tir.schedule import Schedule

    database = tuning.open_database(path, create=True)
    target = tvm.target.Target(target_dict)
    for mod, secs in records:
        schedule = Schedule(trace_of or mod)
        loop = schedule.get_loops(schedule.get_sblock("C"))[0]
        schedule.split(loop, factors=[None, 4])
        workload = database.commit_workload(mod)
        database.commit_tuning_record(tuning.ms().database.TuningRecord(schedule.trace, workload, [secs], target, None))
    return path


def _profile():
    return get_profile("x86_64")


@WRITES
def test_coverage_counts_flops_shares_and_the_first_source_per_task(tmp_path: Path) -> None:
    big, small = _task("big", 64), _task("small", 16, weight=2)
    flag = _write(tmp_path / "flag", [(small.mod, 2e-3)])
    cache = _write(tmp_path / "cache", [(big.mod, 5e-3), (small.mod, 1e-3)])
    paths = {"flag": flag, "cache": cache}
    dbs = {s: tuning.open_database(p) for s, p in paths.items()}
    cov, chosen = tuning.coverage_of([big, small], dbs, paths, tvm.target.Target(LLVM))
    total = 2 * 64**3 + 2 * 2 * 16**3
    assert cov.share == pytest.approx(1.0)
    by_name = {t.name: t for t in cov.tasks}
    assert by_name["big"].share == pytest.approx(2 * 64**3 / total)
    assert by_name["big"].source == "cache" and by_name["big"].run_ms == pytest.approx(5.0)
    # The flag's database comes first even where the cache's record is faster.
    assert by_name["small"].source == "flag" and by_name["small"].run_ms == pytest.approx(2.0)
    assert cov.sources == ("flag", "cache")
    assert chosen["small"][0] == "flag"

    only_small = tuning.coverage_of([big, small], {"flag": dbs["flag"]}, {"flag": flag}, tvm.target.Target(LLVM))[0]
    assert only_small.share == pytest.approx(2 * 2 * 16**3 / total)
    assert [t.name for t in only_small.tasks] == ["small"]


@WRITES
def test_records_for_plain_kernels_apply_where_they_cover_more(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Records tuned before prepacking are for the plain kernels: compile takes that variant
    # when its records cover more of the model, and the prepacked one when they tie.
    prepacked, plain = _task("packed", 64), _task("plain", 32)
    variants = {True: [prepacked, plain], False: [plain]}
    monkeypatch.setattr(tuning, "extract_tasks", lambda tvm_, mod, target, prepack=True: variants[prepack])
    db = _write(tmp_path / "db", [(plain.mod, 1e-3)])
    paths = {"flag": db}
    llvm = tvm.target.Target(LLVM)
    found = tuning.look_up(tvm, None, llvm, {"flag": tuning.open_database(db)}, paths)
    assert not found.prepack and found.coverage.share == pytest.approx(1.0) and list(found.chosen) == ["plain"]
    both = _write(tmp_path / "both", [(prepacked.mod, 1e-3), (plain.mod, 1e-3)])
    found = tuning.look_up(tvm, None, llvm, {"flag": tuning.open_database(both)}, {"flag": both})
    assert found.prepack and found.coverage.share == pytest.approx(1.0)


@WRITES
def test_merge_keeps_the_fastest_record_per_workload(tmp_path: Path) -> None:
    a, b = _matmul(32), _matmul(48)
    one = _write(tmp_path / "one", [(a, 3e-3), (b, 1e-3)])
    two = _write(tmp_path / "two", [(a, 2e-3), (a, 4e-3)])
    dest = tmp_path / "merged"
    counts = tuning.merge_databases(dest, [one, two])
    assert counts == {"records_read": 4, "workloads": 2, "records_written": 2}
    merged = tuning.open_database(dest)
    records = merged.get_all_tuning_records()
    best = sorted(tuning.run_ms(r) for r in records)
    assert best == pytest.approx([1.0, 2.0])
    # Merging again into the result (its own records count) changes nothing.
    again = tuning.merge_databases(dest, [two], keep=2)
    assert again["workloads"] == 2 and again["records_written"] == 3
    assert not (tmp_path / "merged.merging").exists()


@WRITES
def test_records_apply_only_to_the_cpu_they_were_tuned_for(tmp_path: Path) -> None:
    # MetaSchedule matches workloads alone: one database may hold the AVX2 and the AVX-512
    # records of a kernel, and each build must get its own CPU's (num-cores aside).
    task = _task("mm", 32)
    db = _write(tmp_path / "db", [(task.mod, 3e-3)], target_dict=LLVM)
    _write(tmp_path / "db", [(task.mod, 1e-3), (task.mod, 2e-3)], target_dict=AVX512)
    database = tuning.open_database(db)
    avx512 = tvm.target.Target({**AVX512, "num-cores": 4})
    assert tuning.run_ms(tuning.best_record(database, task, tvm.target.Target(LLVM))) == pytest.approx(3.0)
    assert tuning.run_ms(tuning.best_record(database, task, avx512)) == pytest.approx(1.0)
    assert len(tuning.task_records(database, task, avx512)) == 2
    other = tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})
    assert tuning.best_record(database, task, other) is None
    cov = tuning.coverage_of([task], {"flag": database}, {"flag": db}, other)[0]
    assert cov.share == 0.0 and cov.tasks == ()
    # A merge keeps the fastest record of each CPU.
    counts = tuning.merge_databases(tmp_path / "merged", [db])
    assert counts == {"records_read": 3, "workloads": 1, "records_written": 2}
    merged = tuning.open_database(tmp_path / "merged")
    assert sorted(tuning.run_ms(r) for r in merged.get_all_tuning_records()) == pytest.approx([1.0, 3.0])


@WRITES
def test_merge_rejects_a_source_without_records_and_a_bad_keep(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="holds no tuning records"):
        tuning.merge_databases(tmp_path / "dest", [tmp_path / "missing"])
    with pytest.raises(UserError, match="--keep"):
        tuning.merge_databases(tmp_path / "dest", [tmp_path], keep=0)


@WRITES
def test_database_paths_precedence_flag_cache_shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEKILN_CACHE", str(tmp_path / "cache"))
    shipped = _write(tmp_path / "shipped", [(_matmul(16), 1e-3)])
    monkeypatch.setattr(tuning, "shipped_database", lambda profile: shipped)
    assert list(tuning.database_paths(_profile(), None)) == ["shipped"]
    _write(tuning.cache_database(_profile()), [(_matmul(16), 1e-3)])
    flag = _write(tmp_path / "flag", [(_matmul(16), 1e-3)])
    paths = tuning.database_paths(_profile(), str(flag))
    assert list(paths) == ["flag", "cache", "shipped"]
    assert paths["cache"] == tmp_path / "cache" / "tuning" / "generic--x86-64-avx2"
    with pytest.raises(UserError, match="--tuning-db .* holds no tuning records"):
        tuning.database_paths(_profile(), str(tmp_path / "nothing"))


@WRITES
def test_shipped_records_unpack_into_the_cache_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gzip

    monkeypatch.setenv("EDGEKILN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tuning, "records_root", lambda: tmp_path / "records")
    assert tuning.shipped_database(_profile()) is None
    plain = _write(tmp_path / "plain", [(_matmul(16), 1e-3)])
    packed = tmp_path / "records" / "generic--x86-64-avx2"
    packed.mkdir(parents=True)
    for name in (tuning.WORKLOAD_FILE, tuning.RECORD_FILE):
        (packed / f"{name}.gz").write_bytes(gzip.compress((plain / name).read_bytes()))
    unpacked = tuning.shipped_database(_profile())
    assert unpacked is not None and unpacked.parent == tmp_path / "cache" / "tuning" / "shipped"
    assert (unpacked / tuning.RECORD_FILE).read_bytes() == (plain / tuning.RECORD_FILE).read_bytes()
    stamp = (unpacked / tuning.RECORD_FILE).stat().st_mtime_ns
    assert tuning.shipped_database(_profile()) == unpacked
    assert (unpacked / tuning.RECORD_FILE).stat().st_mtime_ns == stamp  # not unpacked again
    assert [tuning.run_ms(r) for r in tuning.open_database(unpacked).get_all_tuning_records()] == [1.0]


@WRITES
def test_a_shipped_record_that_no_longer_builds_is_skipped_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model is built with every record first; only when that fails is each unchecked
    shipped record built alone, and the ones that fail are left out."""
    from edgekiln.compile.backends.tvm import shipped_check, tuner
    from edgekiln.execute.progress import NullProgress

    monkeypatch.setenv("EDGEKILN_CACHE", str(tmp_path / "cache"))
    good, bad = _task("good", 32), _task("bad", 16)
    shipped = _write(tmp_path / "shipped", [(good.mod, 1e-3), (bad.mod, 1e-3)])
    monkeypatch.setattr(tuning, "shipped_database", lambda profile: shipped)
    monkeypatch.setattr(tuning, "extract_tasks", lambda tvm_, mod, target, **kw: [good, bad])
    real_build = tuner.build_candidate
    built, models = [], []

    def build(mod, target, params):  # a TVM whose codegen rejects the 16x16 kernel
        built.append(mod)
        if "16, 16" in str(mod):
            raise RuntimeError("codegen rejects this schedule")
        return real_build(mod, target, params)

    def build_model(tvm_, mod, target, applied):  # the model's build fails while bad's record is in
        models.append(applied)
        if applied.database.has_workload(bad.mod):
            raise RuntimeError("codegen rejects this schedule")
        return "executable"

    monkeypatch.setattr(tuner, "build_candidate", build)
    monkeypatch.setattr(tuning, "compile_with_records", build_model)
    target = tvm.target.Target({"kind": "llvm"})
    applied = tuning.records_for_build(tvm, None, target, _profile(), None, NullProgress())
    assert applied is not None and not built and applied.skipped == ()  # looking up builds nothing
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        executable, applied = shipped_check.build_with_records(tvm, None, target, applied)
    assert executable == "executable" and len(models) == 2 and len(built) == 2
    assert applied.skipped == ("bad",)
    assert any("skipping the shipped tuning record of bad" in str(w.message) for w in caught)
    entry = applied.manifest_entry()
    assert [t["name"] for t in entry["tasks"]] == ["good"]
    assert entry["sources"] == ["shipped"] and entry["skipped_shipped"] == ["bad"]
    assert entry["flops_share"] == pytest.approx(32**3 / (32**3 + 16**3), rel=1e-5)
    assert applied.database.has_workload(good.mod) and not applied.database.has_workload(bad.mod)
    # The record that built is remembered: the next failing build checks only the broken one.
    built.clear()
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        again = tuning.records_for_build(tvm, None, target, _profile(), None, NullProgress())
        _, again = shipped_check.build_with_records(tvm, None, target, again)
    assert len(built) == 1 and "16, 16" in str(built[0]) and again.skipped == ("bad",)


@WRITES
def test_a_model_that_builds_with_its_shipped_records_checks_none_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgekiln.compile.backends.tvm import shipped_check, tuner
    from edgekiln.execute.progress import NullProgress

    monkeypatch.setenv("EDGEKILN_CACHE", str(tmp_path / "cache"))
    good, other = _task("good", 32), _task("other", 16)
    shipped = _write(tmp_path / "shipped", [(good.mod, 1e-3), (other.mod, 1e-3)])
    monkeypatch.setattr(tuning, "shipped_database", lambda profile: shipped)
    monkeypatch.setattr(tuning, "extract_tasks", lambda tvm_, mod, target, **kw: [good, other])
    monkeypatch.setattr(tuner, "build_candidate", lambda *a: pytest.fail("no record is built alone"))
    monkeypatch.setattr(tuning, "compile_with_records", lambda *a: "executable")
    target = tvm.target.Target({"kind": "llvm"})
    applied = tuning.records_for_build(tvm, None, target, _profile(), None, NullProgress())
    executable, after = shipped_check.build_with_records(tvm, None, target, applied)
    assert executable == "executable" and after is applied and after.skipped == ()
    assert len(shipped_check._load_verified()) == 2  # both remembered as building here

    # A failure that no unchecked shipped record explains is the build's own: raised as it is.
    def broken(*a):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(tuning, "compile_with_records", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        shipped_check.build_with_records(tvm, None, target, applied)


@WRITES
def test_shipped_records_this_tvm_cannot_read_are_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgekiln.execute.progress import NullProgress

    monkeypatch.setenv("EDGEKILN_CACHE", str(tmp_path / "cache"))
    task = _task("t", 16)
    # The trace names block "C", which this workload (block "D") lacks: the loader rejects it.
    shipped = _write(tmp_path / "shipped", [(_matmul(16, block="D"), 1e-3)], trace_of=_matmul(16))
    cache = _write(tuning.cache_database(_profile()), [(task.mod, 2e-3)])
    monkeypatch.setattr(tuning, "shipped_database", lambda profile: shipped)
    monkeypatch.setattr(tuning, "extract_tasks", lambda tvm_, mod, target, **kw: [task])
    with pytest.warns(UserWarning, match="skipping the tuning records shipped in"):
        applied = tuning.records_for_build(tvm, None, tvm.target.Target(LLVM), _profile(), None, NullProgress())
    assert applied is not None and applied.coverage.sources == ("cache",)
    # Named without the build machine's paths, except the flag's, which the user chose.
    assert applied.manifest_entry()["databases"] == {
        "cache": f"edgekiln cache: tuning/{cache.name}",
        "shipped": "edgekiln shipped: tuning/shipped/shipped",
    }
    assert tuning.describe_database("flag", tmp_path / "db") == str(tmp_path / "db")


def test_no_databases_means_no_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEKILN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tuning, "shipped_database", lambda profile: None)
    from edgekiln.execute.progress import NullProgress

    assert tuning.records_for_build(tvm, None, None, _profile(), None, NullProgress()) is None


def test_plan_takes_the_most_flops_first_within_the_budget() -> None:
    tasks = [_task("a", 64), _task("b", 32), _task("c", 16), tuning.Task("reshape", 1, 0.0, None)]
    assert [t.name for t in plan(tasks, TuneOptions(trials=0, trials_per_task=8))] == ["a", "b", "c"]
    assert [t.name for t in plan(tasks, TuneOptions(trials=17, trials_per_task=8))] == ["a", "b"]


def test_plan_by_time_takes_tasks_without_records_then_the_most_time() -> None:
    tasks = [_task("a", 64), _task("b", 32), _task("c", 16), _task("d", 8), tuning.Task("reshape", 1, 0.0, None)]
    times = {"a": 1.0, "b": 5.0, "d": 0.5}  # ms in each task; c has no record yet
    by_time = TuneOptions(trials=0, trials_per_task=8, order="time")
    assert [t.name for t in plan(tasks, by_time, times)] == ["c", "b", "a", "d"]
    assert [t.name for t in plan(tasks, TuneOptions(trials=16, trials_per_task=8, order="time"), times)] == ["c", "b"]
    assert [t.name for t in plan(tasks, TuneOptions(trials=16, trials_per_task=8), times)] == ["a", "b"]


@WRITES
def test_a_time_plan_is_kept_so_that_a_rerun_takes_the_same_tasks(tmp_path: Path) -> None:
    from edgekiln.compile.backends.tvm import tuner
    from edgekiln.compile.backends.tvm.tuner import PLANS_FILE, planned_tasks

    big, mid, small = _task("big", 64), _task("mid", 32, weight=4), _task("small", 16)
    db = _write(tmp_path / "db", [(big.mod, 1e-3), (mid.mod, 2e-3), (small.mod, 3e-3)])
    target = tvm.target.Target(LLVM)
    options = TuneOptions(trials=16, trials_per_task=8, order="time")
    first = planned_tasks(db, tuning.open_database(db), [big, mid, small], target, options)
    assert [t.name for t in first] == ["mid", "small"]  # 4 x 2 ms and 3 ms, against big's 1 ms
    # The pass speeds both up; planned afresh, big would now come first. A rerun resumes instead.
    _write(db, [(mid.mod, 1e-5), (small.mod, 1e-5)])
    again = planned_tasks(db, tuning.open_database(db), [big, mid, small], target, options)
    assert [t.name for t in again] == ["mid", "small"]
    other = TuneOptions(trials=8, trials_per_task=8, order="time")  # another pass: planned afresh
    assert [t.name for t in planned_tasks(db, tuning.open_database(db), [big, mid, small], target, other)] == ["big"]
    (db / PLANS_FILE).write_text(json.dumps({tuner._plan_key(options, target): [{"a": 1}]}), encoding="utf-8")
    assert [t.name for t in planned_tasks(db, tuning.open_database(db), [big, mid, small], target, options)] == [
        "big",
        "mid",
    ]  # a plan of the wrong kind: planned afresh
    (db / PLANS_FILE).write_text("{not json", encoding="utf-8")  # a broken note: planned afresh
    assert [t.name for t in planned_tasks(db, tuning.open_database(db), [big, mid, small], target, options)] == [
        "big",
        "mid",
    ]


def test_tune_options_reject_bad_budgets() -> None:
    with pytest.raises(UserError, match="--trials-per-task"):
        TuneOptions(trials_per_task=0)
    with pytest.raises(UserError, match="--trials"):
        TuneOptions(trials=-1)
    with pytest.raises(UserError, match="--order"):
        TuneOptions(order="size")


def test_full_coverage_is_exactly_one_whatever_the_rounding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nine tasks whose FLOPs shares, summed one by one, come to a hair above 1: the
    coverage is computed from the FLOPs, so it is 1.0 and the evidence rule takes it."""
    import random

    from edgekiln.compile.evidence import TuningCoverage

    rng = random.Random(8)
    tasks = [tuning.Task(f"t{i}", 1, rng.random() * 1e6, None) for i in range(9)]
    total = sum(t.total_flops for t in tasks)
    assert sum(t.total_flops / total for t in tasks) > 1.0  # the rounding this guards against
    monkeypatch.setattr(tuning, "run_ms", lambda record: None)  # no real records here
    coverage = tuning.summarize(tasks, {t.name: ("shipped", None) for t in tasks}, {})
    assert coverage.share == 1.0
    assert TuningCoverage(coverage.share, "shipped").flops_share == 1.0
