"""``--backend auto``: build every backend the profile allows and keep the best one.

When this machine can execute the target (the host CPU, or a GPU that is attached), every
eligible backend is compiled and validated, then timed (:mod:`edgekiln.execute.timing`), each
interleaved with ONNX Runtime on the source model in the same run; the candidate with the
lowest median time ratio to that common baseline wins, so load on a shared machine cancels
out.  When the target cannot run here, the profile's preference order decides: the first
backend that builds and validates is kept.  Either way the manifest records every candidate,
its figures or why it dropped out, and the reason for the choice (``Manifest.backend_selection``,
``extra.backend_selection`` in manifest.json).
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from edgekiln.artifact.manifest import BackendSelection, CandidateRecord
from edgekiln.artifact.package import pack
from edgekiln.compile.backends import registry
from edgekiln.compile.stages import CompiledArtifact, SourceModel, StagedArtifact
from edgekiln.device_profiles import DeviceProfile
from edgekiln.errors import BackendError, DependencyError, UserError
from edgekiln.execute import timing
from edgekiln.execute.inputs import make_inputs
from edgekiln.execute.runners import LocalRunner

AUTO = "auto"
# Measured pairs per candidate: enough for a median on this kind of gap (ONNX Runtime and
# untuned TVM differ by 10-100x on CPUs), few enough to keep compile time in check.
BENCH_PAIRS = 3


def eligible(profile: DeviceProfile, quantize: Any = None) -> list[str]:
    """The profile's backends, in its order of preference, that can build for it (and
    quantize as ``quantize``, a QuantizeOptions, asks)."""
    names = []
    for name in profile.backends:
        if name not in registry.names():
            continue
        backend = registry.get(name)
        if backend.supports(profile) is None and (quantize is None or backend.can_quantize(quantize.auto)):
            names.append(name)
    return names


LowerAndValidate = Callable[[SourceModel, Any], StagedArtifact]


def compile_auto(
    source: SourceModel,
    candidates: Sequence[Any],
    lower_and_validate: LowerAndValidate,
    profile: DeviceProfile,
    workdir: Path,
    cannot_run: str | None,
    progress: Any,
) -> tuple[StagedArtifact, BackendSelection]:
    """Lower and validate the one imported ``source`` for each candidate backend, in order,
    and choose one; returns the chosen build and the record of every candidate.

    ``cannot_run`` is why this machine cannot execute the target, or None when it can: then
    every candidate is built and the fastest wins, else the first that builds is kept.
    """
    records: list[dict[str, Any]] = []
    staged: dict[str, StagedArtifact] = {}
    for backend in candidates:
        try:
            with progress.step(f"candidate backend {backend.id}"):
                staged[backend.id] = lower_and_validate(source, backend)
            records.append({"backend": backend.id, "status": "built"})
        except (BackendError, DependencyError) as exc:
            # A UserError (bad model file, bad shape) is the same for every backend: it
            # propagates instead of being retried.
            records.append({"backend": backend.id, "status": "failed", "reason": exc.one_line()})
            continue  # the next one in preference order gets its chance
        if cannot_run is not None:
            break
    if not staged:
        reasons = "; ".join(f"{r['backend']}: {r.get('reason')}" for r in records)
        raise BackendError(f"no backend could build the model for {profile.id}: {reasons}")
    if cannot_run is None and len(staged) > 1:
        workdir.mkdir(parents=True, exist_ok=True)
        # The harness times packed artifacts, as a device would receive them.
        built = {name: _pack(build, workdir / f"{name}.tar.gz") for name, build in staged.items()}
        # ONNX Runtime on the imported source is the common baseline: nothing is imported again.
        choice, why = _measure(built, records, source, progress)
    else:
        choice = next(iter(staged))
        why = (
            "the only backend that built"
            if cannot_run is None
            else f"first in the profile's preference order that built and validated ({cannot_run})"
        )
    selection = BackendSelection(
        mode=AUTO, chosen=choice, reason=why, candidates=tuple(CandidateRecord(**r) for r in records)
    )
    return staged[choice], selection


def _pack(build: StagedArtifact, path: Path) -> CompiledArtifact:
    pack(build.manifest, build.root, path)
    return CompiledArtifact(path=path, manifest=build.manifest, size=path.stat().st_size)


def _measure(
    built: dict[str, Any], records: list[dict[str, Any]], baseline_model: Any, progress: Any
) -> tuple[str, str]:
    """Time each built candidate against ONNX Runtime on the source model, interleaved in
    pairs on this host (:mod:`edgekiln.execute.timing`); the lowest median ratio wins.

    ``baseline_model`` is the imported source model (anything with an ONNX ``path``), the
    user's model file, or None for a zoo model (rebuilt by name)."""
    with tempfile.TemporaryDirectory(prefix="edgekiln-auto-time-") as tmp:
        manifest = next(iter(built.values())).manifest
        try:
            with progress.step("prepare ONNX Runtime on the source model as the common baseline"):
                onnx_path = _baseline_onnx(baseline_model, manifest, Path(tmp))
        except (BackendError, DependencyError, UserError) as exc:
            return next(iter(built)), f"no candidate could be timed ({exc.one_line()}); kept the profile's first choice"
        ratios: dict[str, float] = {}
        for backend, artifact in built.items():
            record = next(r for r in records if r["backend"] == backend)
            with progress.step(f"time candidate {backend} against ONNX Runtime"):
                try:
                    candidate, ratio = _time_pair(artifact, onnx_path, backend)
                except (BackendError, DependencyError, UserError) as exc:
                    record.update(status="not measured", reason=exc.one_line())
                    continue
            ratios[backend] = ratio
            record["p50_ms"] = round(statistics.median(candidate.times or [0.0]) * 1e3, 4)
            record["ratio_to_onnxruntime"] = round(ratio, 4)
            record["pairs"] = len(candidate.pairs or ())
    if not ratios:
        first = next(iter(built))
        return first, "no candidate could be timed; kept the profile's first choice"
    best = min(ratios, key=ratios.get)  # type: ignore[arg-type]
    return best, (
        f"fastest of {len(ratios)} timed candidates: median time {ratios[best]:.3f} x ONNX Runtime's "
        f"on the source model, {BENCH_PAIRS} interleaved pairs each"
    )


def _baseline_onnx(baseline_model: Any, manifest: Any, workdir: Path) -> Path:
    """The source model as ONNX with the artifact's input shapes: the imported one when
    given, else imported once here (from the user's file, or the zoo by the model's name)."""
    path = getattr(baseline_model, "path", None)
    if path is not None:
        return Path(path)
    from edgekiln.compile.frontends import FRAMEWORKS, import_model

    shapes = {t.name: list(t.shape) for t in manifest.inputs}
    model = str(baseline_model) if baseline_model is not None else f"zoo:{manifest.model.name}"
    framework = manifest.model.source_format if manifest.model.source_format in FRAMEWORKS else None
    return import_model(model, workdir / "baseline", framework=framework, input_shape=shapes).path


def _time_pair(artifact: Any, onnx_path: Path, backend: str) -> tuple[timing.Timed, float]:
    """BENCH_PAIRS interleaved pairs of the artifact and ONNX Runtime on ``onnx_path``."""
    manifest = artifact.manifest
    samples = make_inputs(manifest.inputs, 3, 0)
    runner = LocalRunner()
    subjects: list[timing.Timed] = []
    try:
        for name, subject in (
            (backend, {"kind": "artifact", "path": str(artifact.path), "device": "cpu"}),
            ("onnxruntime", {"kind": "onnxruntime", "model": str(onnx_path), "device": "cpu"}),
        ):
            timed = timing.Timed(name, runner.start(name))
            subjects.append(timed)
            timed.worker.load(subject, samples)
        timing.warm_up(subjects, 1, 1)
        timing.measure_pairs(subjects, 1, runs=BENCH_PAIRS, start=2)
    except BaseException:
        for s in subjects:
            s.worker.abort()
        raise
    for s in subjects:
        s.worker.close()
    return subjects[0], timing.median_ratio(subjects[0], subjects[1])
