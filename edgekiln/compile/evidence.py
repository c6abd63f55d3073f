"""Which backend is fastest per target class and precision, from figures kept in the repo.

``--backend auto`` times candidates when this host can run the target. When it cannot (another
CPU, no GPU attached), the choice comes from ``evidence.toml`` beside this module: one row per
target class (x86_64 CPU, aarch64 Cortex-A CPU, armv7l CPU, CUDA GPU) and precision (fp32,
int8), ordering the backends fastest first, with the figures and where they come from
(measured here with ``edgekiln bench``, or a published benchmark).

A row may also name a CPU vendor (``cpu_vendor``: "amd" or "intel"). Such a row applies only
when auto times the candidates on this host and this host's CPU is that vendor's: the same
ISA runs some libraries' kernels at different speeds on different vendors' cores (OpenVINO's
on AMD's, for one), and when the timing cannot separate the leaders, the tie rule follows the
order measured on the kind of CPU that timed them. The row without a vendor serves every
other case, including a target this host cannot time (the device's vendor is unknown then).

The TVM rule: untuned TVM runs 30-100x slower than ONNX Runtime on CPUs, so TVM is a candidate
only when tuning records cover the model -- records exist for the tasks that carry at least
``COVERAGE_RULE`` (90%) of the model's FLOPs -- or when a row says that nothing else runs on
that target class (armv7l: ``tvm_needs_records = false``). Without a row, the same rule
applies to the profile's own order.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from importlib import resources
from typing import Any, Sequence

from edgekiln.device_profiles import DeviceProfile
from edgekiln.errors import InternalError, UserError
from edgekiln.runtime.compat import CPU_VENDORS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

# Records for the tasks that carry at least this share of the model's FLOPs make TVM a candidate.
COVERAGE_RULE = 0.90
PRECISIONS = ("fp32", "int8")
TARGET_CLASSES = ("x86_64-cpu", "aarch64-cortex-a", "armv7l-cpu", "cuda-gpu")


@dataclass(frozen=True)
class TuningCoverage:
    """How much of a model the tuning records found for it cover.

    ``flops_share``: the share (0..1) of the model's FLOPs carried by tasks that have records;
    ``source``: where the records came from (a database path, "shipped", ...).
    """

    flops_share: float
    source: str = ""

    def __post_init__(self) -> None:
        if not 0.0 <= self.flops_share <= 1.0:
            raise UserError(f"a tuning coverage is a share of FLOPs in [0, 1], got {self.flops_share}")


@dataclass(frozen=True)
class EvidenceRow:
    """One row of evidence.toml: the backends of one target class and precision, fastest first."""

    target_class: str
    precision: str
    order: tuple[str, ...]
    tvm_needs_records: bool
    figures: str
    source: str
    cpu_vendor: str = ""  # "" for every host; else only when timing on this vendor's CPU

    @property
    def key(self) -> str:
        base = f"{self.target_class}/{self.precision}"
        return f"{base}/{self.cpu_vendor}" if self.cpu_vendor else base


@dataclass(frozen=True)
class Plan:
    """The candidates of one compile in the order evidence gives, and those it leaves out."""

    order: tuple[str, ...]
    excluded: dict[str, str]
    row: EvidenceRow | None

    @property
    def order_source(self) -> str:
        return f"evidence row {self.row.key}'s order" if self.row else "the profile's order"


def target_class(profile: DeviceProfile) -> str:
    """The evidence class of a profile: its accelerator first, then its CPU architecture."""
    if profile.is_cuda:
        return "cuda-gpu"
    return {"x86_64": "x86_64-cpu", "aarch64": "aarch64-cortex-a", "armv7l": "armv7l-cpu"}.get(
        profile.cpu.arch, f"{profile.cpu.arch}-cpu"
    )


@functools.lru_cache(maxsize=1)
def rows() -> tuple[EvidenceRow, ...]:
    """Every row of the evidence table shipped with edgekiln."""
    text = resources.files("edgekiln.compile").joinpath("evidence.toml").read_text(encoding="utf-8")
    return parse(tomllib.loads(text))


def parse(data: dict[str, Any]) -> tuple[EvidenceRow, ...]:
    """The rows of an evidence table; a malformed table is an internal error (it ships with edgekiln)."""
    out = []
    fields = {"target_class", "precision", "order", "tvm_needs_records", "figures", "source"}
    for i, row in enumerate(data.get("row") or ()):
        if not fields <= set(row) <= fields | {"cpu_vendor"}:
            raise InternalError(f"evidence row {i} has fields {sorted(row)}, expected {sorted(fields)} [+ cpu_vendor]")
        if row["target_class"] not in TARGET_CLASSES or row["precision"] not in PRECISIONS or not row["order"]:
            raise InternalError(f"evidence row {i}: unknown class or precision, or an empty order")
        if row.get("cpu_vendor", "") not in ("", *CPU_VENDORS.values()):
            raise InternalError(f"evidence row {i}: unknown cpu_vendor {row['cpu_vendor']!r}")
        out.append(
            EvidenceRow(
                row["target_class"],
                row["precision"],
                tuple(row["order"]),
                bool(row["tvm_needs_records"]),
                str(row["figures"]),
                str(row["source"]),
                row.get("cpu_vendor", ""),
            )
        )
    keys = [r.key for r in out]
    if len(set(keys)) != len(keys):
        raise InternalError(f"evidence rows repeat a class and precision: {keys}")
    return tuple(out)


def lookup(
    profile: DeviceProfile,
    precision: str,
    table: Sequence[EvidenceRow] | None = None,
    host_vendor: str = "",
) -> EvidenceRow | None:
    """The row for ``profile``'s target class and ``precision``, or None: the row for
    ``host_vendor`` (this host's CPU vendor, given only when the candidates are timed on this
    host) where there is one, else the row for every host."""
    cls = target_class(profile)
    matching = [r for r in (rows() if table is None else table) if (r.target_class, r.precision) == (cls, precision)]
    return next((r for r in matching if host_vendor and r.cpu_vendor == host_vendor), None) or next(
        (r for r in matching if not r.cpu_vendor), None
    )


def plan(
    profile: DeviceProfile,
    precision: str,
    candidates: Sequence[str],
    coverage: TuningCoverage | None,
    table: Sequence[EvidenceRow] | None = None,
    host_vendor: str = "",
) -> Plan:
    """The ``candidates`` (eligible backends, in the profile's order) ordered by evidence,
    with TVM left out unless ``coverage`` meets the rule or nothing else can run.

    ``coverage`` is None when no tuning records were found for the model; ``host_vendor`` is
    this host's CPU vendor when the candidates will be timed here, else "" (see :func:`lookup`).
    """
    row = lookup(profile, precision, table, host_vendor)
    ranked = [b for b in (row.order if row else ()) if b in candidates]
    ordered = ranked + [b for b in candidates if b not in ranked]
    excluded: dict[str, str] = {}
    needs_records = row.tvm_needs_records if row else True
    others = [b for b in ordered if b != "tvm"]
    if "tvm" in ordered and needs_records and others and not _covered(coverage):
        have = "no tuning records" if coverage is None else f"records for {coverage.flops_share:.0%} of its FLOPs"
        excluded["tvm"] = (
            f"untuned TVM is left out: the model has {have}, and TVM is chosen only when records cover "
            f"the tasks that carry at least {COVERAGE_RULE:.0%} of the model's FLOPs"
            + (f" (evidence {row.key})" if row else "")
        )
    return Plan(tuple(b for b in ordered if b not in excluded), excluded, row)


def _covered(coverage: TuningCoverage | None) -> bool:
    return coverage is not None and coverage.flops_share >= COVERAGE_RULE
