"""``edgekiln tune``: MetaSchedule tuning of a model's tasks into a profile's database.

Tuning resumes: the database keeps every measured trial, and a rerun counts them per task,
skips the tasks that have their budget and gives the others only what they lack. A small
task's search space can run out before its budget (MetaSchedule finds no new candidate); the
database's directory notes such tasks (``SEARCHED_FILE``), so that a rerun with the same
budget does not search them again (12 of MobileNetV2's tasks before ReLU6 fused into its
convolutions: about 2 minutes a rerun).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekiln.compile.backends.tvm import notes, tuning
from edgekiln.compile.stages import SourceModel
from edgekiln.device_profiles import DeviceProfile
from edgekiln.errors import BackendError, UserError, first_line
from edgekiln.execute.progress import NullProgress, Progress

ORDERS = ("flops", "time")


@dataclass(frozen=True)
class TuneOptions:
    """What ``edgekiln tune`` does.

    trials: the most trials for the model in all (done ones included, so that a rerun
    finishes the same plan); tasks are taken in ``order`` until their per-task budgets
    fill it. 0 means every task gets ``trials_per_task``.
    trials_per_task: measured candidates per task.
    order: ``flops``, the most FLOPs first; or ``time``, tasks without records first (by
    FLOPs), then the most time by their best records (calls x best time). A later pass with
    ``time`` goes where the model's time is, as Ansor's task scheduler does, rather than
    again to the biggest tasks, which may already be the fastest per FLOP.
    tuning_db: the database directory (default: the profile's in edgekiln's cache).
    threads: threads the candidates run with (default: this host's usable CPUs).
    seed: the search's random seed, so that a rerun explores the same way.
    """

    trials: int = 0
    trials_per_task: int = 32
    tuning_db: Path | None = None
    threads: int | None = None
    seed: int = 0
    order: str = "flops"

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise UserError(f"--order must be one of {', '.join(ORDERS)}, not {self.order!r}")
        if self.trials < 0:
            raise UserError(f"--trials must be 0 or more, not {self.trials}")
        if self.trials_per_task < 1:
            raise UserError(f"--trials-per-task must be 1 or more, not {self.trials_per_task}")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"threads must be 1 or more, not {self.threads}")


@dataclass(frozen=True)
class TuneResult:
    """What a tuning run did and what the database covers now."""

    database: Path
    profile: str
    planned: tuple[str, ...]
    trials_before: int
    trials_run: int
    seconds: float
    coverage: tuning.Coverage

    def to_dict(self) -> dict[str, Any]:
        return {
            "database": str(self.database),
            "profile": self.profile,
            "tasks_planned": list(self.planned),
            "trials_before": self.trials_before,
            "trials_run": self.trials_run,
            "tune_seconds": round(self.seconds, 2),
            "coverage": self.coverage.to_dict(),
        }


def plan(tasks: list[tuning.Task], options: TuneOptions, times: dict[str, float] | None = None) -> list[tuning.Task]:
    """The tasks to tune: those with FLOPs, in ``options.order``, while their per-task
    budgets fit in ``options.trials``. ``tasks`` come most FLOPs first; ``times`` holds the
    model's milliseconds in each task that has a record (for ``time``)."""
    if options.order == "time":
        times = times or {}
        # Stable sorts: tasks without records keep their FLOPs order, ahead of the rest.
        tasks = sorted(tasks, key=lambda t: (t.name in times, -times.get(t.name, 0.0)))
    chosen, budget = [], 0
    for task in tasks:
        if task.total_flops <= 0:
            continue  # reshapes and copies: nothing a schedule can speed up much
        if options.trials and budget + options.trials_per_task > options.trials:
            break
        chosen.append(task)
        budget += options.trials_per_task
    return chosen


def task_times(database: Any, tasks: list[tuning.Task], target: Any) -> dict[str, float]:
    """The model's milliseconds in each task that has a record for ``target``'s CPU: its
    calls times its best record's time."""
    times = {}
    for task in tasks:
        record = tuning.best_record(database, task, target)
        ms = tuning.run_ms(record) if record is not None else None
        if ms is not None:
            times[task.name] = task.weight * ms
    return times


def measured_trials(database: Any, task: tuning.Task, target: Any, limit: int) -> int:
    """How many measured trials of the task for ``target``'s CPU the database holds (at most
    ``limit``): a database may also hold another CPU's."""
    return len(tuning.task_records(database, task, target, limit))


def tune(
    source: SourceModel,
    profile: DeviceProfile,
    options: TuneOptions,
    *,
    runner: Any = None,
    builder: Any = None,
    progress: Progress | None = None,
) -> TuneResult:
    """Tune the model's tasks for the profile with MetaSchedule into its database.

    runner: the MetaSchedule Runner that times candidates (default: a local runner on this
    host); another runner times them elsewhere, e.g. on the device itself
    (:mod:`edgekiln.compile.backends.tvm.device_tuning`). builder: the MetaSchedule Builder
    that makes what the runner loads (default: host modules for the local runner).
    """
    progress = progress or NullProgress()
    tuning.require_tuner()
    started = time.monotonic()
    path = Path(options.tuning_db) if options.tuning_db else tuning.cache_database(profile)
    _, target, tasks = tuning.model_tasks(source, profile, progress)
    database = tuning.open_database(path, create=True)
    chosen = planned_tasks(path, database, tasks, target, options)
    done = {t.name: measured_trials(database, t, target, options.trials_per_task) for t in chosen}
    searched = _searched(path)
    pending = [
        t
        for t in chosen
        if done[t.name] < options.trials_per_task and searched.get(_key(t), 0) < options.trials_per_task
    ]
    before = sum(done.values())
    report = _ProgressReport(progress, chosen, done, options.trials_per_task)
    if pending:
        with progress.step(f"tune {len(pending)} of {len(tasks)} task(s), up to {options.trials_per_task} trials each"):
            _tune_pending(pending, done, target, database, path, (builder, runner), report, options)
    source_name = "flag" if options.tuning_db else "cache"
    cov = tuning.coverage_of(tasks, {source_name: database}, {source_name: path}, target)[0]
    return TuneResult(
        database=path,
        profile=profile.id,
        planned=tuple(t.name for t in chosen),
        trials_before=before,
        trials_run=report.trials,
        seconds=time.monotonic() - started,
        coverage=cov,
    )


# Tasks whose search ran out of candidates before their budget: {structural hash: budget}.
SEARCHED_FILE = "edgekiln_searched.json"


def _key(task: tuning.Task) -> str:
    return str(tuning.structural_hash(task.mod))


def _searched(path: Path) -> dict[str, int]:
    """The database's note of exhausted searches: {structural hash: budget}."""
    data = notes.read(path / SEARCHED_FILE, dict)
    return {str(k): v for k, v in data.items() if isinstance(v, int) and not isinstance(v, bool)}


def _note_searched(path: Path, task: tuning.Task, budget: int) -> None:
    searched = _searched(path)
    searched[_key(task)] = max(budget, searched.get(_key(task), 0))
    notes.write(path / SEARCHED_FILE, searched)


# Time-ordered plans, so that a rerun resumes the same tasks: {pass key: [structural hash]}.
PLANS_FILE = "edgekiln_plans.json"


def _plan_key(options: TuneOptions, target: Any) -> str:
    return json.dumps([options.order, options.trials_per_task, options.trials, list(tuning.cpu_key(target))])


def planned_tasks(
    path: Path, database: Any, tasks: list[tuning.Task], target: Any, options: TuneOptions
) -> list[tuning.Task]:
    """The pass's tasks. A ``time`` plan depends on the records when it starts, and they
    improve as it runs, so it is kept beside the database: a rerun of the same pass (an
    interrupted one, or ``make tune-zoo`` again) takes the same tasks."""
    if options.order != "time":
        return plan(tasks, options)
    plans = notes.read(path / PLANS_FILE, dict)
    saved = plans.get(_plan_key(options, target))
    by_key = {_key(t): t for t in tasks}
    if isinstance(saved, list) and saved and all(isinstance(k, str) and k in by_key for k in saved):
        return [by_key[k] for k in saved]
    chosen = plan(tasks, options, task_times(database, tasks, target))
    plans[_plan_key(options, target)] = [_key(t) for t in chosen]
    notes.write(path / PLANS_FILE, plans)
    return chosen


def build_candidate(mod: Any, target: Any, _params: Any) -> Any:
    """MetaSchedule's default build without its ``import tvm.s_tir.tensor_intrin``: that
    import takes about a minute on a 2-core host, in every builder process of every batch,
    and CPU float32 schedules use no tensor intrinsics."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def _tune_pending(
    pending: list[tuning.Task],
    done: dict[str, int],
    target: Any,
    database: Any,
    db_path: Path,
    workers: tuple[Any, Any],
    report: _ProgressReport,
    options: TuneOptions,
) -> None:
    """Tune each pending task for the trials it lacks, with the (builder, runner) given
    (None: this host's)."""
    ms = tuning.ms()
    builder, runner = workers
    runner = runner if runner is not None else ms.runner.LocalRunner()
    if builder is None:
        builder = ms.builder.LocalBuilder(f_build=build_candidate, timeout_sec=120)
    with (
        tuning.tvm_threads(options.threads or tuning.default_threads()),
        tempfile.TemporaryDirectory(prefix="edgekiln-tune-") as work_dir,
    ):
        # One task at a time: its records are in the database as soon as it is done, so an
        # interrupted run loses at most one task's trials (all tasks in one MetaSchedule run
        # build every task's first batch before any record is saved).
        for index, task in enumerate(pending):
            remaining = options.trials_per_task - done[task.name]
            _tune_task(
                ms,
                task,
                remaining,
                target,
                database,
                (builder, runner),
                report.callback(ms),
                work_dir,
                options.seed + index,
            )
            if measured_trials(database, task, target, options.trials_per_task) < options.trials_per_task:
                _note_searched(db_path, task, options.trials_per_task)


def _tune_task(
    ms: Any,
    task: tuning.Task,
    remaining: int,
    target: Any,
    database: Any,
    workers: tuple[Any, Any],
    callback: Any,
    work_dir: str,
    seed: int,
) -> None:
    context = ms.TuneContext(
        mod=task.mod,
        target=target,
        space_generator="post-order-apply",
        # A small population: with tens of trials per task, the default 512 spends more time
        # in the search than in measuring on a 2-core host.
        search_strategy=ms.search_strategy.EvolutionarySearch(population_size=64, init_min_unmeasured=32),
        task_name=task.name,
        rand_state=seed,
        num_threads="physical",
    ).clone()
    try:
        ms.tune.tune_tasks(
            tasks=[context],
            task_weights=[float(task.weight)],
            work_dir=work_dir,
            max_trials_global=remaining,
            max_trials_per_task=remaining,
            num_trials_per_iter=min(remaining, 16),
            builder=workers[0],
            runner=workers[1],
            database=database,
            measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), callback],
        )
    except Exception as exc:  # MetaSchedule raises TVMError and friends for broken tasks
        raise BackendError(f"MetaSchedule tuning of {task.name} failed: {first_line(exc, last=True)}") from None


class _ProgressReport:
    """Reports tasks, trials and the best time so far after every measured batch."""

    def __init__(self, progress: Progress, tasks: list[tuning.Task], done: dict[str, int], per_task: int) -> None:
        self.progress = progress
        self.total = sum(per_task for _ in tasks)
        self.done = dict(done)
        self.per_task = per_task
        self.tasks = len(tasks)
        self.trials = 0
        self.best: dict[str, float] = {}

    def record(self, name: str, secs: list[float]) -> None:
        self.trials += len(secs)
        self.done[name] = self.done.get(name, 0) + len(secs)
        valid = [s for s in secs if s < 1e9]
        if valid:
            self.best[name] = min(self.best.get(name, float("inf")), min(valid))
        finished = sum(1 for n in self.done if self.done[n] >= self.per_task)
        best = self.best.get(name)
        note = f"tasks {finished}/{self.tasks}, {name}: best {best * 1e3:.3f} ms" if best else f"{name}: no valid trial"
        self.progress.advance(min(sum(self.done.values()), self.total), self.total, note, unit="trials")

    def callback(self, ms: Any) -> Any:
        from tvm.ir.utils import derived_object

        report = self

        @derived_object
        class _Callback(ms.measure_callback.PyMeasureCallback):
            def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):  # noqa: ANN001
                name = str(task_scheduler.tasks_[task_id].ctx.task_name)
                secs = []
                for built, ran in zip(builder_results, runner_results):
                    times = [float(s) for s in (ran.run_secs or [])]
                    ok = built.error_msg is None and ran.error_msg is None and times
                    secs.append(sum(times) / len(times) if ok else 1e10)
                report.record(name, secs)

        return _Callback()


def tune_model(
    model: str | os.PathLike[str],
    target: str,
    options: TuneOptions,
    *,
    input_shape: Any = None,
    framework: str | None = None,
    runner: Any = None,
    builder: Any = None,
    progress: Progress | None = None,
) -> TuneResult:
    """Import ``model`` (a file, folder or ``zoo:NAME``, as compile takes) and tune it for
    the profile ``target``; see :func:`tune`."""
    from edgekiln.compile.api import import_source
    from edgekiln.device_profiles import get_profile

    progress = progress or NullProgress()
    profile = get_profile(target)
    with tempfile.TemporaryDirectory(prefix="edgekiln-tune-", ignore_cleanup_errors=True) as tmp:
        source = import_source(
            model, Path(tmp) / "source", framework=framework, input_shape=input_shape, name=None, progress=progress
        )
        return tune(source, profile, options, runner=runner, builder=builder, progress=progress)
