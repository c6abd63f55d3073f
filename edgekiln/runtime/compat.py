"""Checks that an artifact was built for this device, before anything is loaded.

A compiler/runtime mismatch must show up as a sentence naming what the artifact needs and
what the device has, not as an obscure loader error from dlopen.
"""

from __future__ import annotations

import functools
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

from edgekiln.artifact.manifest import Manifest
from edgekiln.errors import CompatibilityError, UserError

# platform.machine() spellings that mean the same ABI as the profile's arch names.
_ARCH_ALIASES = {
    "x86_64": "x86_64",
    "amd64": "x86_64",
    "aarch64": "aarch64",
    "arm64": "aarch64",
    "armv7l": "armv7l",
    "armv8l": "armv7l",  # a 32-bit userland on a 64-bit ARM core
}

DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class HostInfo:
    """What this machine is, as far as loading an artifact is concerned."""

    arch: str
    os: str
    glibc: str | None
    cpu_features: frozenset[str]
    # "amd" or "intel" from /proc/cpuinfo's vendor_id; "" for others and where it is unknown.
    cpu_vendor: str = ""


@functools.lru_cache(maxsize=1)
def host_info() -> HostInfo:
    machine = platform.machine().lower()
    libc, version = platform.libc_ver()
    features, vendor = _cpu_info()
    return HostInfo(
        arch=_ARCH_ALIASES.get(machine, machine),
        os=platform.system().lower(),
        glibc=version if libc == "glibc" and version else None,
        cpu_features=features,
        cpu_vendor=vendor,
    )


def cache_root() -> Path:
    """Where edgekiln keeps what it builds or fetches once per machine (runtime libraries,
    emulated boards): ``$EDGEKILN_CACHE``, else ``~/.cache/edgekiln``."""
    return Path(os.environ.get("EDGEKILN_CACHE", Path.home() / ".cache" / "edgekiln"))


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# vendor_id -> the name evidence rows use (edgekiln.compile.evidence).
CPU_VENDORS = {"AuthenticAMD": "amd", "GenuineIntel": "intel"}


def _cpu_info(path: str = "/proc/cpuinfo") -> tuple[frozenset[str], str]:
    # /proc/cpuinfo "flags" (x86) or "Features" (ARM): the kernel's view of the ISA; and x86's
    # vendor_id, since the same ISA runs some libraries' kernels faster on one vendor's cores.
    features: frozenset[str] = frozenset()
    vendor = ""
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "vendor_id" and not vendor:
                    vendor = CPU_VENDORS.get(value.strip(), "")
                elif key in ("flags", "Features"):
                    features = frozenset(value.split())
                    break  # the first CPU's block is enough, and vendor_id comes before flags
    except OSError:
        pass
    return features, vendor


def version_tuple(text: str) -> tuple[int, ...]:
    """The leading numeric release of a version string: "1.32.0" -> (1, 32, 0),
    "2026.4.1-22982-e213a14" -> (2026, 4, 1), "1.20.0+cu12" -> (1, 20, 0), "2.36" -> (2, 36)."""
    match = re.match(r"\d+(?:\.\d+)*", text.strip())
    return tuple(int(p) for p in match.group(0).split(".")) if match else ()


@dataclass(frozen=True)
class CudaInfo:
    """The NVIDIA driver and GPU 0 as the CUDA driver API reports them."""

    driver_version: int  # e.g. 13000 for CUDA 13.0
    compute_capability: tuple[int, int]
    name: str


def cuda_info() -> CudaInfo | None:
    """The GPU this process would use, or None when there is no driver or no GPU."""
    import ctypes

    try:
        lib = ctypes.CDLL("libcuda.so.1")
        cu_init, cu_version, cu_get = lib.cuInit, lib.cuDriverGetVersion, lib.cuDeviceGet
        cu_attr, cu_name = lib.cuDeviceGetAttribute, lib.cuDeviceGetName
    except (OSError, AttributeError):
        return None
    version, device, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    if cu_init(0) != 0 or cu_version(ctypes.byref(version)) != 0 or cu_get(ctypes.byref(device), 0) != 0:
        return None
    # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75, _MINOR = 76 (cuda.h)
    if cu_attr(ctypes.byref(major), 75, device) != 0 or cu_attr(ctypes.byref(minor), 76, device) != 0:
        return None
    name = ctypes.create_string_buffer(256)
    cu_name(name, 256, device)
    return CudaInfo(version.value, (major.value, minor.value), name.value.decode(errors="replace"))


def _cuda_problems(manifest: Manifest, gpu: CudaInfo | None) -> list[str]:
    req = manifest.runtime
    if gpu is None:
        return [f"the artifact needs an NVIDIA GPU ({req.cuda_arch}) and its driver; this device has none"]
    found = []
    have = gpu.compute_capability[0] * 10 + gpu.compute_capability[1]
    want = int("".join(ch for ch in (req.cuda_arch or "") if ch.isdigit()) or 0)
    has_ptx = bool(manifest.backend_options.get("embed_ptx", False))
    # SASS runs only on its own major version at the same or a higher minor; PTX lets the
    # driver compile for any newer GPU.
    same_family = have // 10 == want // 10 and have >= want
    if not same_family and not (has_ptx and have >= want):
        found.append(f"the artifact holds GPU code for {req.cuda_arch}; this GPU ({gpu.name}) is sm_{have}")
    if req.cuda_runtime and req.cuda_runtime.startswith("libcudart.so."):
        major = req.cuda_runtime.rsplit(".", 1)[-1]
        if major.isdigit() and gpu.driver_version // 1000 < int(major):
            found.append(
                f"the artifact needs a driver for CUDA {major}; this driver supports CUDA "
                f"{gpu.driver_version // 1000}.{gpu.driver_version % 1000 // 10}"
            )
    return found


def problems(
    manifest: Manifest, device: str, host: HostInfo | None = None, gpu: CudaInfo | None | bool = False
) -> list[str]:
    """Every reason this host cannot run the artifact on ``device`` (empty when it can).

    ``host`` and ``gpu`` default to this machine's; tests pass their own.
    """
    host = host or host_info()
    req = manifest.runtime
    found: list[str] = []
    if req.arch != host.arch:
        found.append(f"the artifact needs a {req.arch} CPU; this device is {host.arch}")
    if req.os != host.os:
        found.append(f"the artifact needs {req.os}; this device runs {host.os}")
    if req.glibc and host.glibc and version_tuple(host.glibc) < version_tuple(req.glibc):
        found.append(f"the artifact needs glibc >= {req.glibc}; this device has {host.glibc}")
    if req.arch == host.arch and host.cpu_features:
        missing = sorted(f for f in req.cpu_features if f not in host.cpu_features)
        if missing:
            found.append(f"the artifact needs CPU features {', '.join(missing)} that this CPU lacks")
    if req.cuda_arch and device == "cuda":
        found += _cuda_problems(manifest, cuda_info() if gpu is False else gpu)  # type: ignore[arg-type]
    if req.cuda_arch and device != "cuda":
        found.append(f"the artifact holds CUDA code for {req.cuda_arch}; load it with device='cuda'")
    if not req.cuda_arch and device == "cuda":
        found.append(f"the artifact was built for the CPU of profile {manifest.profile}; load it with device='cpu'")
    return found


def check(manifest: Manifest, device: str) -> None:
    """Raise CompatibilityError listing every mismatch between the artifact and this host."""
    if device not in DEVICES:
        raise UserError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    found = problems(manifest, device)
    if found:
        raise CompatibilityError(f"artifact for profile {manifest.profile} cannot run here: " + "; ".join(found))
