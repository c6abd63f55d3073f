"""Checks that an artifact was built for this device, before anything is loaded.

A compiler/runtime mismatch must show up as a sentence naming what the artifact needs and
what the device has, not as an obscure loader error from dlopen.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass

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


@functools.lru_cache(maxsize=1)
def host_info() -> HostInfo:
    machine = platform.machine().lower()
    libc, version = platform.libc_ver()
    return HostInfo(
        arch=_ARCH_ALIASES.get(machine, machine),
        os=platform.system().lower(),
        glibc=version if libc == "glibc" and version else None,
        cpu_features=_cpu_features(),
    )


def _cpu_features() -> frozenset[str]:
    # /proc/cpuinfo "flags" (x86) or "Features" (ARM): the kernel's view of the ISA.
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())


def problems(manifest: Manifest, device: str, host: HostInfo | None = None) -> list[str]:
    """Every reason this host cannot run the artifact on ``device`` (empty when it can)."""
    host = host or host_info()
    req = manifest.runtime
    found: list[str] = []
    if req.arch != host.arch:
        found.append(f"the artifact needs a {req.arch} CPU; this device is {host.arch}")
    if req.os != host.os:
        found.append(f"the artifact needs {req.os}; this device runs {host.os}")
    if req.glibc and host.glibc and _version_tuple(host.glibc) < _version_tuple(req.glibc):
        found.append(f"the artifact needs glibc >= {req.glibc}; this device has {host.glibc}")
    if req.arch == host.arch and host.cpu_features:
        missing = sorted(f for f in req.cpu_features if f not in host.cpu_features)
        if missing:
            found.append(f"the artifact needs CPU features {', '.join(missing)} that this CPU lacks")
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
        raise CompatibilityError(
            f"artifact for profile {manifest.profile} cannot run here: " + "; ".join(found)
        )
