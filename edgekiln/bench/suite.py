"""Benchmark suites: a TOML matrix of models × profiles × backends × precisions × batches.

``edgekiln suite SUITE.toml`` compiles every combination this machine can run (validated
where this host or an emulated board can execute the target), benchmarks the artifact
against the suite's baselines with :mod:`edgekiln.bench.harness`, writes a
:class:`~edgekiln.bench.results.BenchReport` with Markdown and plots, and optionally gates
it against a stored report (:mod:`edgekiln.bench.gate`).

A model is a zoo name (``resnet18`` or ``zoo:resnet18``) or a model file of any framework
compile takes (``.onnx``, ``.tflite``, ``.keras``, TorchScript …), relative to the suite
file. What this host cannot run is *skipped* with the reason (it does not fail the job):
another CPU without an emulated board that carries the backend's runtime, a backend the
profile does not allow, int8 without calibration data. What fails to compile, validate
or run *fails* the job.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from edgekiln.bench import gate as gate_module
from edgekiln.bench import report as report_module
from edgekiln.bench.harness import BenchOptions, bench_artifact
from edgekiln.bench.results import BenchReport, Skipped
from edgekiln.errors import EdgekilnError, UserError
from edgekiln.execute.host import machine_description
from edgekiln.execute.progress import NullProgress

SUITE_KEYS = {
    "description": str,
    "models": list,
    "profiles": list,
    "backends": list,
    "precisions": list,
    "batches": list,
    "scenario": str,
    "device": str,
    "baselines": list,
    "optional_baselines": list,
    "runs": int,
    "warmup": int,
    "calibration": str,
    "gate": dict,
    "threads": int,
}
PRECISIONS = ("fp32", "int8")


@dataclass(frozen=True)
class SuiteModel:
    """One model of a suite: a zoo reference or a model file, and its name in the report."""

    ref: str  # "zoo:resnet18" or an absolute path
    name: str

    @property
    def is_zoo(self) -> bool:
        return self.ref.startswith("zoo:")


@dataclass(frozen=True)
class Suite:
    """One suite of a suite file, validated."""

    name: str
    description: str
    models: tuple[SuiteModel, ...]
    profiles: tuple[str, ...]
    backends: tuple[str, ...] = ("tvm",)
    precisions: tuple[str, ...] = ("fp32",)
    batches: tuple[int, ...] = (1,)
    scenario: str = "single-stream"
    device: str = "cpu"
    baselines: tuple[str, ...] = ("onnxruntime",)
    optional_baselines: tuple[str, ...] = ()
    runs: int = 5
    warmup: int = 1
    calibration: str | None = None
    threads: int | None = None
    gate: gate_module.GateThresholds = field(default_factory=gate_module.GateThresholds)


def _model(entry: Any, where: str, base: Path) -> SuiteModel:
    """A suite's model entry: ``zoo:NAME``, a bare zoo name, or a file relative to the suite file."""
    from edgekiln import zoo
    from edgekiln.zoo import pretrained

    if not isinstance(entry, str) or not entry.strip():
        raise UserError(f"{where}: every model must be a zoo name or a model file path, got {entry!r}")
    text = entry.strip()
    bare = text[len("zoo:") :] if text.lower().startswith("zoo:") else text
    if text.lower().startswith("zoo:") or bare in zoo.MODEL_NAMES or bare in pretrained.PRETRAINED:
        if bare not in pretrained.PRETRAINED:
            bare = zoo.info(bare).name  # an unknown name is a UserError that lists the valid ones
        return SuiteModel(ref=f"zoo:{bare}", name=bare)
    path = Path(text).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.exists():
        raise UserError(
            f"{where}: model {text!r} is neither a zoo model nor an existing file ({path})",
            hint="give a path relative to the suite file, or a name from `edgekiln zoo list`",
        )
    from edgekiln.compile.frontends import model_stem

    return SuiteModel(ref=str(path.resolve()), name=model_stem(path))


def suite_names(path: Path) -> list[str]:
    """The suites a suite file defines."""
    return list(_read(path).get("suites", {}))


def _read(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"suite file {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"suite file {path} is a directory; give a .toml file") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"suite file {path} is not valid TOML: {exc}") from None
    unknown_top = sorted(set(data) - {"gate", "suites"})
    if unknown_top:
        raise UserError(f"{path}: unknown tables {unknown_top}; valid: gate, suites")
    if not isinstance(data.get("suites", {}), dict):
        raise UserError(f"{path}: suites must be a table of [suites.NAME] tables")
    return data


def load_suite(path: Path, name: str | None = None) -> Suite:
    """Read suite ``name`` (None: the file's only suite) from ``path``; any unknown key or
    bad value is a UserError."""
    path = Path(path)
    data = _read(path)
    suites = data.get("suites", {})
    if name is None:
        if len(suites) != 1:
            raise UserError(
                f"{path} defines {len(suites)} suites: {', '.join(suites) or 'none'}",
                hint="name one with --suite NAME" if suites else "add a [suites.NAME] table",
            )
        name = next(iter(suites))
    if name not in suites:
        raise UserError(f"{path} has no suite {name!r}", hint=f"choose from {', '.join(suites) or 'none'}")
    raw = dict(suites[name])
    where = f"{path}: suite {name}"
    unknown = sorted(set(raw) - set(SUITE_KEYS))
    if unknown:
        raise UserError(f"{where} has unknown keys {unknown}; valid: {sorted(SUITE_KEYS)}")
    for key, kind in SUITE_KEYS.items():
        if key in raw and not isinstance(raw[key], kind):
            raise UserError(f"{where}: {key} must be a {kind.__name__}")
    for key in ("models", "profiles"):
        if not raw.get(key):
            raise UserError(f"{where} needs a non-empty {key} list")
    thresholds = gate_module.GateThresholds.from_dict({**data.get("gate", {}), **raw.pop("gate", {})})
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    values["models"] = tuple(_model(m, where, path.parent) for m in values["models"])
    if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in values.get("batches", (1,))):
        raise UserError(f"{where}: batches must be positive integers")
    for precision in values.get("precisions", ()):
        if precision not in PRECISIONS:
            raise UserError(f"{where}: unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if values.get("calibration"):
        calibration = Path(values["calibration"]).expanduser()
        values["calibration"] = str(calibration if calibration.is_absolute() else path.parent / calibration)
    return Suite(name=name, description=values.pop("description", name), gate=thresholds, **values)


@dataclass(frozen=True)
class Combination:
    model: SuiteModel
    profile: str
    backend: str
    precision: str
    batch: int

    def key(self, profile_id: str, suite: Suite) -> str:
        """The key the BenchReport entry will have (so that the gate lines them up)."""
        return (
            f"{self.model.name}/{profile_id}/{self.backend}/{self.precision}/{suite.device}/"
            f"{suite.scenario}/b{self.batch}"
        )

    def file_stem(self) -> str:
        return f"{self.model.name}-{self.profile.replace('/', '_')}-{self.backend}-{self.precision}-b{self.batch}"

    def describe(self) -> str:
        return f"{self.model.name} · {self.profile} · {self.backend} · {self.precision} · batch {self.batch}"


class NotRunnable(Exception):
    """This combination cannot run on this machine (a skip, not a failure)."""


def batched_zoo_model(name: str, batch: int, directory: Path) -> Path:
    """The zoo model with a free batch dimension, as an ONNX file to compile for ``batch``.

    The zoo builds batch-1 graphs; their only batch-dependent op is Flatten, so freeing the
    input's first dimension (and dropping inferred shapes) gives the same network for any batch.
    """
    import onnx

    from edgekiln import zoo
    from edgekiln.zoo import pretrained

    model = pretrained.build(name) if name in pretrained.PRETRAINED else zoo.build(name)
    del model.graph.value_info[:]
    for value in (*model.graph.input, *model.graph.output):
        if value.name in {t.name for t in model.graph.initializer}:
            continue
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    path = directory / f"{name}-batched.onnx"
    onnx.save(model, str(path))
    return path


def runnable(combo: Combination, suite: Suite) -> tuple[Any, str | None, str | None]:
    """The profile, a note on how it runs (None: natively), and why it cannot run here (None:
    it can). Raises NotRunnable when it cannot even be built (backend, precision, device)."""
    from edgekiln.compile.api import host_can_execute
    from edgekiln.compile.backends import registry
    from edgekiln.device_profiles import get_profile

    profile = get_profile(combo.profile)
    try:
        backend = registry.get(combo.backend)
    except UserError as exc:
        raise NotRunnable(f"this edgekiln has no backend {combo.backend!r} ({exc.one_line()})") from None
    reason = backend.supports(profile)
    if reason:
        raise NotRunnable(f"backend {combo.backend} cannot build for {profile.id}: {reason}")
    if combo.precision == "int8" and not suite.calibration:
        raise NotRunnable("int8 needs calibration data: set calibration = PATH in the suite")
    if suite.device == "cuda" and not profile.is_cuda:
        raise NotRunnable(f"{profile.id} has no GPU")
    why = host_can_execute(profile)
    if why is None:
        return profile, None, None
    return profile, *_on_emulated_board(profile, combo.backend, why)


def _on_emulated_board(profile: Any, backend: str, why: str) -> tuple[str | None, str | None]:
    """(how it runs, None) on the profile's emulated board, or (None, why it cannot run here)."""
    from edgekiln.compile.backends import registry
    from edgekiln.execute.host import host_info
    from edgekiln.execute.runners import emulated_board_problem

    on_board = "run it on the board (a self-hosted runner; see the README's CI jobs)"
    if profile.cpu.arch == host_info().arch or profile.emulation is None:
        return None, f"this host cannot execute {profile.id} ({why}); {on_board}"
    if not registry.get(backend).runs_on_emulated_board:
        return None, (
            f"this host cannot execute {profile.id} ({why}) and its emulated board carries no {backend} "
            f"runtime; {on_board}"
        )
    problem = emulated_board_problem(profile)
    if problem:
        return None, f"this host cannot execute {profile.id} ({why}) and {problem}"
    return "emulated: correctness only", None


def _baselines(suite: Suite) -> tuple[tuple[str, ...], list[str]]:
    from edgekiln.bench import baselines as registry

    notes = []
    chosen = list(suite.baselines)
    for name in suite.optional_baselines:
        try:
            registry.check(name, suite.device)
            chosen.append(name)
        except EdgekilnError as exc:
            notes.append(f"Optional baseline {name} not used: {exc.one_line()}")
    return tuple(dict.fromkeys(chosen)), notes


def _compile(
    combo: Combination, suite: Suite, profile: Any, directory: Path, reuse: bool, progress: Any, say: Callable
) -> tuple[Path, str | None]:
    """Compile one combination; returns the artifact and the baselines' model file (None: zoo)."""
    from edgekiln.compile.api import CompileOptions, compile_model
    from edgekiln.compile.stages import CompiledArtifact

    out = directory / f"{combo.file_stem()}.tar.gz"
    source = combo.model.ref
    baseline_model = None if combo.model.is_zoo else source
    input_shape = None
    if combo.batch != 1:
        if combo.model.is_zoo:
            source = str(batched_zoo_model(combo.model.name, combo.batch, directory))
            baseline_model = source
        # Model files: an image classifier's batch of 3 x 224 x 224 images (NCHW; an NHWC
        # model takes its shape in NCHW as compile documents for --input-config).
        input_shape = [combo.batch, 3, 224, 224]
    if reuse and out.is_file():
        CompiledArtifact.load(out)  # a damaged file fails here, loudly
        say(f"  reusing {out}")
        return out, baseline_model
    quantize = None
    if combo.precision == "int8":
        from edgekiln.compile.quantize import QuantizeOptions

        quantize = QuantizeOptions(calibration=suite.calibration)
    options = CompileOptions(backend=combo.backend, quantize=quantize)
    compile_model(
        source, profile.id, out, input_shape=input_shape, name=combo.model.name, options=options, progress=progress
    )
    return out, baseline_model


@dataclass(frozen=True)
class SuiteRun:
    """What :func:`run_suite` produced: the report, the gate's verdict and the exit status."""

    report: BenchReport
    gate: gate_module.GateResult | None
    status: int
    plots: tuple[str, ...]


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_suite(
    suite: Suite,
    out_dir: Path,
    *,
    runs: int | None = None,
    reuse_dir: Path | None = None,
    stored: Path | None = None,
    command: str | None = None,
    compile_all: bool = False,
    progress: Any = None,
    say: Callable[[str], None] = _stderr,
) -> SuiteRun:
    """Run ``suite``; write results.json, report.md and the plots (and gate.json) to ``out_dir``."""
    from edgekiln.bench import baselines as registry

    progress = progress or NullProgress()
    for name in suite.baselines:  # required ones must be here: a CI image without them is broken
        registry.check(name, suite.device)
    baselines, notes = _baselines(suite)
    stored_report = BenchReport.load(stored) if stored is not None else None  # a bad file fails first
    host = machine_description()
    host["loadavg_before"] = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    results, skipped = _run_combinations(suite, baselines, runs, reuse_dir, compile_all, progress, say)
    host["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    report = _report(suite, host, baselines, runs, results, skipped, command, time.perf_counter() - started)
    out_dir.mkdir(parents=True, exist_ok=True)
    report.save(out_dir / "results.json")
    plots = tuple(p.name for p in report_module.write_plots(report, out_dir))
    gate_result = None
    if stored_report is not None:
        gate_result = gate_module.check(report, stored_report, suite.gate, str(stored))
        (out_dir / "gate.json").write_text(json.dumps(gate_result.to_dict(), indent=2) + "\n")
    notes += [f"Baseline {name} not run for {r.key}: {why}" for r in report.results for name, why in _failed(r)]
    (out_dir / "report.md").write_text(
        report_module.markdown(
            report,
            title=f"Benchmark suite {suite.name}: {suite.description}",
            plots=plots,
            gate=gate_result.to_dict() if gate_result else None,
            notes=notes,
        )
    )
    return SuiteRun(report, gate_result, _status(report, gate_result, out_dir, plots, say), plots)


def _failed(result: Any) -> list[tuple[str, str]]:
    return list(result.baselines_failed.items())


def _run_combinations(
    suite: Suite,
    baselines: tuple[str, ...],
    runs: int | None,
    reuse_dir: Path | None,
    compile_all: bool,
    progress: Any,
    say: Callable[[str], None],
) -> tuple[list[Any], list[Skipped]]:
    """Every combination in turn: compiled and benchmarked, skipped (with why) or failed."""
    work = Path(tempfile.mkdtemp(prefix="edgekiln-suite-"))
    artifacts_dir = reuse_dir or work
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    results: list[Any] = []
    skipped: list[Skipped] = []
    combos = [
        Combination(*c)
        for c in itertools.product(suite.models, suite.profiles, suite.backends, suite.precisions, suite.batches)
    ]
    try:
        for index, combo in enumerate(combos, 1):
            say(f"[{index}/{len(combos)}] {combo.describe()}")
            key = combo.key(combo.profile, suite)
            try:
                profile, how, not_here = runnable(combo, suite)
                key = combo.key(profile.id, suite)
                if not_here and not compile_all:
                    raise NotRunnable(not_here)
                artifact, baseline_model = _compile(
                    combo, suite, profile, artifacts_dir, reuse_dir is not None, progress, say
                )
                if not_here:
                    raise NotRunnable(f"compiled to {artifact.name}, not benchmarked here: {not_here}")
                options = BenchOptions(
                    scenario=suite.scenario,
                    runs=runs or suite.runs,
                    warmup=suite.warmup,
                    baselines=baselines or ("none",),
                    baseline_model=baseline_model,
                    device=suite.device,
                    threads=suite.threads,
                )
                result = bench_artifact(artifact, options, progress)
                results.append(result)
                for name, why in result.baselines_failed.items():
                    say(f"  baseline {name} not run: {why}")
                if how:
                    say(f"  {how}")
            except NotRunnable as exc:
                skipped.append(Skipped(key=key, status="skipped", reason=str(exc)))
                say(f"  skipped: {exc}")
            except EdgekilnError as exc:
                skipped.append(Skipped(key=key, status="failed", reason=exc.one_line()))
                say(f"  FAILED: {exc.one_line()}")
    finally:
        if reuse_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return results, skipped


def _report(
    suite: Suite,
    host: dict[str, Any],
    baselines: tuple[str, ...],
    runs: int | None,
    results: list[Any],
    skipped: list[Skipped],
    command: str | None,
    wall_s: float,
) -> BenchReport:
    from edgekiln import __version__

    return BenchReport(
        created_utc=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        edgekiln_version=__version__,
        host=host,
        options={
            "suite": suite.name,
            "description": suite.description,
            "runs": runs or suite.runs,
            "warmup": suite.warmup,
            "scenario": suite.scenario,
            "device": suite.device,
            "threads": suite.threads,
            "baselines": list(baselines),
            "gate": suite.gate.to_dict(),
            "wall_s": round(wall_s, 1),
        },
        results=tuple(results),
        skipped=tuple(skipped),
        command=command,
    )


def _status(
    report: BenchReport,
    gate_result: gate_module.GateResult | None,
    out_dir: Path,
    plots: tuple[str, ...],
    say: Callable[[str], None],
) -> int:
    """1 when a combination failed or the gate found a regression, else 0 (skips pass)."""
    failed = [s for s in report.skipped if s.status == "failed"]
    status = 0
    if failed:
        say(f"{len(failed)} combination(s) failed: " + "; ".join(f"{s.key}: {s.reason}" for s in failed))
        status = 1
    if gate_result is not None:
        say(gate_result.summary())
        if not gate_result.passed:
            status = 1
    say(
        f"wrote {out_dir}/results.json, report.md and {', '.join(plots)} "
        f"({len(report.results)} measured, {len(report.skipped) - len(failed)} skipped, {len(failed)} failed)"
    )
    return status
