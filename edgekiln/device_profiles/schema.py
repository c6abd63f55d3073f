"""Device profile schema: frozen dataclasses and the validation that builds them.

A profile says everything edgekiln needs to know about one kind of device: how to generate
code for its CPU (LLVM triple, cpu, attributes), which GPU it carries, which cross compiler
builds its runtime library, how to emulate it on the build host, which Python wheels it
installs, which backends to try, and its peak compute and memory bandwidth for estimates.

Profiles are written as TOML (shipped ones live in ``data/<vendor>/<board>.toml``); the
layout of a file is the layout of :meth:`DeviceProfile.to_dict`::

    id = "raspberry-pi/4b-aarch64"
    name = "Raspberry Pi 4 Model B (64-bit OS)"
    description = "..."
    aliases = ["rasp4b"]
    backends = ["tvm", "onnxruntime", "litert"]

    [cpu]         arch, triple, llvm_triple, mcpu, mattr, cores,
                  peak_gflops_fp32, memory_bandwidth_gbs, source, variants (optional)
    [accelerator] kind, name, cuda_arch, peak_gflops_fp32, memory_bandwidth_gbs, source
    [toolchain]   cc, debian_package          (both optional: absent for native x86_64)
    [emulation]   qemu_binary, cpu
    [python]      platform_tags

Every key is checked on load: an unknown key, a missing key, a value of the wrong type or
outside its allowed set raises :class:`~edgekiln.errors.UserError` naming the file, the key
and what would be valid, so a typo in a user's profile never silently falls back to a
default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from edgekiln.errors import UserError

# The architectures the toolchains, emulators and runtime wheels exist for.
ARCHES = ("x86_64", "aarch64", "armv7l")
BACKENDS = ("tvm", "onnxruntime", "litert", "openvino")
ACCELERATOR_KINDS = ("cuda",)

# First component of a target triple that is consistent with each arch. armv7l code is
# described by several spellings (Debian says "arm", LLVM prefers "armv7l"), all of them
# 32-bit ARM; a mismatch here is nearly always a copy-paste error between profiles.
_TRIPLE_ARCHES = {
    "x86_64": ("x86_64",),
    "aarch64": ("aarch64",),
    "armv7l": ("arm", "armv7", "armv7l", "armv7a", "armv7hl", "armv8l"),
}
# qemu-user binary that runs each arch's user-space binaries.
QEMU_BINARIES = {"x86_64": "qemu-x86_64", "aarch64": "qemu-aarch64", "armv7l": "qemu-arm"}

_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*/[a-z0-9][a-z0-9._-]*$")
# Aliases are typed on command lines and match SageMaker Neo's TargetDevice names
# ("rasp4b", "ml_c5"); no "/" so that an alias can never shadow an id.
_ALIAS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_CUDA_ARCH_RE = re.compile(r"^sm_[0-9]{2,3}[a-z]?$")
_MATTR_RE = re.compile(r"^[+-][A-Za-z0-9._-]+$")


@dataclass(frozen=True)
class CpuSpec:
    """The device's CPU: how LLVM targets it and what it can do.

    ``peak_gflops_fp32`` and ``memory_bandwidth_gbs`` are theoretical peaks (datasheet, or
    cores × GHz × FP32 FLOP/cycle, and bus width × transfer rate); ``source`` says which,
    and where a measured figure is far below the peak it says that too.
    """

    arch: str
    triple: str  # Debian multiarch triple: names the cross compiler and sysroot packages
    llvm_triple: str  # what LLVM (TVM) is told to generate code for
    mcpu: str  # an LLVM cpu name valid for ``llc -mcpu``
    mattr: tuple[str, ...]  # LLVM attribute syntax: ("+neon",), ("+avx2", "+fma")
    cores: int
    peak_gflops_fp32: float
    memory_bandwidth_gbs: float
    source: str
    # Profiles (ids or aliases) of the same arch whose CPUs have every feature of this one
    # and more ("aws/c5": AVX-512 beside AVX2). The tvm backend also builds the model for
    # each one that tuning records cover, and the runtime loads the first build the device's
    # CPU can execute: a class of machines gets the faster code where it has the ISA.
    variants: tuple[str, ...] = ()


@dataclass(frozen=True)
class AcceleratorSpec:
    """A GPU the device carries; only CUDA GPUs so far."""

    kind: str
    name: str
    cuda_arch: str  # "sm_87": what nvcc/TVM compile kernels for
    peak_gflops_fp32: float
    memory_bandwidth_gbs: float
    source: str


@dataclass(frozen=True)
class ToolchainSpec:
    """The cross C++ compiler that builds the device's runtime library.

    Both are None for a native x86_64 target: the build host's own compiler is used.
    """

    cc: str | None
    debian_package: str | None


@dataclass(frozen=True)
class EmulationSpec:
    """How to run the device's binaries on the build host with qemu-user."""

    qemu_binary: str
    cpu: str  # a ``qemu-<arch> -cpu help`` name, not an LLVM one


@dataclass(frozen=True)
class PythonSpec:
    """Wheel platform tags the device installs, most specific first."""

    platform_tags: tuple[str, ...]


@dataclass(frozen=True)
class DeviceProfile:
    """One kind of device that edgekiln compiles for."""

    id: str
    name: str
    description: str
    aliases: tuple[str, ...]
    cpu: CpuSpec
    accelerator: AcceleratorSpec | None
    toolchain: ToolchainSpec
    backends: tuple[str, ...]  # ordered preference
    emulation: EmulationSpec | None
    python: PythonSpec

    @property
    def is_cuda(self) -> bool:
        """Whether the device has a CUDA GPU to run kernels on."""
        return self.accelerator is not None and self.accelerator.kind == "cuda"

    def llvm_target(self) -> str:
        """The CPU target in LLVM/TVM command-line form.

        ``"llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72 -mattr=+neon"``; ``-mattr`` is
        left out when the profile lists no attributes. TVM 0.27 no longer parses this form;
        pass :meth:`tvm_target` to ``tvm.target.Target`` instead.
        """
        parts = ["llvm", f"-mtriple={self.cpu.llvm_triple}", f"-mcpu={self.cpu.mcpu}"]
        if self.cpu.mattr:
            parts.append(f"-mattr={','.join(self.cpu.mattr)}")
        return " ".join(parts)

    def tvm_target(self) -> dict[str, Any]:
        """The target as the JSON-dict form ``tvm.target.Target`` accepts.

        For a CUDA profile this is the CUDA target with the CPU as its host, so that host-side
        code is generated for the device's CPU rather than the build machine's.
        """
        host: dict[str, Any] = {
            "kind": "llvm",
            "mtriple": self.cpu.llvm_triple,
            "mcpu": self.cpu.mcpu,
            # Sizes TVM's thread pool for the device, not for the build machine.
            "num-cores": self.cpu.cores,
        }
        if self.cpu.mattr:
            host["mattr"] = list(self.cpu.mattr)
        if self.cpu.arch == "armv7l":
            # Raspberry Pi OS 32-bit is armhf: floats travel in VFP registers.
            host["mfloat-abi"] = "hard"
        if self.accelerator is not None and self.accelerator.kind == "cuda":
            return {"kind": "cuda", "arch": self.accelerator.cuda_arch, "host": host}
        return host

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict in the TOML file's layout; :meth:`from_dict` reads it back."""
        cpu = self.cpu
        acc = self.accelerator
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "aliases": list(self.aliases),
            "backends": list(self.backends),
            "cpu": {
                "arch": cpu.arch,
                "triple": cpu.triple,
                "llvm_triple": cpu.llvm_triple,
                "mcpu": cpu.mcpu,
                "mattr": list(cpu.mattr),
                "cores": cpu.cores,
                "peak_gflops_fp32": cpu.peak_gflops_fp32,
                "memory_bandwidth_gbs": cpu.memory_bandwidth_gbs,
                "source": cpu.source,
                **({"variants": list(cpu.variants)} if cpu.variants else {}),
            },
            "accelerator": None
            if acc is None
            else {
                "kind": acc.kind,
                "name": acc.name,
                "cuda_arch": acc.cuda_arch,
                "peak_gflops_fp32": acc.peak_gflops_fp32,
                "memory_bandwidth_gbs": acc.memory_bandwidth_gbs,
                "source": acc.source,
            },
            "toolchain": {
                "cc": self.toolchain.cc,
                "debian_package": self.toolchain.debian_package,
            },
            "emulation": None
            if self.emulation is None
            else {"qemu_binary": self.emulation.qemu_binary, "cpu": self.emulation.cpu},
            "python": {"platform_tags": list(self.python.platform_tags)},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<profile>") -> DeviceProfile:
        """Validate a parsed profile (TOML or :meth:`to_dict` output) and build it.

        ``source`` names the file in error messages. JSON ``null`` counts as absent, so
        ``to_dict`` output reads back unchanged.

        Raises:
            UserError: an unknown, missing or ill-typed key, or a value outside its set.
        """
        return _parse_profile(data, source)


# --------------------------------------------------------------------------------------
# Validation


class _Table:
    """Reads typed keys out of one TOML table; errors name the file and the dotted key.

    :meth:`finish` rejects any key outside ``allowed``, listing the valid ones, so that a
    misspelt key is an error instead of a silently ignored setting.
    """

    def __init__(self, data: Any, *, source: str, path: str, allowed: tuple[str, ...]):
        self.source = source
        self.path = path  # "" for the top level, "cpu" for [cpu]
        self.allowed = allowed
        if not isinstance(data, Mapping):
            raise self._error(f"{self._where()} must be a table, not {_type_name(data)}")
        self.data = data

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def _error(self, message: str, valid: str | None = None) -> UserError:
        # What would be valid goes in the message itself, not a hint: library callers
        # that print str(exc) should see it too.
        if valid:
            message = f"{message}; {valid}"
        return UserError(f"device profile {self.source}: {message}")

    def _get(self, name: str, required: bool) -> Any:
        value = self.data.get(name)
        if value is None and required:
            raise self._error(
                f"missing required key '{self.key(name)}'",
                valid=f"keys in {self._where()}: {', '.join(self.allowed)}",
            )
        return value

    def _where(self) -> str:
        return f"[{self.path}]" if self.path else "the top level"

    def _type_error(self, name: str, expected: str, value: Any) -> UserError:
        return self._error(f"key '{self.key(name)}' must be {expected}, not {_type_name(value)}")

    def str_(self, name: str, *, required: bool = True) -> str | None:
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self._type_error(name, "a string", value)
        if not value.strip():
            raise self._error(f"key '{self.key(name)}' must not be empty")
        return value

    def choice(self, name: str, valid: tuple[str, ...], *, context: str = "") -> str:
        value = self.str_(name)
        assert value is not None
        if value not in valid:
            raise self._error(
                f"unknown {name} '{value}' in '{self.key(name)}'",
                valid=f"valid{context}: {', '.join(valid)}",
            )
        return value

    def matching(self, name: str, pattern: re.Pattern[str], what: str) -> str:
        value = self.str_(name)
        assert value is not None
        if not pattern.match(value):
            raise self._error(f"key '{self.key(name)}' = {value!r} is not {what}")
        return value

    def int_(self, name: str, *, minimum: int) -> int:
        value = self._get(name, True)
        # bool is an int subclass; "cores = true" is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._type_error(name, "an integer", value)
        if value < minimum:
            raise self._error(f"key '{self.key(name)}' must be >= {minimum}, not {value}")
        return value

    def positive_float(self, name: str) -> float:
        value = self._get(name, True)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._type_error(name, "a number", value)
        if not value > 0:  # also rejects nan
            raise self._error(f"key '{self.key(name)}' must be > 0, not {value}")
        return float(value)

    def str_list(self, name: str, *, required: bool = True, non_empty: bool = True) -> tuple[str, ...]:
        value = self._get(name, required)
        if value is None:
            return ()
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise self._type_error(name, "a list of strings", value)
        if non_empty and not value:
            raise self._error(f"key '{self.key(name)}' must not be empty")
        if len(set(value)) != len(value):
            raise self._error(f"key '{self.key(name)}' lists a value twice: {list(value)}")
        return tuple(value)

    def table(self, name: str, allowed: tuple[str, ...], *, required: bool = True) -> _Table | None:
        value = self._get(name, required)
        if value is None:
            return None
        return _Table(value, source=self.source, path=self.key(name), allowed=allowed)

    def finish(self) -> None:
        unknown = [k for k in self.data if k not in self.allowed]
        if unknown:
            raise self._error(
                f"unknown key '{self.key(str(unknown[0]))}'",
                valid=f"valid keys in {self._where()}: {', '.join(self.allowed)}",
            )


def _type_name(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


_TOP_KEYS = (
    "id", "name", "description", "aliases", "backends",
    "cpu", "accelerator", "toolchain", "emulation", "python",
)  # fmt: skip
_CPU_KEYS = (
    "arch", "triple", "llvm_triple", "mcpu", "mattr", "cores",
    "peak_gflops_fp32", "memory_bandwidth_gbs", "source", "variants",
)  # fmt: skip
_ACCELERATOR_KEYS = (
    "kind", "name", "cuda_arch", "peak_gflops_fp32", "memory_bandwidth_gbs", "source",
)  # fmt: skip
_TOOLCHAIN_KEYS = ("cc", "debian_package")
_EMULATION_KEYS = ("qemu_binary", "cpu")
_PYTHON_KEYS = ("platform_tags",)


def _parse_profile(data: Mapping[str, Any], source: str) -> DeviceProfile:
    top = _Table(data, source=source, path="", allowed=_TOP_KEYS)
    # Unknown keys first: a misspelt key ("alias") is a likelier cause of a later
    # "missing key" error than a forgotten one, so name it first.
    top.finish()

    profile_id = top.matching("id", _ID_RE, "of the form 'vendor/board' (lowercase)")
    name = top.str_("name")
    description = top.str_("description", required=False) or ""
    aliases = top.str_list("aliases", required=False, non_empty=False)
    for alias in aliases:
        if not _ALIAS_RE.match(alias):
            raise top._error(
                f"alias {alias!r} in 'aliases' is not a plain name",
                valid="letters, digits and . _ + - only; no '/'",
            )
    backends = top.str_list("backends")
    for backend in backends:
        if backend not in BACKENDS:
            raise top._error(
                f"unknown backend '{backend}' in 'backends'",
                valid=f"valid: {', '.join(BACKENDS)}",
            )

    cpu = _parse_cpu(top.table("cpu", _CPU_KEYS))
    acc_table = top.table("accelerator", _ACCELERATOR_KEYS, required=False)
    accelerator = None if acc_table is None else _parse_accelerator(acc_table)
    tc_table = top.table("toolchain", _TOOLCHAIN_KEYS, required=False)
    toolchain = ToolchainSpec(cc=None, debian_package=None)
    if tc_table is not None:
        tc_table.finish()
        toolchain = ToolchainSpec(
            cc=tc_table.str_("cc", required=False),
            debian_package=tc_table.str_("debian_package", required=False),
        )
    emu_table = top.table("emulation", _EMULATION_KEYS, required=False)
    emulation = None if emu_table is None else _parse_emulation(emu_table, cpu.arch)
    py_table = top.table("python", _PYTHON_KEYS)
    assert py_table is not None
    py_table.finish()
    tags = py_table.str_list("platform_tags")
    for tag in tags:
        # A wheel tag for another arch would install wheels the device cannot load.
        if not tag.endswith(f"_{cpu.arch}"):
            raise py_table._error(
                f"platform tag '{tag}' in 'python.platform_tags' is not for arch '{cpu.arch}'",
                valid=f"tags for this profile end in _{cpu.arch}",
            )

    assert name is not None
    return DeviceProfile(
        id=profile_id,
        name=name,
        description=description,
        aliases=aliases,
        cpu=cpu,
        accelerator=accelerator,
        toolchain=toolchain,
        backends=backends,
        emulation=emulation,
        python=PythonSpec(platform_tags=tags),
    )


def _parse_cpu(table: _Table | None) -> CpuSpec:
    assert table is not None
    table.finish()
    arch = table.choice("arch", ARCHES)
    triple = table.str_("triple")
    llvm_triple = table.str_("llvm_triple")
    assert triple is not None and llvm_triple is not None
    for key, value in (("triple", triple), ("llvm_triple", llvm_triple)):
        if value.split("-", 1)[0] not in _TRIPLE_ARCHES[arch]:
            raise table._error(
                f"key '{table.key(key)}' = {value!r} does not match arch '{arch}'",
                valid=f"it should start with one of: {', '.join(_TRIPLE_ARCHES[arch])}",
            )
    mattr = table.str_list("mattr", required=False, non_empty=False)
    for attr in mattr:
        if not _MATTR_RE.match(attr):
            raise table._error(
                f"attribute {attr!r} in 'cpu.mattr' is not in LLVM form",
                valid="write '+feature' or '-feature', e.g. '+neon'",
            )
    mcpu = table.str_("mcpu")
    source = table.str_("source")
    assert mcpu is not None and source is not None
    return CpuSpec(
        arch=arch,
        triple=triple,
        llvm_triple=llvm_triple,
        mcpu=mcpu,
        mattr=mattr,
        cores=table.int_("cores", minimum=1),
        peak_gflops_fp32=table.positive_float("peak_gflops_fp32"),
        memory_bandwidth_gbs=table.positive_float("memory_bandwidth_gbs"),
        source=source,
        # Checked against the profiles they name when a build uses them (compile time):
        # a profile file alone cannot see the others.
        variants=_variants(table),
    )


def _variants(table: _Table) -> tuple[str, ...]:
    names = table.str_list("variants", required=False)
    for name in names:
        if name.endswith(".toml"):
            raise table._error(
                f"variant {name!r} in 'cpu.variants' is a file",
                valid="name shipped profiles by id or alias (edgekiln profiles lists them)",
            )
    return names


def _parse_accelerator(table: _Table) -> AcceleratorSpec:
    table.finish()
    kind = table.choice("kind", ACCELERATOR_KINDS)
    name = table.str_("name")
    cuda_arch = table.matching("cuda_arch", _CUDA_ARCH_RE, "a CUDA arch like 'sm_87'")
    source = table.str_("source")
    assert name is not None and source is not None
    return AcceleratorSpec(
        kind=kind,
        name=name,
        cuda_arch=cuda_arch,
        peak_gflops_fp32=table.positive_float("peak_gflops_fp32"),
        memory_bandwidth_gbs=table.positive_float("memory_bandwidth_gbs"),
        source=source,
    )


def _parse_emulation(table: _Table, arch: str) -> EmulationSpec:
    table.finish()
    expected = QEMU_BINARIES[arch]
    qemu_binary = table.choice("qemu_binary", (expected,), context=f" for arch '{arch}'")
    cpu = table.str_("cpu")
    assert cpu is not None
    return EmulationSpec(qemu_binary=qemu_binary, cpu=cpu)
