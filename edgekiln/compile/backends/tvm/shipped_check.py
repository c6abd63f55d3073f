"""Shipped tuning records are checked against the installed TVM when a model is built with
them, not one by one before.

Records shipped with edgekiln were tuned with the TVM of their day; a newer TVM may reject a
schedule trace at build time. Building each record alone before use cost the first compile
of MobileNetV2 about 14 s per profile (a build per task). So the model is built with all its
records first, which is what compile does anyway; only when that build fails are the
unchecked shipped records built one by one, the ones that fail left out with a warning, and
the model built again. Records that built are remembered in the cache per TVM version and
target, so a failing build later checks only the records not yet known good.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

from edgekiln.compile.backends.tvm import notes, tuning
from edgekiln.errors import first_line
from edgekiln.runtime.compat import cache_root


def build_with_records(
    tvm: Any, mod: Any, target: Any, applied: tuning.AppliedRecords
) -> tuple[Any, tuning.AppliedRecords]:
    """``mod`` built with ``applied`` (:func:`tuning.compile_with_records`), and the records
    it was built with: less any shipped record that this TVM cannot build. The executable
    is None when no record is left (the caller builds without records). A failure that no
    unchecked shipped record explains is raised as it is."""
    unchecked = _unchecked(applied, target)
    try:
        executable = tuning.compile_with_records(tvm, mod, target, applied)
    except Exception:
        broken = check_shipped(applied, target, unchecked)
        if not broken:
            raise
        applied = applied.without(broken)
        if applied.database is None:
            return None, applied
        executable = tuning.compile_with_records(tvm, mod, target, applied)
    _remember(applied, target, [n for n in unchecked if n in applied.chosen])
    return executable, applied


def check_shipped(applied: tuning.AppliedRecords, target: Any, names: list[str]) -> list[str]:
    """The named tasks whose shipped record does not build alone with the installed TVM,
    each with a warning."""
    from tvm.s_tir.schedule import Schedule

    from edgekiln.compile.backends.tvm.tuner import build_candidate

    by_name = {t.name: t for t in applied.tasks}
    broken = []
    for name in names:
        record = applied.chosen[name][1]
        try:
            schedule = Schedule(by_name[name].mod)
            record.trace.apply_to_schedule(schedule, remove_postproc=False)
            build_candidate(schedule.mod, target, None)
        except Exception as exc:  # any failure means: this TVM cannot use the record
            warnings.warn(
                f"skipping the shipped tuning record of {name}: it does not build with this TVM "
                f"({first_line(exc, last=True)})",
                stacklevel=3,
            )
            broken.append(name)
    return broken


def _unchecked(applied: tuning.AppliedRecords, target: Any) -> list[str]:
    """The tasks whose record is shipped and not yet known to build with this TVM."""
    verified = _load_verified()
    by_name = {t.name: t for t in applied.tasks}
    return [
        name
        for name, (source, record) in applied.chosen.items()
        if source == "shipped" and _record_key(by_name[name], record, target) not in verified
    ]


def _remember(applied: tuning.AppliedRecords, target: Any, names: list[str]) -> None:
    if not names:
        return
    by_name = {t.name: t for t in applied.tasks}
    keys = {_record_key(by_name[n], applied.chosen[n][1], target) for n in names}
    _save_verified(_load_verified() | keys)


def _verified_file() -> Path:
    return cache_root() / "tuning" / "verified-shipped.json"


def _load_verified() -> set[str]:
    return {k for k in notes.read(_verified_file(), list) if isinstance(k, str)}


def _save_verified(keys: set[str]) -> None:
    notes.write(_verified_file(), sorted(keys))


def _record_key(task: tuning.Task, record: Any, target: Any) -> str:
    """Identifies a (TVM version, target, workload, schedule) that was checked to build."""
    from edgekiln.compile.backends.tvm.runtime_libs import tvm_version

    text = "\n".join((tvm_version(), str(target), str(tuning.structural_hash(task.mod)), str(record.trace)))
    return hashlib.sha256(text.encode()).hexdigest()
