"""``--backend auto``: build the backends the evidence allows and keep the best one.

Candidates first go through the evidence rule (:mod:`edgekiln.compile.evidence`): per target
class and precision the repository keeps which backend is fastest, and untuned TVM is left
out unless tuning records cover the model (or nothing else runs on the target).

When this machine can execute the target (the host CPU, or a GPU that is attached), every
remaining candidate is compiled, validated and timed, each interleaved with ONNX Runtime on
the source model in the same run, every runtime on the same pinned CPU threads (the host's)
and in two worker processes taken in turn (a runtime's speed can differ between processes),
sequentially (:mod:`edgekiln.compile.sequential`): clearly slower candidates are dropped after
a few pairs, and pairs are added until every candidate is tied with the leader or clearly
behind it, or the budget runs out. When the target cannot run here, the evidence
row's order decides: the first candidate that builds and validates is kept. Either way the
manifest records every candidate, its figures or why it dropped out, the evidence row, and
the reason for the choice (``Manifest.backend_selection``, ``extra.backend_selection``).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from edgekiln.artifact.manifest import BackendSelection, CandidateRecord
from edgekiln.artifact.package import pack
from edgekiln.compile import evidence, sequential
from edgekiln.compile.backends import registry
from edgekiln.compile.stages import CompiledArtifact, SourceModel, StagedArtifact
from edgekiln.device_profiles import DeviceProfile
from edgekiln.errors import BackendError, DependencyError, UserError
from edgekiln.execute import timing
from edgekiln.execute.host import host_info, usable_cpus
from edgekiln.execute.inputs import make_inputs
from edgekiln.execute.runners import LocalRunner

AUTO = "auto"


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
    *,
    precision: str = "fp32",
    coverage: evidence.TuningCoverage | None = None,
    budget: sequential.TimingBudget | None = None,
) -> tuple[StagedArtifact, BackendSelection]:
    """Lower and validate the one imported ``source`` for each candidate backend the evidence
    allows, and choose one; returns the chosen build and the record of every candidate.

    ``cannot_run`` is why this machine cannot execute the target, or None when it can: then
    every allowed candidate is built and timed (within ``budget``), else the first that
    builds in the evidence row's order is kept. ``precision`` ("fp32" or "int8") and
    ``coverage`` (the model's TVM tuning coverage, None without records) pick the evidence.
    """
    # Timed here, undecided timings fall to the order measured on this host's kind of CPU.
    vendor = host_info().cpu_vendor if cannot_run is None else ""
    plan = evidence.plan(profile, precision, [b.id for b in candidates], coverage, host_vendor=vendor)
    records: list[dict[str, Any]] = [
        {"backend": name, "status": "skipped", "reason": why} for name, why in plan.excluded.items()
    ]
    by_name = {b.id: b for b in candidates}
    staged: dict[str, StagedArtifact] = {}
    for name in plan.order:
        try:
            with progress.step(f"candidate backend {name}"):
                staged[name] = lower_and_validate(source, by_name[name])
            records.append({"backend": name, "status": "built"})
        except (BackendError, DependencyError) as exc:
            # A UserError (bad model file, bad shape) is the same for every backend: it
            # propagates instead of being retried.
            records.append({"backend": name, "status": "failed", "reason": exc.one_line()})
            continue  # the next one in order gets its chance
        if cannot_run is not None:
            break
    if not staged:
        reasons = "; ".join(f"{r['backend']}: {r.get('reason')}" for r in records)
        raise BackendError(
            f"no backend could build the model for {profile.id}: {reasons}",
            hint="--backend tvm builds untuned TVM, which is slow" if plan.excluded else None,
        )
    facts: dict[str, Any] = {"evidence": plan.row.key if plan.row else None}
    facts["evidence_source"] = plan.row.source if plan.row else None
    if cannot_run is None and len(staged) > 1:
        workdir.mkdir(parents=True, exist_ok=True)
        # The harness times packed artifacts, as a device would receive them.
        built = {name: _pack(build, workdir / f"{name}.tar.gz") for name, build in staged.items()}
        # ONNX Runtime on the imported source is the common baseline: nothing is imported again.
        choice, why, measured = _measure(
            built, records, source, progress, plan.order, plan.order_source, budget or sequential.TimingBudget()
        )
        facts.update(measured)
    else:
        choice = next(iter(staged))
        why, facts["outcome"] = _unmeasured_reason(choice, plan, cannot_run)
    if coverage is not None:
        facts["tuning_coverage"] = round(coverage.flops_share, 4)
    # Records in the order the profile lists its backends, whatever order they were tried in.
    records.sort(key=lambda r: [b.id for b in candidates].index(r["backend"]))
    selection = BackendSelection(
        mode=AUTO,
        chosen=choice,
        reason=why,
        candidates=tuple(CandidateRecord(**r) for r in records),
        **facts,
    )
    return staged[choice], selection


def _unmeasured_reason(choice: str, plan: evidence.Plan, cannot_run: str | None) -> tuple[str, str]:
    """Why ``choice`` was kept without timing, and the outcome's name."""
    skipped = f"; {plan.excluded['tvm']}" if "tvm" in plan.excluded else ""
    if cannot_run is None:
        return f"the only backend that built{skipped}", "only one built"
    if plan.row is None:
        why = f"first in the profile's preference order that built without failing validation ({cannot_run})"
        return why + skipped, "evidence"
    row = plan.row
    return (
        f"this machine cannot time the target ({cannot_run}); evidence {row.key} orders the "
        f"backends {', '.join(row.order)} ({row.figures}; source: {row.source}); {choice} is the "
        f"first in that order that built without failing validation{skipped}",
        "evidence",
    )


def _pack(build: StagedArtifact, path: Path) -> CompiledArtifact:
    pack(build.manifest, build.root, path)
    return CompiledArtifact(path=path, manifest=build.manifest, size=path.stat().st_size)


def _measure(
    built: dict[str, Any],
    records: list[dict[str, Any]],
    baseline_model: Any,
    progress: Any,
    order: Sequence[str],
    order_source: str,
    budget: sequential.TimingBudget,
) -> tuple[str, str, dict[str, Any]]:
    """Time the built candidates against ONNX Runtime on the source model on this host, in
    interleaved pairs, sequentially until :func:`sequential.judge` decides.

    ``baseline_model`` is the imported source model (anything with an ONNX ``path``), the
    user's model file, or None for a zoo model (rebuilt by name). Returns the choice, its
    reason and the selection's timing facts (outcome, threads, processes, seconds); fills ``records``.
    """
    started = time.monotonic()
    threads = budget.threads or usable_cpus()
    first = next(b for b in order if b in built)
    with tempfile.TemporaryDirectory(prefix="edgekiln-auto-time-") as tmp:
        manifest = next(iter(built.values())).manifest
        try:
            with progress.step("prepare ONNX Runtime on the source model as the common baseline"):
                onnx_path = _baseline_onnx(baseline_model, manifest, Path(tmp))
        except (BackendError, DependencyError, UserError) as exc:
            why = f"no candidate could be timed ({exc.one_line()}); kept the first in {order_source}"
            return first, why, {"outcome": "not timed"}
        try:
            session = _TimingSession(onnx_path, manifest, threads, budget.processes)
        except (BackendError, DependencyError, UserError) as exc:
            why = f"no candidate could be timed (ONNX Runtime baseline: {exc.one_line()})"
            return first, f"{why}; kept the first in {order_source}", {"outcome": "not timed"}
        try:
            verdict = session.run(built, records, order, budget, started, progress)
        finally:
            session.close()
    elapsed = time.monotonic() - started
    facts = {"threads": threads, "processes": budget.processes, "timing_seconds": round(elapsed, 2)}
    if verdict is None:
        return (
            first,
            f"no candidate could be timed; kept the first in {order_source}",
            {**facts, "outcome": "not timed"},
        )
    for record in records:
        stats = session.stats.get(record["backend"])
        if stats is not None:
            record.update(
                ratio_to_onnxruntime=round(stats.median, 3),
                ci95_low=round(stats.ci95_low, 3),
                ci95_high=round(stats.ci95_high, 3),
                pairs=stats.n,
                p50_ms=round(session.p50_s[record["backend"]] * 1e3, 4),
            )
            if record["backend"] in session.dropped:
                record.update(status="dropped", reason=session.dropped[record["backend"]])
    assert verdict.chosen is not None
    return (
        verdict.chosen,
        sequential.reason(verdict, order_source, budget, elapsed),
        {**facts, "outcome": verdict.outcome},
    )


class _TimingSession:
    """ONNX Runtime baseline workers and, per candidate, as many workers as the budget's
    ``processes``, all on ``threads`` pinned CPUs. Each round times every candidate in one
    (candidate, baseline) pair, taking the copies in turn; the order within a pair flips once
    every copy has had a round, so neither side always runs second."""

    def __init__(self, onnx_path: Path, manifest: Any, threads: int, processes: int = 1) -> None:
        self.samples = make_inputs(manifest.inputs, 3, 0)
        self.threads = threads
        self.runner = LocalRunner()
        self.workers: dict[str, Any] = {}
        self.stats: dict[str, Any] = {}
        self.p50_s: dict[str, float] = {}
        self.dropped: dict[str, str] = {}
        model = {"kind": "onnxruntime", "model": str(onnx_path)}
        self.baselines = [self._start("onnxruntime", model) for _ in range(processes)]

    def _start(self, label: str, subject: dict[str, Any]) -> Any:
        worker = self.runner.start(label)
        self.workers[f"{label}#{len(self.workers)}"] = worker
        try:
            worker.load({**subject, "device": "cpu", "threads": self.threads}, self.samples)
        except BaseException:
            worker.abort()
            raise
        return worker

    def _load(self, name: str, path: Path) -> list[list[timing.Timed]]:
        """One warmed-up, balanced (candidate, baseline) pair per process copy."""
        copies = []
        for baseline in self.baselines:
            worker = self._start(name, {"kind": "artifact", "path": str(path)})
            pair = [timing.Timed(name, worker), timing.Timed("onnxruntime", baseline)]
            timing.warm_up(pair, 1, 1)
            timing.balance(pair)
            copies.append(pair)
        return copies

    def run(
        self,
        built: dict[str, Any],
        records: list[dict[str, Any]],
        order: Sequence[str],
        budget: sequential.TimingBudget,
        started: float,
        progress: Any,
    ) -> sequential.Verdict | None:
        copies: dict[str, list[list[timing.Timed]]] = {}
        for name in [b for b in order if b in built]:
            record = next(r for r in records if r["backend"] == name)
            try:
                what = f"{len(self.baselines)} process(es), {self.threads} threads"
                with progress.step(f"load candidate {name} for timing ({what})"):
                    copies[name] = self._load(name, built[name].path)
            except (BackendError, DependencyError, UserError) as exc:
                record.update(status="not measured", reason=exc.one_line())
        if not copies:
            return None
        ratios: dict[str, list[float]] = {name: [] for name in copies}
        timed = {name: [pair[0] for pair in pairs] for name, pairs in copies.items()}
        position: dict[int, int] = {}
        verdict = sequential.Verdict("continue")
        rounds = 0
        while verdict.outcome == "continue" and copies:
            n = len(self.baselines)
            for name, pairs in list(copies.items()):
                pair = pairs[rounds % n]
                try:
                    timing.run_pair(pair if (rounds // n) % 2 == 0 else pair[::-1], 1, position, start=2)
                except (BackendError, DependencyError, UserError) as exc:
                    next(r for r in records if r["backend"] == name).update(
                        status="not measured", reason=exc.one_line()
                    )
                    del copies[name], ratios[name], timed[name]
                    continue
                ratios[name].append(pair[0].pairs[-1] / pair[1].pairs[-1])  # type: ignore[index]
            rounds += 1
            if not copies:
                return None
            verdict = sequential.judge(ratios, order, budget, time.monotonic() - started)
            self.stats.update(verdict.stats)
            self.dropped.update(verdict.dropped)
            for name in verdict.dropped:
                del copies[name], ratios[name]
            progress.advance(rounds, budget.max_pairs, f"{len(copies)} candidates against ONNX Runtime", unit="pair")
        self.p50_s = {
            name: statistics.median(t for c in cs if c.times for t in c.times)
            for name, cs in timed.items()
            if any(c.times for c in cs)
        }
        return verdict

    def close(self) -> None:
        for worker in self.workers.values():
            try:
                worker.close()
            except Exception:  # a worker that already died has nothing left to close
                worker.abort()


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
