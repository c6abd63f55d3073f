"""The benchmark harness: an artifact and its baselines, interleaved, in separate processes.

For each artifact:

1. find the baselines' model (:mod:`edgekiln.bench.baselines`) and start one worker process
   per subject — the artifact through the device runtime, each baseline in its runtime —
   through a runner (:mod:`edgekiln.execute.runners`: this host, an emulated board, an agent);
2. load each (load time), run each once (first-inference time), then warm up;
3. compare outputs on the same inputs (max abs difference, top-1 agreement);
4. measure in balanced pairs: the candidate, then each baseline, again and again
   (A B A B …; :mod:`edgekiln.execute.timing`);
5. stop the workers and read each one's peak RSS from the kernel (``wait4``).

Scenarios (MLPerf's names): **single-stream** sends one query of the model's batch at a
time and reports latency percentiles; **offline** sends queries of ``batch`` samples (several
calls of the model when its batch is smaller) and reports throughput as well. A query's
time is host arrays in → host arrays out; on a GPU that includes the copies and a device
synchronisation, so no kernel is still running when the clock stops.

Inputs and the comparison of outputs are :mod:`edgekiln.execute.inputs`, shared with
compile's validation. Statistics are in :mod:`edgekiln.execute.statistics`; the result type is
:class:`edgekiln.bench.results.BenchReport`.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from edgekiln import __version__
from edgekiln.artifact.manifest import Manifest
from edgekiln.bench import baselines as baseline_registry
from edgekiln.bench.results import ArtifactBench, BenchReport, Comparison, Correctness, SubjectResult
from edgekiln.errors import CompatibilityError, EdgekilnError, UserError
from edgekiln.execute import timing
from edgekiln.execute.host import machine_description
from edgekiln.execute.inputs import Samples, compare_outputs, make_inputs
from edgekiln.execute.progress import NullProgress
from edgekiln.execute.runners import Connect, LocalRunner, Runner, runner_for
from edgekiln.execute.statistics import LatencyStats, RatioStats

SCENARIOS = ("single-stream", "offline")
DEVICES = ("cpu", "cuda")
# Without --runs or --duration: measure for this long, at least MIN_PAIRS pairs. Untuned
# TVM runs ResNet-18 in 1-2 s on a small CI machine, so this stays CI-sized.
DEFAULT_DURATION_S = 10.0
MIN_PAIRS = timing.MIN_PAIRS
# Offline queries without --batch: this many samples.
DEFAULT_OFFLINE_SAMPLES = 8
# Baselines whose outputs are the fp32 reference (torch-compile runs fp16 on GPUs).
_REFERENCES = ("onnxruntime", "openvino", "torch")


@dataclass(frozen=True)
class BenchOptions:
    """Typed options of one benchmark run (validated on construction)."""

    scenario: str = "single-stream"
    runs: int | None = None  # measured pairs; exclusive with duration_s
    duration_s: float | None = None
    warmup: int = 1
    batch: int | None = None  # samples per query (offline); default: the model's batch, or 8 offline
    baselines: tuple[str, ...] = ("onnxruntime",)
    baseline_model: str | None = None
    device: str | None = None  # None: "cuda" for CUDA artifacts, else "cpu"
    agent: str | None = None  # address of a device agent to run the candidate on
    samples: int = 3  # distinct inputs, cycled through by every query and compared for correctness
    seed: int = 0
    threads: int | None = None  # CPU threads of every runtime alike; None: each runtime's default

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise UserError(f"unknown scenario {self.scenario!r}", hint=f"choose {' or '.join(SCENARIOS)}")
        if self.runs is not None and self.duration_s is not None:
            raise UserError("give --runs or --duration, not both")
        if self.runs is not None and self.runs < 1:
            raise UserError(f"--runs must be at least 1, got {self.runs}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise UserError(f"--duration must be positive, got {self.duration_s}")
        if self.warmup < 0:
            raise UserError(f"--warmup must be >= 0, got {self.warmup}")
        if self.batch is not None and self.batch < 1:
            raise UserError(f"--batch must be at least 1, got {self.batch}")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads must be at least 1, got {self.threads}")
        if self.samples < 1:
            raise UserError(f"samples must be at least 1, got {self.samples}")
        if self.device is not None and self.device not in DEVICES:
            raise UserError(f"unknown device {self.device!r}", hint=f"choose {' or '.join(DEVICES)}")
        names = tuple(dict.fromkeys(self.baselines))
        for name in names:
            if name not in baseline_registry.CHOICES:
                raise UserError(
                    f"unknown baseline {name!r}", hint=f"choose from {', '.join(baseline_registry.CHOICES)}"
                )
        if baseline_registry.NONE in names and len(names) > 1:
            raise UserError("--baseline none cannot be combined with other baselines")
        object.__setattr__(self, "baselines", tuple(n for n in names if n != baseline_registry.NONE))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["baselines"] = list(self.baselines) or [baseline_registry.NONE]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BenchOptions:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown bench options {unknown}; valid: {sorted(known)}")
        values = dict(data)
        if "baselines" in values:
            values["baselines"] = tuple(values["baselines"])
        return cls(**values)


# -- helpers -------------------------------------------------------------------------------
def read_manifest(path: Path) -> Manifest:
    """The manifest of a packed artifact or of its extracted directory."""
    if path.is_dir():
        manifest_file = path / "manifest.json"
        if not manifest_file.is_file():
            raise UserError(f"{path} holds no manifest.json; give an artifact .tar.gz or its extracted directory")
        return Manifest.from_json(manifest_file.read_bytes())
    if not path.is_file():
        raise UserError(f"artifact {path} does not exist")
    from edgekiln.artifact.package import read_manifest as read_packed

    return read_packed(path)


def precision_of(manifest: Manifest) -> str:
    """fp32, fp16 or int8, from the manifest's quantization record, the backend's precision
    option (fp16 tvm artifacts keep fp32 inputs) or its input dtypes."""
    quantization = getattr(manifest, "quantization", None)
    if quantization:
        return str(quantization.get("mode", "int8"))
    if manifest.backend_options.get("precision") == "fp16":
        return "fp16"
    dtypes = {t.dtype for t in manifest.inputs}
    if dtypes & {"int8", "uint8"}:
        return "int8"
    return "fp16" if "float16" in dtypes else "fp32"


def model_batch(manifest: Manifest) -> int:
    """The batch dimension the artifact was compiled for (1 for a rank-0 input)."""
    shape = manifest.inputs[0].shape if manifest.inputs else ()
    return int(shape[0]) if shape else 1


def make_samples(manifest: Manifest, count: int, seed: int) -> Samples:
    """``count`` input samples: the zoo's sample image first (models with preprocessing),
    then seeded random tensors (:func:`edgekiln.execute.inputs.make_inputs`)."""
    from edgekiln import zoo

    return make_inputs(manifest.inputs, count, seed, manifest.preprocessing, zoo.sample_image_path())


def _profile(manifest: Manifest) -> Any:
    from edgekiln.device_profiles import get_profile

    try:
        return get_profile(manifest.profile)
    except UserError:
        return None  # a user's own profile file: no peak figures, the runtime arch still tells where to run


def _peak(profile: Any, device: str) -> tuple[float | None, str | None]:
    if profile is None:
        return None, None
    if device == "cuda" and profile.accelerator is not None:
        return float(profile.accelerator.peak_gflops_fp32), f"{profile.id} accelerator, peak FP32"
    return float(profile.cpu.peak_gflops_fp32), f"{profile.id} CPU, peak FP32 (the profile's reference machine)"


def _mb(kb: int | None) -> float | None:
    return None if kb is None else round(kb / 1024.0, 1)


# -- the run -----------------------------------------------------------------------------
@dataclass
class _Subject(timing.Timed):
    role: str = "candidate"
    spec: dict[str, Any] = field(default_factory=dict)
    model_bytes: int | None = None


def bench(
    artifacts: Sequence[str | os.PathLike[str]],
    options: BenchOptions | None = None,
    progress: Any = None,
    command: str | None = None,
    connect: Connect | None = None,
) -> BenchReport:
    """Benchmark each artifact against the options' baselines; one report for all.

    ``connect`` is the agent client that ``options.agent`` needs (the command line gives
    ``edgekiln.agents.bench_client.connect``)."""
    options = options or BenchOptions()
    progress = progress or NullProgress()
    if not artifacts:
        raise UserError("no artifact to benchmark")
    host = machine_description()
    host["loadavg_before"] = [round(x, 2) for x in os.getloadavg()]
    results = [bench_artifact(Path(a), options, progress, connect=connect) for a in artifacts]
    host["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return BenchReport(
        created_utc=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        edgekiln_version=__version__,
        host=host,
        options=options.to_dict(),
        results=tuple(results),
        command=command,
    )


@dataclass(frozen=True)
class _Plan:
    """What one artifact's benchmark runs: where, on which device, in which batches."""

    manifest: Manifest
    profile: Any
    device: str
    runner: Runner
    baselines: list[str]
    model_batch: int
    batch: int
    calls: int


def bench_artifact(
    path: Path,
    options: BenchOptions,
    progress: Any = None,
    runner: Runner | None = None,
    baseline_runner: Runner | None = None,
    connect: Connect | None = None,
) -> ArtifactBench:
    """Benchmark one artifact (see the module's docstring for the steps)."""
    progress = progress or NullProgress()
    started = time.perf_counter()
    plan = _plan(path, options, runner, connect, progress)
    baseline_runner = baseline_runner or LocalRunner()
    samples = make_samples(plan.manifest, options.samples, options.seed)
    work = Path(tempfile.mkdtemp(prefix="edgekiln-bench-"))
    subjects: list[_Subject] = []
    failed: dict[str, str] = {}
    source = None
    try:
        if plan.baselines:
            with progress.step(f"find the source model of {plan.manifest.model.name} for the baselines"):
                source = baseline_registry.source_model(plan.manifest, work, options.baseline_model)
        for s in _subjects(path, plan, options, source):
            if not _load(s, plan.runner if s.role == "candidate" else baseline_runner, samples, progress, failed):
                continue
            subjects.append(s)
        meaningful = plan.runner.timings_meaningful
        if meaningful:
            with progress.step("first inference and warm-up"):
                timing.warm_up(subjects, options.warmup, plan.calls)
        correctness, correctness_note = _correctness(subjects, plan.baselines, progress)
        pairs = 0
        if meaningful:
            pairs = timing.measure_pairs(
                subjects,
                plan.calls,
                runs=options.runs,
                duration_s=options.duration_s or DEFAULT_DURATION_S,
                start=plan.calls * (1 + options.warmup),
                label=plan.manifest.model.name,
                progress=progress,
            )
        with progress.step("stop the workers"):
            exits = {s.name: s.worker.close() for s in subjects}
    except BaseException:
        for s in subjects:
            s.worker.abort()
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _report(
        path,
        plan,
        options,
        subjects,
        exits,
        source,
        pairs,
        correctness,
        correctness_note,
        round(time.perf_counter() - started, 2),
        failed,
    )


def _load(s: _Subject, where: Runner, samples: Samples, progress: Any, failed: dict[str, str]) -> bool:
    """Start ``s``'s worker and load its model; False (with why in ``failed``) when a baseline
    cannot run, so that the artifact and the other baselines are still measured. The
    candidate's failure is the run's."""
    try:
        with progress.step(f"load {s.name} ({where.describe()})"):
            s.worker = where.start(s.name)
            try:
                s.worker.load(s.spec, samples)
            except BaseException:
                s.worker.abort()
                raise
    except EdgekilnError as exc:
        if s.role == "candidate":
            raise
        failed[s.name] = exc.one_line()
        return False
    return True


def _plan(path: Path, options: BenchOptions, runner: Runner | None, connect: Connect | None, progress: Any) -> _Plan:
    manifest = read_manifest(path)
    profile = _profile(manifest)
    device = options.device or ("cuda" if manifest.runtime.cuda_arch else "cpu")
    if runner is None:
        runner = runner_for(profile, device, agent=options.agent, connect=connect, progress=progress)
    if runner.kind == "local":
        found = _host_problems(manifest, device)
        if found:
            raise CompatibilityError(
                f"cannot benchmark the {manifest.profile} artifact {path.name} here: " + "; ".join(found),
                hint="benchmark it on the device, or on a host that has it",
            )
    if runner.kind == "agent" and options.baselines:
        raise UserError("baselines cannot run through the agent yet", hint="use --baseline none with --agent")
    mbatch = model_batch(manifest)
    if options.scenario == "offline":
        batch = options.batch or max(mbatch, DEFAULT_OFFLINE_SAMPLES)
    else:
        batch = options.batch or mbatch
        if batch != mbatch:
            raise UserError(
                f"single-stream queries are one call of the model's batch ({mbatch}); "
                f"--batch {batch} needs --scenario offline or an artifact compiled for that batch"
            )
    if batch % mbatch:
        raise UserError(f"--batch {batch} is not a multiple of the artifact's batch {mbatch}")
    # The emulated board only proves correctness; the reference still runs on this host.
    wanted = list(options.baselines)
    if not runner.timings_meaningful:
        # Nothing is timed, so only the reference runs: the first fp32 baseline, or ONNX Runtime.
        wanted = [next((n for n in wanted if n in _REFERENCES), "onnxruntime")]
    for name in wanted:
        baseline_registry.check(name, device)
    return _Plan(manifest, profile, device, runner, wanted, mbatch, batch, batch // mbatch)


def _subjects(path: Path, plan: _Plan, options: BenchOptions, source: Any) -> list[_Subject]:
    """The candidate first, then the baselines, each with its worker subject (no worker yet)."""
    backend = plan.manifest.backend
    # Baselines keep their names (the gate's keys); an onnxruntime artifact benchmarked
    # against ONNX Runtime on its source model is "onnxruntime-artifact".
    name = backend if backend not in plan.baselines else f"{backend}-artifact"
    found = [
        _Subject(
            name,
            None,
            role="candidate",
            model_bytes=_size(path),  # type: ignore[arg-type]
            spec={"kind": "artifact", "path": str(path.resolve()), "device": plan.device},
        )
    ]
    found += [
        _Subject(
            b,
            None,
            role="baseline",
            model_bytes=source.size_bytes,  # type: ignore[arg-type]
            spec=baseline_registry.subject(b, source.path, plan.device),
        )
        for b in plan.baselines
    ]
    if options.threads:
        for s in found:
            s.spec["threads"] = options.threads
    return found


def _report(
    path: Path,
    plan: _Plan,
    options: BenchOptions,
    subjects: list[_Subject],
    exits: dict[str, Any],
    source: Any,
    pairs: int,
    correctness: Correctness | None,
    correctness_note: str | None,
    wall_s: float,
    baselines_failed: dict[str, str] | None = None,
) -> ArtifactBench:
    manifest, runner = plan.manifest, plan.runner
    macs = manifest.model.macs if manifest.model.macs else (source.macs if source else None)
    flops_per_sample = 2.0 * macs / plan.model_batch if macs else None
    peak, peak_source = _peak(plan.profile, plan.device)
    extra: dict[str, Any] = {"model_batch": plan.model_batch, "interleaving": " ".join(s.name for s in subjects) + " …"}
    results = [_subject_result(s, exits[s.name], runner, plan.batch, flops_per_sample, peak, extra) for s in subjects]
    candidate = subjects[0]
    comparisons = tuple(
        Comparison(baseline=s.name, ratio=RatioStats.from_pairs(candidate.pairs, s.pairs))
        for s in subjects[1:]
        if runner.timings_meaningful and candidate.pairs and s.pairs
    )
    return ArtifactBench(
        model=manifest.model.name,
        profile=manifest.profile,
        backend=manifest.backend,
        precision=precision_of(manifest),
        device=plan.device,
        scenario=options.scenario,
        batch=plan.batch,
        calls_per_query=plan.calls,
        artifact=str(path),
        artifact_bytes=_size(path) or 0,
        runner=runner.kind,
        runner_description=runner.describe(),
        timings_meaningful=runner.timings_meaningful,
        timings_note=runner.reason,
        macs=macs,
        flops_per_sample=flops_per_sample,
        peak_gflops=peak,
        peak_source=peak_source,
        pairs=pairs,
        warmup=options.warmup,
        subjects=tuple(results),
        comparisons=comparisons,
        correctness=correctness,
        correctness_note=correctness_note,
        baseline_source=f"{source.origin} (matched by {source.check})" if source else None,
        wall_s=wall_s,
        extra=extra,
        baselines_failed=dict(baselines_failed or {}),
    )


def _subject_result(
    s: _Subject,
    exit_info: Any,
    runner: Runner,
    batch: int,
    flops_per_sample: float | None,
    peak: float | None,
    extra: dict[str, Any],
) -> SubjectResult:
    latency = LatencyStats.from_seconds(s.times) if s.times else None
    throughput = achieved = share = None
    if latency is not None:
        throughput = batch * len(s.times) / math.fsum(s.times)
        if flops_per_sample:
            achieved = flops_per_sample * batch / (latency.p50_ms / 1e3) / 1e9
            share = achieved / peak if peak else None
    info = s.worker.load_info
    # qemu's own memory is not the board's: no RSS for an emulated candidate.
    rss_known = not (runner.kind == "emulated" and s.role == "candidate")
    timed = runner.timings_meaningful
    if not timed and s.role == "candidate":
        extra["emulated_load_s"] = round(info.load_s, 2) if info else None
    return SubjectResult(
        name=s.name,
        role=s.role,
        version=info.version if info else "",
        load_s=round(info.load_s, 4) if info and timed else None,
        first_inference_ms=round(s.first_s * 1e3, 3) if s.first_s is not None and timed else None,
        latency=latency,
        throughput_samples_per_s=throughput,
        achieved_gflops=achieved,
        peak_share=share,
        peak_rss_mb=_mb(exit_info.peak_rss_kb) if rss_known else None,
        rss_before_load_mb=_mb(info.rss_before_load_kb) if info else None,
        model_bytes=s.model_bytes,
        times_ms=tuple(round(t * 1e3, 4) for t in (s.times or ())),
        pair_ms=tuple(round(t * 1e3, 4) for t in (s.pairs or ())),
        queries_per_pair=s.per_pair,
    )


def _host_problems(manifest: Manifest, device: str) -> list[str]:
    from edgekiln.runtime import compat

    return compat.problems(manifest, device)


def _size(path: Path) -> int | None:
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return None


def _correctness(subjects: list[_Subject], wanted: list[str], progress: Any) -> tuple[Correctness | None, str | None]:
    # The fp32 baselines are references; torch-compile runs fp16 on GPUs.
    reference = next((s for s in subjects[1:] if s.name in _REFERENCES), None)
    if reference is None:
        return (
            None,
            "no reference runtime in this run (--baseline none)"
            if not wanted
            else "no fp32 reference among the baselines",
        )
    with progress.step(f"compare outputs with {reference.name}"):
        got = subjects[0].worker.outputs()
        ref = reference.worker.outputs()
        diff = compare_outputs(ref, got)
    info = reference.worker.load_info
    return Correctness(
        reference=info.version if info else reference.name,
        samples=len(ref),
        max_abs_diff=diff.worst,
        top1_agreement=diff.top1_agreement,
    ), None
