"""``--backend auto``: build every backend the profile allows and keep the best one.

When this machine can execute the target (the host CPU, or a GPU that is attached), every
eligible backend is compiled and validated, then timed with the benchmark harness, each
interleaved with ONNX Runtime on the source model in the same run; the candidate with the
lowest median time ratio to that common baseline wins, so load on a shared machine cancels
out.  When the target cannot run here, the profile's preference order decides: the first
backend that builds and validates is kept.  Either way the manifest records every candidate,
its figures or why it dropped out, and the reason for the choice (``extra.backend_selection``).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from edgekiln.artifact.package import pack, unpack
from edgekiln.compile.backends import registry
from edgekiln.device_profiles import DeviceProfile
from edgekiln.errors import BackendError, DependencyError, UserError

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
        if registry.get(name).supports(profile) is None:
            names.append(name)
    if quantize is not None:
        from edgekiln.compile.api import QDQ_BACKENDS, QUANTIZING_BACKENDS

        names = [n for n in names if n in (QDQ_BACKENDS if quantize.auto else QUANTIZING_BACKENDS)]
    return names


def compile_auto(compile_one: Callable[[str, Path], Any], profile: DeviceProfile, output: Path,
                 quantize: Any, baseline_model: str | None, cannot_run: str | None, progress: Any) -> Any:
    """Run ``compile_one(backend, path)`` per candidate and pack the chosen one to ``output``.

    ``cannot_run`` is why this machine cannot execute the target, or None when it can.
    """
    from edgekiln.compile.api import CompiledArtifact

    candidates = eligible(profile, quantize)
    if not candidates:
        raise UserError(f"profile {profile.id} has no backend that can build this model here "
                        f"(it lists {', '.join(profile.backends)})")
    records: list[dict[str, Any]] = []
    built: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edgekiln-auto-") as tmp:
        for backend in candidates:
            try:
                with progress.step(f"candidate backend {backend}"):
                    built[backend] = compile_one(backend, Path(tmp) / f"{backend}.tar.gz")
                records.append({"backend": backend, "status": "built"})
            except (BackendError, DependencyError) as exc:
                # A UserError (bad model file, bad shape) is the same for every backend: it
                # propagates instead of being retried.
                records.append({"backend": backend, "status": "failed", "reason": exc.one_line()})
                if cannot_run is not None:
                    continue  # the next one in preference order gets its chance
            if cannot_run is not None and backend in built:
                break
        if not built:
            reasons = "; ".join(f"{r['backend']}: {r.get('reason')}" for r in records)
            raise BackendError(f"no backend could build the model for {profile.id}: {reasons}")
        if cannot_run is None and len(built) > 1:
            choice, why = _measure(built, records, baseline_model, progress)
        else:
            choice = next(iter(built))
            why = ("the only backend that built" if cannot_run is None else
                   f"first in the profile's preference order that built and validated ({cannot_run})")
        chosen = built[choice]
        selection = {"mode": AUTO, "chosen": choice, "reason": why, "candidates": records}
        root = Path(tmp) / "chosen"
        manifest = unpack(chosen.path, root)
        manifest = dataclasses.replace(manifest, extra={**manifest.extra, "backend_selection": selection})
        pack(manifest, root, output)
    return CompiledArtifact(path=output, manifest=manifest, size=os.path.getsize(output))


def _measure(built: dict[str, Any], records: list[dict[str, Any]], baseline_model: str | None,
             progress: Any) -> tuple[str, str]:
    from edgekiln.bench.harness import BenchOptions, bench_artifact

    options = BenchOptions(runs=BENCH_PAIRS, warmup=1, baselines=("onnxruntime",), baseline_model=baseline_model)
    ratios: dict[str, float] = {}
    for backend, artifact in built.items():
        record = next(r for r in records if r["backend"] == backend)
        with progress.step(f"time candidate {backend} against ONNX Runtime"):
            try:
                result = bench_artifact(Path(artifact.path), options)
            except (BackendError, DependencyError, UserError) as exc:
                record.update(status="not measured", reason=exc.one_line())
                continue
        candidate = next(s for s in result.subjects if s.role == "candidate")
        comparison = next((c for c in result.comparisons if c.baseline == "onnxruntime"), None)
        record["p50_ms"] = candidate.latency.p50_ms if candidate.latency else None
        if comparison is not None:
            ratios[backend] = comparison.ratio.median
            record["ratio_to_onnxruntime"] = round(comparison.ratio.median, 4)
        record["pairs"] = result.pairs
    if not ratios:
        first = next(iter(built))
        return first, "no candidate could be timed; kept the profile's first choice"
    best = min(ratios, key=ratios.get)  # type: ignore[arg-type]
    return best, (f"fastest of {len(ratios)} timed candidates: median time {ratios[best]:.3f} x ONNX Runtime's "
                  f"on the source model, {BENCH_PAIRS} interleaved pairs each")
