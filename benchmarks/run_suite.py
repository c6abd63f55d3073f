"""Compile, validate and benchmark every combination of a suite that this machine can run.

    python benchmarks/run_suite.py --suite x86_64 --out build/bench [--gate STORED.json]
                                   [--suite-file benchmarks/suite.toml] [--runs N]
                                   [--reuse-artifacts DIR] [--compile-all]
                                   [--upload FLEET_URL [--upload-target NAME] [--upload-label TEXT]]

For each combination of the suite (benchmarks/suite.toml: models × profiles × backends ×
precisions × batches): compile the model for the profile (validated against ONNX Runtime
where this host can run it), then benchmark the artifact against the suite's baselines with
edgekiln's harness — interleaved pairs, in separate processes. A profile for another CPU
runs on its emulated board for correctness only. What cannot run here is listed as skipped,
with the reason; what fails is listed as failed.

With --upload FLEET_URL, the results (and the gate's verdict) go to the fleet service's
benchmarks page under --upload-target (default: the suite's name), with the admin token of
$EDGEKILN_FLEET_ADMIN_TOKEN or --admin-token-file.

Writes to --out: results.json (an edgekiln BenchReport), report.md, latency.png,
ratios.png and accuracy_latency.png; with --gate, gate.json too. Exits 1 when a combination
failed or, with --gate, when a measurement regressed beyond the suite's thresholds (the
regressions are named on stderr and in report.md); 2 for a bad suite or option.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from edgekiln.bench import gate as gate_module
from edgekiln.bench import report as report_module
from edgekiln.bench.harness import BenchOptions, bench_artifact
from edgekiln.bench.results import BenchReport, Skipped
from edgekiln.cli import fleet as fleet_cli
from edgekiln.errors import EdgekilnError, UserError
from edgekiln.execute.host import machine_description
from edgekiln.execute.progress import ConsoleProgress

HERE = Path(__file__).resolve().parent
DEFAULT_SUITE_FILE = HERE / "suite.toml"

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


@dataclass(frozen=True)
class Suite:
    """One suite of the suite file, validated."""

    name: str
    description: str
    models: tuple[str, ...]
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
    gate: gate_module.GateThresholds = gate_module.GateThresholds()


def load_suite(path: Path, name: str) -> Suite:
    """Read suite ``name`` from ``path``; any unknown key or bad value is a UserError."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"suite file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"suite file {path} is not valid TOML: {exc}") from None
    unknown_top = sorted(set(data) - {"gate", "suites"})
    if unknown_top:
        raise UserError(f"{path}: unknown tables {unknown_top}; valid: gate, suites")
    suites = data.get("suites", {})
    if name not in suites:
        raise UserError(f"{path} has no suite {name!r}", hint=f"choose from {', '.join(suites) or 'none'}")
    raw = dict(suites[name])
    unknown = sorted(set(raw) - set(SUITE_KEYS))
    if unknown:
        raise UserError(f"{path}: suite {name} has unknown keys {unknown}; valid: {sorted(SUITE_KEYS)}")
    for key, kind in SUITE_KEYS.items():
        if key in raw and not isinstance(raw[key], kind):
            raise UserError(f"{path}: suite {name}: {key} must be a {kind.__name__}")
    for key in ("models", "profiles"):
        if not raw.get(key):
            raise UserError(f"{path}: suite {name} needs a non-empty {key} list")
    thresholds = gate_module.GateThresholds.from_dict({**data.get("gate", {}), **raw.pop("gate", {})})
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    if any(not isinstance(b, int) or b < 1 for b in values.get("batches", (1,))):
        raise UserError(f"{path}: suite {name}: batches must be positive integers")
    for precision in values.get("precisions", ()):
        if precision not in ("fp32", "int8"):
            raise UserError(f"{path}: suite {name}: unknown precision {precision!r}; valid: fp32, int8")
    return Suite(name=name, description=values.pop("description", name), gate=thresholds, **values)


@dataclass(frozen=True)
class Combination:
    model: str
    profile: str
    backend: str
    precision: str
    batch: int

    def key(self, profile_id: str, suite: Suite) -> str:
        """The same key the BenchReport entry will have (so the gate can line them up)."""
        return (
            f"{Path(self.model).stem if self.model.endswith('.onnx') else self.model}/{profile_id}/"
            f"{self.backend}/{self.precision}/{suite.device}/{suite.scenario}/b{self.batch}"
        )

    def file_stem(self) -> str:
        model = Path(self.model).stem if self.model.endswith(".onnx") else self.model
        return f"{model}-{self.profile.replace('/', '_')}-{self.backend}-{self.precision}-b{self.batch}"


class NotRunnable(Exception):
    """This combination cannot run on this machine (a skip, not a failure)."""


def batched_zoo_model(name: str, batch: int, directory: Path) -> Path:
    """The zoo model with a free batch dimension, as an ONNX file to compile for ``batch``.

    The zoo builds batch-1 graphs; their only batch-dependent op is Flatten, so freeing the
    input's first dimension (and dropping inferred shapes) gives the same network for any batch.
    """
    import onnx

    from edgekiln import zoo

    model = zoo.build(name)
    del model.graph.value_info[:]
    for value in (*model.graph.input, *model.graph.output):
        if value.name in {t.name for t in model.graph.initializer}:
            continue
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    path = directory / f"{name}-batched.onnx"
    onnx.save(model, str(path))
    return path


def _runnable(combo: Combination, suite: Suite) -> tuple[Any, str | None, str | None]:
    """The profile, a note on how it runs (None: natively), and why it cannot run here (None:
    it can). Raises NotRunnable when it cannot even be built (backend, precision)."""
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
    from edgekiln.runtime import compat

    if profile.cpu.arch != compat.host_info().arch and profile.emulation is not None:
        try:
            from edgekiln.emulation import find_qemu

            find_qemu(profile)
        except ImportError:
            return profile, None, f"{why}, and this edgekiln has no emulated boards"
        except EdgekilnError as exc:
            return profile, None, f"{why}, and its emulated board cannot start: {exc.one_line()}"
        return profile, "emulated: correctness only", None
    return profile, None, why


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
    combo: Combination, suite: Suite, profile: Any, directory: Path, reuse: bool, progress: ConsoleProgress
) -> tuple[Path, str | None]:
    """Compile one combination; returns the artifact and the baseline model file (batch > 1)."""
    from edgekiln.compile.api import CompileOptions, compile_model
    from edgekiln.compile.stages import CompiledArtifact

    out = directory / f"{combo.file_stem()}.tar.gz"
    source: str = combo.model if combo.model.endswith(".onnx") else f"zoo:{combo.model}"
    baseline_model = combo.model if combo.model.endswith(".onnx") else None
    input_shape = None
    name = None
    if combo.batch != 1:
        if source.startswith("zoo:"):
            source = str(batched_zoo_model(combo.model, combo.batch, directory))
            baseline_model = source
            name = combo.model
        input_shape = [combo.batch, 3, 224, 224]
    if reuse and out.is_file():
        CompiledArtifact.load(out)  # a damaged file fails here, loudly
        print(f"  reusing {out}", file=sys.stderr)
        return out, baseline_model
    options = CompileOptions(backend=combo.backend)
    if combo.precision == "int8":
        from edgekiln.compile.quantize import QuantizeOptions

        options = CompileOptions(backend=combo.backend, quantize=QuantizeOptions(calibration=suite.calibration))
    compile_model(source, profile.id, out, input_shape=input_shape, name=name, options=options, progress=progress)
    return out, baseline_model


def run_suite(
    suite: Suite,
    out_dir: Path,
    *,
    runs: int | None = None,
    reuse_dir: Path | None = None,
    stored: Path | None = None,
    command: str | None = None,
    compile_all: bool = False,
) -> tuple[BenchReport, Any, int]:
    """Run ``suite``; returns the report, the gate result (or None) and the exit status."""
    progress = ConsoleProgress()
    baselines, notes = _baselines(suite)
    for name in suite.baselines:  # required ones must be here: a CI image without them is broken
        from edgekiln.bench import baselines as registry

        registry.check(name, suite.device)
    host = machine_description()
    host["loadavg_before"] = [round(x, 2) for x in os.getloadavg()]
    work = Path(tempfile.mkdtemp(prefix="edgekiln-suite-"))
    artifacts_dir = reuse_dir or work
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    results, skipped = [], []
    started = time.perf_counter()
    combos = [
        Combination(*c)
        for c in itertools.product(suite.models, suite.profiles, suite.backends, suite.precisions, suite.batches)
    ]
    try:
        for index, combo in enumerate(combos, 1):
            what = f"{combo.model} · {combo.profile} · {combo.backend} · {combo.precision} · batch {combo.batch}"
            label = f"[{index}/{len(combos)}] {what}"
            print(label, file=sys.stderr, flush=True)
            key = "/".join(
                (
                    combo.model,
                    combo.profile,
                    combo.backend,
                    combo.precision,
                    suite.device,
                    suite.scenario,
                    f"b{combo.batch}",
                )
            )
            try:
                profile, how, not_here = _runnable(combo, suite)
                key = combo.key(profile.id, suite)
                if not_here and not compile_all:
                    raise NotRunnable(not_here)
                artifact, baseline_model = _compile(
                    combo, suite, profile, artifacts_dir, reuse_dir is not None, progress
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
                results.append(bench_artifact(artifact, options, progress))
                if how:
                    print(f"  {how}", file=sys.stderr)
            except NotRunnable as exc:
                skipped.append(Skipped(key=key, status="skipped", reason=str(exc)))
                print(f"  skipped: {exc}", file=sys.stderr)
            except EdgekilnError as exc:
                skipped.append(Skipped(key=key, status="failed", reason=exc.one_line()))
                print(f"  FAILED: {exc.one_line()}", file=sys.stderr)
    finally:
        if reuse_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    host["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    import datetime as _dt

    from edgekiln import __version__

    report = BenchReport(
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
            "wall_s": round(time.perf_counter() - started, 1),
        },
        results=tuple(results),
        skipped=tuple(skipped),
        command=command,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    report.save(out_dir / "results.json")
    plots = [p.name for p in report_module.write_plots(report, out_dir)]
    gate_result = None
    if stored is not None:
        gate_result = gate_module.check(report, BenchReport.load(stored), suite.gate, str(stored))
        (out_dir / "gate.json").write_text(__import__("json").dumps(gate_result.to_dict(), indent=2) + "\n")
    (out_dir / "report.md").write_text(
        report_module.markdown(
            report,
            title=f"Benchmark suite {suite.name}: {suite.description}",
            plots=plots,
            gate=gate_result.to_dict() if gate_result else None,
            notes=notes,
        )
    )
    failed = [s for s in skipped if s.status == "failed"]
    status = 0
    if failed:
        print(
            f"{len(failed)} combination(s) failed: " + "; ".join(f"{s.key}: {s.reason}" for s in failed),
            file=sys.stderr,
        )
        status = 1
    if gate_result is not None:
        print(gate_result.summary(), file=sys.stderr)
        if not gate_result.passed:
            status = 1
    print(
        f"wrote {out_dir}/results.json, report.md and {', '.join(plots)} "
        f"({len(results)} measured, {len(skipped) - len(failed)} skipped, {len(failed)} failed)",
        file=sys.stderr,
    )
    return report, gate_result, status


def upload_results(
    report: BenchReport, gate_result: Any, *, endpoint: str, token: str, target: str, label: str = ""
) -> dict[str, Any]:
    """Send the suite's results and gate verdict to the fleet's benchmarks page."""
    gate = gate_result.to_dict() if gate_result is not None else None
    return fleet_cli.FleetAdmin(endpoint, token, timeout=60).upload_benchmarks(
        report.to_dict(), target=target, label=label, gate=gate
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="x86_64", help="suite name in the suite file (default: x86_64)")
    parser.add_argument("--suite-file", type=Path, default=DEFAULT_SUITE_FILE, help="default: benchmarks/suite.toml")
    parser.add_argument("--out", type=Path, default=Path("build/bench"), help="output directory (default: build/bench)")
    parser.add_argument("--gate", type=Path, metavar="STORED.json", help="stored results to gate against")
    parser.add_argument("--runs", type=int, help="measured pairs per combination (default: the suite's)")
    parser.add_argument(
        "--reuse-artifacts",
        type=Path,
        metavar="DIR",
        help="keep artifacts in DIR and reuse those already there (local iteration; CI compiles fresh)",
    )
    parser.add_argument(
        "--compile-all",
        action="store_true",
        help="also compile what cannot run here (for a board's runner to benchmark; keep them with --reuse-artifacts)",
    )
    parser.add_argument("--upload", metavar="FLEET_URL", help="upload the results to this fleet service")
    parser.add_argument("--upload-target", metavar="NAME", help="hardware target to file them under (default: --suite)")
    parser.add_argument("--upload-label", default="", metavar="TEXT", help="what was measured (a commit, a CI job)")
    parser.add_argument(
        "--admin-token-file", type=Path, help="file with the fleet admin token (default: $EDGEKILN_FLEET_ADMIN_TOKEN)"
    )
    args = parser.parse_args(argv)
    command = "python benchmarks/run_suite.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    try:
        suite = load_suite(args.suite_file, args.suite)
        if args.runs is not None and args.runs < 1:
            raise UserError("--runs must be at least 1")
        # Read before the suite runs: a CI job without the token fails at once.
        token = fleet_cli.admin_token(args.admin_token_file) if args.upload else ""
        report, gate_result, status = run_suite(
            suite,
            args.out,
            runs=args.runs,
            reuse_dir=args.reuse_artifacts,
            stored=args.gate,
            command=command,
            compile_all=args.compile_all,
        )
        if args.upload:
            target = args.upload_target or suite.name
            answer = upload_results(
                report, gate_result, endpoint=args.upload, token=token, target=target, label=args.upload_label
            )
            print(f"uploaded {answer['results']} results to {args.upload} as {target}", file=sys.stderr)
    except EdgekilnError as exc:
        print(f"run_suite: error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    return status


if __name__ == "__main__":
    sys.exit(main())
