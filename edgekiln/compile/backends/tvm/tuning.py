"""TVM MetaSchedule tuning: tasks of a model, tuning into a database, and the records that
compile applies (``--tuning-db``, then edgekiln's cache, then the records shipped with
edgekiln, checked against the installed TVM when the model is built with them: see
:mod:`edgekiln.compile.backends.tvm.shipped_check`).

A tuning database is a directory with MetaSchedule's two JSON files
(``database_workload.json``, ``database_tuning_record.json``), one per device profile.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

from edgekiln.compile.stages import SourceModel
from edgekiln.device_profiles import DeviceProfile
from edgekiln.errors import DependencyError, UserError, first_line
from edgekiln.execute.progress import NullProgress, Progress
from edgekiln.runtime.compat import cache_root, usable_cpus

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
SOURCES = ("flag", "cache", "shipped")


@dataclass(frozen=True)
class Task:
    """One tuning task of a model: a fused TIR function, how often the model calls it
    (``weight``) and its floating-point operations per call."""

    name: str
    weight: int
    flops: float
    mod: Any = field(repr=False, compare=False)

    @property
    def total_flops(self) -> float:
        return self.flops * self.weight


@dataclass(frozen=True)
class TunedTask:
    """A task that has a record: its share of the model's FLOPs and where the record came from."""

    name: str
    share: float
    source: str
    run_ms: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "flops_share": round(self.share, 6), "source": self.source, "run_ms": self.run_ms}


@dataclass(frozen=True)
class Coverage:
    """How much of a model tuning records cover: the tasks with a record, their share of
    the model's FLOPs, and which databases they came from (``flag``, ``cache``, ``shipped``)."""

    share: float
    tasks: tuple[TunedTask, ...]
    task_count: int
    databases: dict[str, str]

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(s for s in SOURCES if any(t.source == s for t in self.tasks))

    def to_dict(self) -> dict[str, Any]:
        return {
            "flops_share": round(self.share, 6),
            "tasks_tuned": len(self.tasks),
            "tasks_total": self.task_count,
            "sources": list(self.sources),
            "databases": dict(self.databases),
            "tasks": [t.to_dict() for t in self.tasks],
        }


def profile_key(profile: DeviceProfile) -> str:
    """The directory name of a profile's databases (its id, '/' spelt '--')."""
    return profile.id.replace("/", "--")


def cache_database(profile: DeviceProfile) -> Path:
    """The profile's tuning database in edgekiln's cache (``edgekiln tune`` writes here)."""
    return cache_root() / "tuning" / profile_key(profile)


def records_root() -> Path:
    """Where edgekiln's shipped tuning records are: one folder per profile."""
    return Path(str(resources.files("edgekiln.compile.backends.tvm") / "records"))


def shipped_database(profile: DeviceProfile) -> Path | None:
    """The records shipped with edgekiln for the profile, or None. They ship gzipped (the
    workloads are verbose JSON, ~16x smaller packed) and are unpacked into edgekiln's cache
    once per content."""
    root = records_root() / profile_key(profile)
    packed = [root / f"{name}.gz" for name in (WORKLOAD_FILE, RECORD_FILE)]
    if not all(p.is_file() for p in packed):
        return None
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in packed)).hexdigest()[:16]
    unpacked = cache_root() / "tuning" / "shipped" / f"{profile_key(profile)}-{digest}"
    if not (unpacked / RECORD_FILE).is_file():
        staging = unpacked.with_name(unpacked.name + f".{os.getpid()}.tmp")
        staging.mkdir(parents=True, exist_ok=True)
        for path in packed:
            with gzip.open(path, "rb") as src, open(staging / path.name[: -len(".gz")], "wb") as dst:
                shutil.copyfileobj(src, dst)
        try:
            os.replace(staging, unpacked)
        except OSError:  # another process unpacked it first
            shutil.rmtree(staging, ignore_errors=True)
    return unpacked


def database_paths(profile: DeviceProfile, tuning_db: str | os.PathLike[str] | None) -> dict[str, Path]:
    """The databases compile reads, in precedence order: the flag's, the cache's, the shipped."""
    found: dict[str, Path] = {}
    if tuning_db is not None:
        path = Path(tuning_db)
        if not (path / RECORD_FILE).is_file():
            raise UserError(
                f"--tuning-db {path} holds no tuning records ({RECORD_FILE})",
                hint="pass the directory that edgekiln tune --tuning-db wrote",
            )
        found["flag"] = path
    if (cache_database(profile) / RECORD_FILE).is_file():
        found["cache"] = cache_database(profile)
    shipped = shipped_database(profile)
    if shipped is not None:
        found["shipped"] = shipped
    return found


# apache-tvm-ffi releases whose JSON serialiser crashes (SIGSEGV in tvm::ffi::ToJSONGraph) when
# MetaSchedule writes a workload or record to a JSON database; reading one works.
BROKEN_FFI_PREFIXES = ("0.1.15",)


def ffi_writes_databases() -> str | None:
    """None when the installed apache-tvm-ffi can write tuning databases, else why not."""
    from importlib import metadata

    try:
        version = metadata.version("apache-tvm-ffi")
    except metadata.PackageNotFoundError:
        return "apache-tvm-ffi is not installed"
    if version.startswith(BROKEN_FFI_PREFIXES):
        return f"TVM MetaSchedule crashes writing tuning records with apache-tvm-ffi {version}"
    return None


def require_database_writes() -> None:
    problem = ffi_writes_databases()
    if problem:
        raise DependencyError(problem, hint="pip install apache-tvm-ffi==0.1.14.post0 (the version edgekiln pins)")


def require_tuner() -> None:
    """MetaSchedule's search needs psutil and xgboost (its cost model) besides a tvm-ffi that
    writes databases; say so in one line instead of failing inside TVM."""
    import importlib.util

    require_database_writes()
    missing = [name for name in ("psutil", "xgboost", "cloudpickle") if importlib.util.find_spec(name) is None]
    if missing:
        raise DependencyError(
            f"tuning needs {', '.join(missing)}, which MetaSchedule's search uses",
            hint="pip install 'edgekiln[tune]'",
        )


def ms() -> Any:
    """TVM's MetaSchedule package (``tvm.s_tir.meta_schedule`` since TVM 0.22)."""
    try:
        from tvm.s_tir import meta_schedule
    except ImportError:  # older TVM releases kept it at the top level
        from tvm import meta_schedule  # type: ignore[no-redef]
    return meta_schedule


def open_database(path: Path, *, create: bool = False) -> Any:
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return ms().database.JSONDatabase(
        str(path / WORKLOAD_FILE), str(path / RECORD_FILE), allow_missing=create, module_equality="structural"
    )


def fuse(tvm: Any, mod: Any, target: Any, *, prepack: bool = True) -> Any:
    """The model after legalisation and fusion: the same passes as the CPU build pipeline
    runs before MetaScheduleApplyDatabase, so that tuned workloads match at compile time.

    prepack: mark each kernel's weights (the model's constants) as free to take another
    layout, so that a schedule may store them in the order its loops read them
    (MetaSchedule's RewriteLayout) and compile packs them once, ahead of time (prepack.py).
    With the same tuning budget, ResNet-18 took 1.9-2.1x ONNX Runtime's time on a 2-core
    Intel x86-64, against 2.3-2.5x before (benchmarks/results/tuned/README.md). The marks
    change the kernels' workloads: records tuned without them (``prepack=False``) match
    only unmarked kernels."""
    from tvm import relax
    from tvm.relax import pipeline

    with target:
        passes = pipeline.library_dispatch_passes(target) + pipeline.legalize_passes(target)
        if prepack:
            passes += [relax.transform.CanonicalizeBindings(), relax.transform.AttachAttrLayoutFreeBuffers()]
        return tvm.transform.Sequential(passes)(mod)


def extract_tasks(tvm: Any, mod: Any, target: Any, *, prepack: bool = True) -> list[Task]:
    """The model's tuning tasks, the ones carrying most FLOPs first."""
    from tvm.s_tir.analysis import estimate_tir_flops

    fused = fuse(tvm, mod, target, prepack=prepack)
    tasks = []
    for extracted in ms().relax_integration.extract_tasks(fused, target):
        func = extracted.dispatched[0]
        try:
            flops = float(estimate_tir_flops(func))
        except Exception:  # some functions (reshape, copies) have no countable FLOPs
            flops = 0.0
        tasks.append(Task(str(extracted.task_name), int(extracted.weight), flops, func))
    return sorted(tasks, key=lambda t: (-t.total_flops, t.name))


# Records a database may hold for one workload and target; more than any budget tunes.
_MAX_RECORDS_PER_WORKLOAD = 100_000


def cpu_key(target: Any) -> tuple[Any, ...]:
    """What a record must share with a build's target to apply to it: the code generator and
    the CPU it generates for. A schedule tuned for AVX-512 builds for AVX2 too, but its tiles
    were timed with other vectors; num-cores only sizes the thread pool."""
    data = json.loads(str(target)) if target is not None else {}
    return (data.get("kind"), data.get("mtriple"), data.get("mcpu"), tuple(sorted(data.get("mattr") or ())))


def task_records(database: Any, task: Task, target: Any, limit: int = _MAX_RECORDS_PER_WORKLOAD) -> list[Any]:
    """The task's records tuned for ``target``'s CPU, fastest first (at most ``limit``).
    MetaSchedule's lookup matches workloads alone, so one database may hold several CPUs'."""
    if not database.has_workload(task.mod):
        return []
    key = cpu_key(target)
    found = []
    for record in database.get_top_k(database.commit_workload(task.mod), _MAX_RECORDS_PER_WORKLOAD):
        if cpu_key(record.target) == key:
            found.append(record)
            if len(found) >= limit:
                break
    return found


def best_record(database: Any, task: Task, target: Any) -> Any | None:
    """The fastest record for the task's workload tuned for ``target``'s CPU, or None."""
    top = task_records(database, task, target, 1)
    return top[0] if top else None


def run_ms(record: Any) -> float | None:
    secs = [float(s) for s in (record.run_secs or [])]
    return round(1e3 * sum(secs) / len(secs), 4) if secs else None


def coverage_of(
    tasks: list[Task], databases: dict[str, Any], paths: dict[str, Path], target: Any
) -> tuple[Coverage, dict]:
    """The coverage of ``tasks`` by ``databases`` (in precedence order) and the chosen
    (source, record) per task name: the best record for ``target``'s CPU of the first
    database whose record replays on the task."""
    chosen = {}
    for task in tasks:
        for source, database in databases.items():
            record = best_record(database, task, target)
            if record is not None and _replays(task, record):
                chosen[task.name] = (source, record)
                break
    return summarize(tasks, chosen, paths), chosen


def _replays(task: Task, record: Any) -> bool:
    """Whether the record's schedule trace applies to this task's function. Workloads match
    structurally, which ignores block names, but a trace finds blocks by name: the same
    kernel imported from another model (lv125_red against lv98_red) matches and cannot be
    scheduled by the trace. Replaying builds nothing; it takes milliseconds."""
    from tvm.s_tir.schedule import Schedule

    try:
        record.trace.apply_to_schedule(Schedule(task.mod), remove_postproc=False)
    except Exception:  # noqa: BLE001 - any failure: the record is not for this function
        return False
    return True


def summarize(tasks: list[Task], chosen: dict[str, tuple[str, Any]], paths: dict[str, Path]) -> Coverage:
    """The coverage of ``tasks`` by the records ``chosen`` per task name."""
    total = sum(t.total_flops for t in tasks) or 1.0
    tuned = tuple(
        TunedTask(t.name, t.total_flops / total, chosen[t.name][0], run_ms(chosen[t.name][1]))
        for t in tasks
        if t.name in chosen
    )
    # Summed from the tuned tasks' FLOPs, not their rounded shares: a sum of shares can come
    # out a hair above 1 (1.0000000000000004 for MobileNetV2), which the evidence rule refuses.
    share = min(1.0, sum(t.total_flops for t in tasks if t.name in chosen) / total)
    return Coverage(share, tuned, len(tasks), {s: describe_database(s, p) for s, p in paths.items()})


def describe_database(source: str, path: Path) -> str:
    """How the manifest names a database: the flag's path as the user gave it; the cache's and
    the shipped records' by where they sit under edgekiln's cache, not by the build machine's
    paths (a home directory has no place in an artifact, and the same records give the same
    manifest on every machine). The shipped folder's name carries the records' digest."""
    if source == "flag":
        return str(path)
    return f"edgekiln {source}: tuning/{'shipped/' if source == 'shipped' else ''}{path.name}"


def model_module(source: SourceModel, profile: DeviceProfile, progress: Progress) -> tuple[Any, Any, Any]:
    """tvm, the model as a Relax module prepared for a CPU, and the profile's target."""
    from edgekiln.compile.backends.tvm import importer
    from edgekiln.compile.backends.tvm.backend import _import_tvm

    tvm, from_onnx = _import_tvm()
    if profile.is_cuda:
        raise UserError(f"edgekiln tune supports CPU profiles; {profile.id} is a CUDA profile")
    mod = importer.for_cpu_inference(tvm, importer.to_relax(source, from_onnx, progress))
    return tvm, mod, tvm.target.Target(profile.tvm_target())


def model_tasks(source: SourceModel, profile: DeviceProfile, progress: Progress) -> tuple[Any, Any, list[Task]]:
    """tvm, the profile's target and the model's tasks, as tuning sees them (prepacked)."""
    tvm, mod, target = model_module(source, profile, progress)
    with progress.step("extract tuning tasks"):
        tasks = extract_tasks(tvm, mod, target)
    return tvm, target, tasks


@dataclass(frozen=True)
class Lookup:
    """The records found for a model: which kernel variant they are for (``prepack``, see
    :func:`fuse`), its tasks, their coverage and the (source, record) chosen per task."""

    prepack: bool
    tasks: list[Task]
    coverage: Coverage
    chosen: dict[str, tuple[str, Any]]


def look_up(tvm: Any, mod: Any, target: Any, databases: dict[str, Any], paths: dict[str, Path]) -> Lookup:
    """The records for the model's prepacked kernels, which ``edgekiln tune`` tunes, or for
    its plain ones where those cover more of its FLOPs: records tuned before prepacking
    still apply, to the kernels they were tuned for."""
    best = None
    for prepack in (True, False):
        tasks = extract_tasks(tvm, mod, target, prepack=prepack)
        coverage, chosen = coverage_of(tasks, databases, paths, target)
        if best is None or coverage.share > best.coverage.share:
            best = Lookup(prepack, tasks, coverage, chosen)
        if best.coverage.share >= 1.0:
            break
    assert best is not None
    return best


def records_coverage(
    source: SourceModel, profile: DeviceProfile, *, tuning_db: str | os.PathLike[str] | None = None
) -> Coverage:
    """The share of the model's FLOPs that tuning records cover for the profile, and their
    sources. Cheap: converts the model and reads the databases, builds nothing (shipped
    records are checked against the installed TVM only when compile uses them)."""
    paths = database_paths(profile, tuning_db)
    tvm, mod, target = model_module(source, profile, NullProgress())
    return look_up(tvm, mod, target, _open_all(paths), paths).coverage


@contextlib.contextmanager
def tvm_threads(count: int) -> Iterator[None]:
    """Run TVM kernels (also in the tuner's worker processes) with ``count`` threads."""
    before = os.environ.get("TVM_NUM_THREADS")
    os.environ["TVM_NUM_THREADS"] = str(count)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TVM_NUM_THREADS", None)
        else:
            os.environ["TVM_NUM_THREADS"] = before


def default_threads() -> int:
    return int(os.environ.get("TVM_NUM_THREADS") or usable_cpus())


@dataclass(frozen=True)
class AppliedRecords:
    """What compile applies: an in-memory database with one record per tuned task (None
    when no record matches), whether they are for prepacked kernels, and the coverage the
    manifest records; with the tasks and the (source, record) chosen per task, so that a
    shipped record that fails to build can be left out (:meth:`without`)."""

    database: Any
    coverage: Coverage
    skipped: tuple[str, ...]
    prepack: bool = True
    tasks: tuple[Task, ...] = ()
    chosen: dict[str, tuple[str, Any]] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)

    def manifest_entry(self) -> dict[str, Any]:
        entry = self.coverage.to_dict()
        entry["prepacked_weights"] = self.prepack
        if self.skipped:
            entry["skipped_shipped"] = list(self.skipped)
        return entry

    def without(self, names: list[str]) -> AppliedRecords:
        """These records, less the named tasks' (shipped records this TVM cannot build)."""
        chosen = {name: pick for name, pick in self.chosen.items() if name not in names}
        return _applied(list(self.tasks), chosen, self.paths, (*self.skipped, *names), self.prepack)


def records_for_build(
    tvm: Any, mod: Any, target: Any, profile: DeviceProfile, tuning_db: str | None, progress: Progress
) -> AppliedRecords | None:
    """The best records for the model's tasks, the flag's database first, then the cache's,
    then the shipped records. None when there are no databases at all. Whether shipped
    records still build with the installed TVM is checked when the model is built with them
    (:func:`edgekiln.compile.backends.tvm.shipped_check.build_with_records`)."""
    paths = database_paths(profile, tuning_db)
    if not paths:
        return None
    with progress.step(f"look up tuning records ({', '.join(paths)})"):
        found = look_up(tvm, mod, target, _open_all(paths), paths)
    return _applied(found.tasks, found.chosen, paths, (), found.prepack)


def _applied(
    tasks: list[Task],
    chosen: dict[str, tuple[str, Any]],
    paths: dict[str, Path],
    skipped: tuple[str, ...],
    prepack: bool,
) -> AppliedRecords:
    database = ms().database.MemoryDatabase()
    by_name = {t.name: t for t in tasks}
    for name, (_, record) in chosen.items():
        workload = database.commit_workload(by_name[name].mod)
        database.commit_tuning_record(
            ms().database.TuningRecord(record.trace, workload, record.run_secs, record.target, record.args_info)
        )
    coverage = summarize(tasks, chosen, paths)
    return AppliedRecords(database if chosen else None, coverage, skipped, prepack, tuple(tasks), chosen, paths)


def _open_all(paths: dict[str, Path]) -> dict[str, Any]:
    opened = {source: _open_checked(source, path) for source, path in paths.items()}
    return {source: db for source, db in opened.items() if db is not None}


def _open_checked(source: str, path: Path) -> Any | None:
    """The database, or None (with a warning) for shipped records this TVM cannot read: the
    loader checks every trace against its workload, and one it rejects fails the lot."""
    try:
        return open_database(path)
    except Exception as exc:
        if source != "shipped":
            raise UserError(
                f"cannot read the tuning database {path}: {first_line(exc, last=True)}",
                hint="tune again into a new --tuning-db, or remove this one",
            ) from None
        warnings.warn(
            f"skipping the tuning records shipped in {path}: this TVM cannot read them ({first_line(exc, last=True)})",
            stacklevel=3,
        )
        return None


def apply_records(tvm: Any, mod: Any, target: Any, applied: AppliedRecords) -> Any:
    """``mod`` fused (as task extraction fused it) with the records applied; for prepacked
    kernels, each weight's layout rewrite is split into a function of its own and run on
    the constant weights here, so that they are packed once and not at every inference.
    Call it within ``target``, ``applied.database`` and a PassContext."""
    from tvm import relax

    from edgekiln.compile.backends.tvm import prepack

    mod = fuse(tvm, mod, target, prepack=applied.prepack)
    mod = relax.transform.MetaScheduleApplyDatabase()(mod)
    if applied.prepack:
        mod = tvm.transform.Sequential([relax.transform.SplitLayoutRewritePreproc(), prepack.fold_prepacks(tvm)])(mod)
    return mod


def compile_with_records(tvm: Any, mod: Any, target: Any, applied: AppliedRecords) -> Any:
    """Build ``mod`` with the records applied (:func:`apply_records`), lowered as TVM's CPU
    pipeline lowers a model."""
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu  # CPU only: CUDA builds elsewhere

    @tvm.transform.module_pass(opt_level=3)
    def records_pipeline(mod: Any, _ctx: Any) -> Any:
        lower = cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target)
        return tvm.transform.Sequential(lower)(apply_records(tvm, mod, target, applied))

    with target, applied.database, tvm.transform.PassContext(opt_level=3):
        return relax.build(mod, target=target, relax_pipeline=records_pipeline)


def merge_databases(dest: Path, sources: list[Path], *, keep: int = 1) -> dict[str, int]:
    """Merge ``sources`` into ``dest`` (which may hold records already): one entry per
    workload (compared structurally), its ``keep`` fastest records for each CPU that has
    some (see :func:`cpu_key`). Returns counts."""
    if keep < 1:
        raise UserError(f"--keep must be 1 or more, not {keep}")
    require_database_writes()
    grouped: dict[tuple[int, tuple[Any, ...]], list[Any]] = {}
    read = 0
    for path in [dest, *sources]:
        if not (path / RECORD_FILE).is_file():
            if path != dest:
                raise UserError(f"{path} holds no tuning records ({RECORD_FILE})")
            continue
        for record in open_database(path).get_all_tuning_records():
            read += 1
            if run_ms(record) is not None:
                key = (structural_hash(record.workload.mod), cpu_key(record.target))
                grouped.setdefault(key, []).append(record)
    staging = dest.with_name(dest.name + ".merging")
    shutil.rmtree(staging, ignore_errors=True)
    merged = open_database(staging, create=True)
    written = 0
    for records in grouped.values():
        workload = merged.commit_workload(records[0].workload.mod)
        for record in sorted(records, key=lambda r: run_ms(r) or float("inf"))[:keep]:
            merged.commit_tuning_record(
                ms().database.TuningRecord(record.trace, workload, record.run_secs, record.target, record.args_info)
            )
            written += 1
    dest.mkdir(parents=True, exist_ok=True)
    for name in (WORKLOAD_FILE, RECORD_FILE):
        os.replace(staging / name, dest / name)
    shutil.rmtree(staging, ignore_errors=True)
    workloads = len({workload for workload, _ in grouped})
    return {"records_read": read, "workloads": workloads, "records_written": written}


def structural_hash(mod: Any) -> int:
    """The hash under which MetaSchedule's structural comparison keeps a workload."""
    try:
        from tvm_ffi import structural_hash as hash_of
    except ImportError:  # TVM before tvm-ffi kept it in tvm.ir
        from tvm.ir import structural_hash as hash_of  # type: ignore[no-redef]
    return int(hash_of(mod))
