"""The benchmark harness: an artifact and its baselines, interleaved, in separate processes.

For each artifact:

1. find the baselines' model (:mod:`edgekiln.bench.baselines`) and start one worker process
   per subject — the artifact through the device runtime, each baseline in its runtime —
   through a runner (:mod:`edgekiln.bench.runners`: this host, an emulated board, an agent);
2. load each (load time), run each once (first-inference time), then warm up;
3. compare outputs on the same inputs (max abs difference, top-1 agreement);
4. measure in pairs: the candidate, then each baseline, again and again (A B A B …), so that
   whatever else the machine does lands on both sides of a pair and the per-pair ratio stays
   trustworthy when absolute times do not. The halves of a pair are balanced in wall time: a
   runtime K times faster than the slowest runs about K queries in its half (up to
   ``BALANCE_S`` of them, at most ``MAX_QUERIES_PER_PAIR``) and the pair takes their median,
   so a 17 ms query is not weighed against a 2 s one on a single draw of the machine's load;
5. stop the workers and read each one's peak RSS from the kernel (``wait4``).

Scenarios (MLPerf's names): **single-stream** sends one query of the model's batch at a
time and reports latency percentiles; **offline** sends queries of ``batch`` samples (several
calls of the model when its batch is smaller) and reports throughput as well. A query's
time is host arrays in → host arrays out; on a GPU that includes the copies and a device
synchronisation, so no kernel is still running when the clock stops.

Statistics are in :mod:`edgekiln.bench.statistics`; the result type is
:class:`edgekiln.bench.results.BenchReport`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from edgekiln import __version__
from edgekiln.artifact.manifest import Manifest, TensorSpec
from edgekiln.bench import baselines as baseline_registry
from edgekiln.bench.results import ArtifactBench, BenchReport, Comparison, Correctness, SubjectResult
from edgekiln.bench.runners import LocalRunner, Runner, Worker, runner_for
from edgekiln.bench.statistics import LatencyStats, RatioStats
from edgekiln.errors import CompatibilityError, UserError

SCENARIOS = ("single-stream", "offline")
DEVICES = ("cpu", "cuda")
# Without --runs or --duration: measure for this long, at least MIN_PAIRS pairs. Untuned
# TVM runs ResNet-18 in 1-2 s on a small CI machine, so this stays CI-sized.
DEFAULT_DURATION_S = 10.0
MIN_PAIRS = 3
MAX_PAIRS = 1000
# Balanced pairs: each half of a pair lasts about min(BALANCE_S, the slowest query).
BALANCE_S = 0.2
MAX_QUERIES_PER_PAIR = 50
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
                raise UserError(f"unknown baseline {name!r}", hint=f"choose from {', '.join(baseline_registry.CHOICES)}")
        if baseline_registry.NONE in names and len(names) > 1:
            raise UserError("--baseline none cannot be combined with other baselines")
        object.__setattr__(self, "baselines", tuple(n for n in names if n != baseline_registry.NONE))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["baselines"] = list(self.baselines) or [baseline_registry.NONE]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BenchOptions":
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown bench options {unknown}; valid: {sorted(known)}")
        values = dict(data)
        if "baselines" in values:
            values["baselines"] = tuple(values["baselines"])
        return cls(**values)


# -- progress ---------------------------------------------------------------------------
class BenchProgress:
    """Steps and measured pairs on stderr: a line per step, and while measuring a line at
    most every few seconds (a CI log stays short; a terminal sees it move)."""

    def __init__(self, stream: Any = None, interval_s: float = 5.0) -> None:
        self._stream = stream or sys.stderr
        self._interval = interval_s
        self._last = 0.0

    @contextlib.contextmanager
    def step(self, description: str) -> Iterator[None]:
        start = time.perf_counter()
        print(f"  …     {description}", file=self._stream, flush=True)
        yield
        print(f"  done  {description} ({time.perf_counter() - start:.1f} s)", file=self._stream, flush=True)

    def advance(self, done: int, total: int | None, note: str) -> None:
        now = time.monotonic()
        if done == 1 or (total is not None and done == total) or now - self._last >= self._interval:
            self._last = now
            of = f"/{total}" if total else ""
            print(f"        pair {done}{of}  {note}", file=self._stream, flush=True)


class NullBenchProgress:
    @contextlib.contextmanager
    def step(self, description: str) -> Iterator[None]:
        yield

    def advance(self, done: int, total: int | None, note: str) -> None:
        pass


# -- helpers -------------------------------------------------------------------------------
def read_manifest(path: Path) -> Manifest:
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
    """fp32, fp16 or int8, from the manifest's quantization record or its input dtypes."""
    quantization = getattr(manifest, "quantization", None)
    if quantization:
        return str(quantization.get("mode", "int8"))
    dtypes = {t.dtype for t in manifest.inputs}
    if dtypes & {"int8", "uint8"}:
        return "int8"
    return "fp16" if "float16" in dtypes else "fp32"


def model_batch(manifest: Manifest) -> int:
    """The batch dimension the artifact was compiled for (1 for a rank-0 input)."""
    shape = manifest.inputs[0].shape if manifest.inputs else ()
    return int(shape[0]) if shape else 1


def make_samples(manifest: Manifest, count: int, seed: int) -> list[list[np.ndarray]]:
    """``count`` input samples: the zoo's sample image first (models with preprocessing),
    then seeded random normal tensors."""
    rng = np.random.default_rng(seed)
    samples: list[list[np.ndarray]] = []
    if manifest.preprocessing and len(manifest.inputs) == 1:
        try:
            from importlib.resources import as_file

            from edgekiln import zoo
            from edgekiln.runtime.preprocess import preprocess

            spec = manifest.inputs[0]
            single = (1, *spec.shape[1:])
            with as_file(zoo.sample_image_path()) as image:
                tensor = preprocess(image, manifest.preprocessing, single)
            samples.append([np.ascontiguousarray(np.repeat(tensor, spec.shape[0], axis=0)).astype(spec.dtype)])
        except Exception:  # noqa: BLE001 - a missing image or Pillow only loses one sample
            samples = []
    while len(samples) < count:
        samples.append([_random(spec, rng) for spec in manifest.inputs])
    return samples[:count]


def _random(spec: TensorSpec, rng: np.random.Generator) -> np.ndarray:
    if spec.dtype.startswith("float"):
        return rng.standard_normal(spec.shape).astype(spec.dtype)
    info = np.iinfo(spec.dtype)
    return rng.integers(max(info.min, -128), min(info.max, 127), size=spec.shape, dtype=spec.dtype)


def compare_outputs(reference: Sequence[Sequence[np.ndarray]], candidate: Sequence[Sequence[np.ndarray]]
                    ) -> tuple[float, float]:
    """Max abs difference over every output, and top-1 agreement of the first output (per row)."""
    worst = 0.0
    agree = total = 0
    for ref, got in zip(reference, candidate):
        for r, g in zip(ref, got):
            if r.shape != g.shape:
                raise CompatibilityError(f"outputs differ in shape: {list(g.shape)} against {list(r.shape)}")
            if r.size:
                diff = float(np.max(np.abs(r.astype(np.float64) - g.astype(np.float64))))
                worst = max(worst, diff if math.isfinite(diff) else math.inf)
        r0, g0 = ref[0], got[0]
        rows = r0.shape[0] if r0.ndim >= 2 else 1
        agree += int(np.sum(np.argmax(r0.reshape(rows, -1), axis=1) == np.argmax(g0.reshape(rows, -1), axis=1)))
        total += rows
    return worst, (agree / total if total else 0.0)


def host_info() -> dict[str, Any]:
    """The machine a report was measured on (load averages are filled in by :func:`bench`)."""
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": os.cpu_count(), "arch": platform.machine(),
            "python": platform.python_version(), "system": f"{platform.system()} {platform.release()}"}


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
class _Subject:
    name: str
    role: str
    spec: dict[str, Any]
    worker: Worker
    model_bytes: int | None
    first_s: float | None = None
    warm: list[float] | None = None
    times: list[float] | None = None  # every measured query
    pairs: list[float] | None = None  # per pair: the median of its queries in that pair
    per_pair: int = 1


def bench(artifacts: Sequence[str | os.PathLike[str]], options: BenchOptions | None = None,
          progress: Any = None, command: str | None = None) -> BenchReport:
    """Benchmark each artifact against the options' baselines; one report for all."""
    options = options or BenchOptions()
    progress = progress or NullBenchProgress()
    if not artifacts:
        raise UserError("no artifact to benchmark")
    host = host_info()
    host["loadavg_before"] = [round(x, 2) for x in os.getloadavg()]
    results = [bench_artifact(Path(a), options, progress) for a in artifacts]
    host["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return BenchReport(
        created_utc=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        edgekiln_version=__version__,
        host=host,
        options=options.to_dict(),
        results=tuple(results),
        command=command,
    )


def bench_artifact(path: Path, options: BenchOptions, progress: Any = None,
                   runner: Runner | None = None, baseline_runner: Runner | None = None) -> ArtifactBench:
    """Benchmark one artifact (see the module's docstring for the steps)."""
    progress = progress or NullBenchProgress()
    started = time.perf_counter()
    manifest = read_manifest(path)
    profile = _profile(manifest)
    device = options.device or ("cuda" if manifest.runtime.cuda_arch else "cpu")
    if runner is None:
        if profile is not None:
            runner = runner_for(profile, device, agent=options.agent, progress=progress)
        elif options.agent:
            runner = runner_for(None, device, agent=options.agent)
        else:
            runner = LocalRunner()
    if runner.kind == "local":
        found = _host_problems(manifest, device)
        if found:
            raise CompatibilityError(f"cannot benchmark the {manifest.profile} artifact {path.name} here: "
                                     + "; ".join(found), hint="benchmark it on the device, or on a host that has it")
    if runner.kind == "agent" and options.baselines:
        raise UserError("baselines cannot run through the agent yet", hint="use --baseline none with --agent")
    baseline_runner = baseline_runner or LocalRunner()

    mbatch = model_batch(manifest)
    if options.scenario == "offline":
        batch = options.batch or max(mbatch, DEFAULT_OFFLINE_SAMPLES)
    else:
        batch = options.batch or mbatch
        if batch != mbatch:
            raise UserError(f"single-stream queries are one call of the model's batch ({mbatch}); "
                            f"--batch {batch} needs --scenario offline or an artifact compiled for that batch")
    if batch % mbatch:
        raise UserError(f"--batch {batch} is not a multiple of the artifact's batch {mbatch}")
    calls = batch // mbatch

    # The emulated board only proves correctness; the reference still runs on this host.
    wanted = list(options.baselines)
    if not runner.timings_meaningful:
        # Nothing is timed, so only the reference runs: the first fp32 baseline, or ONNX Runtime.
        wanted = [next((n for n in wanted if n in _REFERENCES), "onnxruntime")]
    for name in wanted:
        baseline_registry.check(name, device)
    samples = make_samples(manifest, options.samples, options.seed)

    work = Path(tempfile.mkdtemp(prefix="edgekiln-bench-"))
    subjects: list[_Subject] = []
    source = None
    try:
        if wanted:
            with progress.step(f"find the source model of {manifest.model.name} for the baselines"):
                source = baseline_registry.source_model(manifest, work, options.baseline_model)
        candidate_spec: dict[str, Any] = {"kind": "artifact", "path": str(path.resolve()), "device": device}
        # Baselines keep their names (the gate's keys); an onnxruntime artifact benchmarked
        # against ONNX Runtime on its source model is "onnxruntime-artifact".
        name = manifest.backend if manifest.backend not in wanted else f"{manifest.backend}-artifact"
        specs = [(name, "candidate", candidate_spec, runner, _size(path))]
        specs += [(name, "baseline", baseline_registry.subject(name, source.path, device), baseline_runner,
                   source.size_bytes) for name in wanted]
        if options.threads:
            for _, _, spec, _, _ in specs:
                spec["threads"] = options.threads
        for name, role, spec, where, size in specs:
            with progress.step(f"load {name} ({where.describe()})"):
                worker = where.start(name)
                subjects.append(_Subject(name, role, spec, worker, size))
                worker.load(spec, samples)
        if runner.timings_meaningful:
            with progress.step("first inference and warm-up"):
                for s in subjects:
                    s.first_s = s.worker.run(1, calls)[0]
                    s.warm = s.worker.run(options.warmup, calls, start=calls) if options.warmup else []
        correctness, correctness_note = _correctness(subjects, wanted, progress)
        pairs = 0
        if runner.timings_meaningful:
            pairs = _measure(subjects, options, calls, manifest.model.name, progress)
        exits = {}
        with progress.step("stop the workers"):
            for s in subjects:
                exits[s.name] = s.worker.close()
    except BaseException:
        for s in subjects:
            s.worker.abort()
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)

    macs = manifest.model.macs if manifest.model.macs else (source.macs if source else None)
    flops_per_sample = 2.0 * macs / mbatch if macs else None
    peak, peak_source = _peak(profile, device)
    results = []
    extra: dict[str, Any] = {"model_batch": mbatch, "interleaving": " ".join(s.name for s in subjects) + " …"}
    for s in subjects:
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
        results.append(SubjectResult(
            name=s.name,
            role=s.role,
            version=info.version if info else "",
            load_s=round(info.load_s, 4) if info and timed else None,
            first_inference_ms=round(s.first_s * 1e3, 3) if s.first_s is not None and timed else None,
            latency=latency,
            throughput_samples_per_s=throughput,
            achieved_gflops=achieved,
            peak_share=share,
            peak_rss_mb=_mb(exits[s.name].peak_rss_kb) if rss_known else None,
            rss_before_load_mb=_mb(info.rss_before_load_kb) if info else None,
            model_bytes=s.model_bytes,
            times_ms=tuple(round(t * 1e3, 4) for t in (s.times or ())),
            pair_ms=tuple(round(t * 1e3, 4) for t in (s.pairs or ())),
            queries_per_pair=s.per_pair,
        ))
    candidate = subjects[0]
    comparisons = tuple(
        Comparison(baseline=s.name, ratio=RatioStats.from_pairs(candidate.pairs, s.pairs))
        for s in subjects[1:] if runner.timings_meaningful and candidate.pairs and s.pairs
    )
    return ArtifactBench(
        model=manifest.model.name,
        profile=manifest.profile,
        backend=manifest.backend,
        precision=precision_of(manifest),
        device=device,
        scenario=options.scenario,
        batch=batch,
        calls_per_query=calls,
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
        wall_s=round(time.perf_counter() - started, 2),
        extra=extra,
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
        return None, "no reference runtime in this run (--baseline none)" if not wanted else \
            "no fp32 reference among the baselines"
    with progress.step(f"compare outputs with {reference.name}"):
        got = subjects[0].worker.outputs()
        ref = reference.worker.outputs()
        worst, top1 = compare_outputs(ref, got)
    info = reference.worker.load_info
    return Correctness(reference=info.version if info else reference.name, samples=len(ref),
                       max_abs_diff=worst, top1_agreement=top1), None


def _balance(subjects: list[_Subject]) -> None:
    """Queries per pair for each subject, from its warm-up (or first) query time."""
    estimates = {}
    for s in subjects:
        seen = sorted(s.warm or []) or [s.first_s or 0.0]
        estimates[s.name] = max(seen[len(seen) // 2], 1e-6)
    window = min(BALANCE_S, max(estimates.values()))
    for s in subjects:
        s.per_pair = max(1, min(MAX_QUERIES_PER_PAIR, round(window / estimates[s.name])))


def _measure(subjects: list[_Subject], options: BenchOptions, calls: int, model: str, progress: Any) -> int:
    _balance(subjects)
    for s in subjects:
        s.times, s.pairs = [], []
    total = options.runs
    deadline = None if total else time.monotonic() + (options.duration_s or DEFAULT_DURATION_S)
    pairs = 0
    # Queries continue through the inputs where the warm-up left off.
    position = {s.name: calls * (1 + options.warmup) for s in subjects}
    while True:
        if total is not None and pairs >= total:
            break
        if total is None and pairs >= MIN_PAIRS and (time.monotonic() >= deadline or pairs >= MAX_PAIRS):
            break
        for s in subjects:
            times = s.worker.run(s.per_pair, calls, start=position[s.name])
            position[s.name] += s.per_pair * calls
            s.times.extend(times)
            ordered = sorted(times)
            s.pairs.append(ordered[(len(ordered) - 1) // 2] if len(ordered) % 2 else
                           (ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2]) / 2)
        pairs += 1
        note = "  ".join(f"{s.name} {s.pairs[-1] * 1e3:.1f} ms" + (f" (x{s.per_pair})" if s.per_pair > 1 else "")
                         for s in subjects)
        progress.advance(pairs, total, f"{model}: {note}")
    return pairs
