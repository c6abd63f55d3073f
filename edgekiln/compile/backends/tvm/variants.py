"""Builds of one CPU model for richer CPUs of the same class (a profile's ``cpu.variants``).

A class of machines such as ``x86_64`` (AVX2) must get code every member executes, yet many
members have more: AVX-512 doubles the vector width of every convolution. The artifact then
carries, beside its portable ``model-library``, a ``model-library-variant`` per richer CPU,
and the runtime loads the first one the device's CPU can execute (see the TVM executor).

A variant is built only when it is worth its size and can be trusted:

- tuning records for the variant's profile cover at least ``COVERAGE_RULE`` of the model's
  FLOPs (the rule the auto choice uses): untuned code for a wider ISA is no faster than the
  tuned portable code, and the model library is as big as the weights;
- the build host can execute its code, so that validation runs it like the portable build.
  Nothing ships that no one ran.

Every variant the profile lists gets an entry in the manifest's ``tuning.variants``: built
(with its records' coverage) or not, and why.
"""

from __future__ import annotations

import multiprocessing
import re
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgekiln.artifact.manifest import VARIANT_ROLE
from edgekiln.compile.evidence import COVERAGE_RULE
from edgekiln.device_profiles import DeviceProfile, get_profile
from edgekiln.errors import BackendError, EdgekilnError, UserError, first_line
from edgekiln.execute.host import cannot_execute, host_info
from edgekiln.execute.progress import Deferred, Progress


@dataclass
class Variants:
    """What the variant builds add to the artifact: files (path → role), the CPU flags each
    file needs beyond the portable build's, and the manifest entries."""

    files: dict[str, str] = field(default_factory=dict)
    cpu_features: dict[str, tuple[str, ...]] = field(default_factory=dict)
    entries: list[dict[str, Any]] = field(default_factory=list)


def variant_profiles(
    profile: DeviceProfile, features_of: Callable[[DeviceProfile], tuple[str, ...]]
) -> list[tuple[DeviceProfile, tuple[str, ...]]]:
    """The profile's variants with the CPU flags each needs beyond ``profile``; a variant of
    another arch, a GPU profile or one that lacks a flag of ``profile`` is a mistake in the
    profile and raises UserError."""
    base = features_of(profile)
    found = []
    for name in profile.cpu.variants:
        variant = get_profile(name)
        if variant.cpu.arch != profile.cpu.arch or variant.is_cuda:
            raise UserError(
                f"profile {profile.id} lists {variant.id} as a CPU variant, but it is "
                f"{'a CUDA profile' if variant.is_cuda else f'for {variant.cpu.arch}'}",
                hint=f"list only {profile.cpu.arch} CPU profiles in cpu.variants",
            )
        features = features_of(variant)
        missing = [f for f in base if f not in features]
        if missing:
            raise UserError(
                f"profile {profile.id} lists {variant.id} as a CPU variant, but its CPU lacks {', '.join(missing)}",
                hint="a variant's CPU must execute everything the profile's CPU does",
            )
        found.append((variant, tuple(f for f in features if f not in base)))
    return found


def build_variants(
    tvm: Any,
    mod: Any,
    profile: DeviceProfile,
    features_of: Callable[[DeviceProfile], tuple[str, ...]],
    tuning_db: str | None,
    export: Callable[[Any, Path], None],
    root: Path,
    progress: Progress,
) -> Variants:
    """Build ``mod`` for each of the profile's variants that records cover and this host can
    execute; ``export`` links an executable to a path."""
    from edgekiln.compile.backends.tvm import tuning
    from edgekiln.compile.backends.tvm.shipped_check import build_with_records

    out = Variants()
    for variant, extra in variant_profiles(profile, features_of):
        entry: dict[str, Any] = {"profile": variant.id, "cpu_features": list(extra)}
        out.entries.append(entry)
        why_not = cannot_execute(variant, features_of(variant)) or _features_unknown(extra)
        if why_not:
            entry["built"] = False
            entry["reason"] = f"not built: {why_not}, so its code could not be validated here"
            continue
        target = tvm.target.Target(variant.tvm_target())
        applied = tuning.records_for_build(tvm, mod, target, variant, tuning_db, progress)
        share = applied.coverage.share if applied is not None else 0.0
        if applied is None or applied.database is None or share < COVERAGE_RULE:
            entry["built"] = False
            entry["reason"] = (
                f"not built: tuning records for {variant.id} cover {share:.0%} of the model's FLOPs, "
                f"under the {COVERAGE_RULE:.0%} rule (edgekiln tune --target {variant.id} adds them)"
            )
            continue
        path = f"lib/model-{_slug(variant.cpu.mcpu)}.so"
        with progress.step(f"build the {variant.cpu.mcpu} variant (for CPUs with {' '.join(extra) or 'its ISA'})"):
            try:
                executable, applied = build_with_records(tvm, mod, target, applied)
            except Exception as exc:
                why = first_line(exc, last=True)
                raise BackendError(
                    f"TVM failed to build the {variant.id} variant with its tuning records: {why}"
                ) from None
            share = applied.coverage.share  # less any shipped record this TVM cannot build
            if executable is None or share < COVERAGE_RULE:
                entry.update(
                    built=False,
                    reason=f"not built: the tuning records for {variant.id} that build with this TVM cover "
                    f"{share:.0%} of the model's FLOPs, under the {COVERAGE_RULE:.0%} rule",
                )
                continue
            export(executable, root / path)
        entry.update(built=True, library=path, **applied.manifest_entry())
        out.files[path] = VARIANT_ROLE
        out.cpu_features[path] = extra
    return out


class InBackground:
    """:func:`build_variants` in a child process, while the caller builds the profile's own
    library: both are single-threaded, so on two cores this takes a third off MobileNetV2's
    first compile (59 s to 40 s).

    A second thread cannot do it: TVM's Python passes keep global state (TOPI's tag scope),
    and two builds at once fail. A forked child shares the converted model without copying
    it. A process that runs other threads is not forked (a lock one of them holds would stay
    held in the child); the variants are then built in :meth:`result`, in this process.
    """

    def __init__(self, *args: Any) -> None:
        self._args = args
        self._child: Any = None
        if threading.active_count() > 1:
            return
        context = multiprocessing.get_context("fork")
        self._results, sender = context.Pipe(duplex=False)
        sys.stdout.flush()  # else the child writes what is buffered a second time
        sys.stderr.flush()
        self._child = context.Process(target=_child, args=(sender, args), name="edgekiln-variants", daemon=True)
        self._child.start()
        sender.close()

    def result(self, progress: Progress) -> Variants:
        """The variants built, their steps reported to ``progress``; raises what the build raised."""
        if self._child is None:
            return build_variants(*self._args, progress)
        if not self._results.poll():
            with progress.step("wait for the CPU variant builds"):
                self._results.poll(None)
        try:
            status, value, steps = self._results.recv()
        except EOFError:
            self._child.join()
            raise BackendError(
                f"the CPU variant builds ended without a result (exit code {self._child.exitcode})",
                hint="compile with --backend-option cpu_variants=false to ship the portable build alone",
            ) from None
        self._child.join()
        for description, elapsed in steps:
            progress.done(f"{description}, in parallel", elapsed)
        if status == "error":
            raise value
        return value

    def cancel(self) -> None:
        """Stop the child if it still runs (the caller's own build failed, or Ctrl-C)."""
        if self._child is not None:
            self._child.terminate()  # nothing happens to a child that has ended
            self._child.join()


def _child(sender: Any, args: tuple[Any, ...]) -> None:
    # Ctrl-C reaches the whole process group; the parent stops the child (cancel), which
    # would otherwise print a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    steps = Deferred()
    try:
        reply: tuple[str, Any] = ("ok", build_variants(*args, steps))
    except EdgekilnError as exc:
        reply = ("error", exc)
    except Exception as exc:  # a foreign exception may not pickle; its text does
        reply = ("error", BackendError(f"building the CPU variants failed: {first_line(exc, last=True)}"))
    try:
        sender.send((*reply, steps.steps))
    except OSError:  # the parent is gone: nobody is left to tell
        pass
    sender.close()


def _features_unknown(extra: tuple[str, ...]) -> str | None:
    # cannot_execute gives a host whose /proc/cpuinfo it cannot read the benefit of the doubt
    # (the portable build still runs there); a variant exists only for the flags it adds.
    if extra and not host_info().cpu_features:
        return "this host's CPU flags are unknown (/proc/cpuinfo is unreadable)"
    return None


def _slug(text: str) -> str:
    # An LLVM cpu name from a profile becomes part of a file name in the artifact.
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip(".-") or "variant"
