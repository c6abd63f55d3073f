"""Host facts: what this machine is and whether it can execute a profile's artifacts.

The facts themselves (architecture, CPU features, the GPU, the cache root) are read in
:mod:`edgekiln.runtime.compat`, the lowest layer that needs them (the device checks an
artifact with them); this module gives them to the build side under one name and adds
what only the build side asks: can this host run a profile, and what to print about it.
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any, Sequence

from edgekiln.runtime.compat import HostInfo, cache_root, cuda_info, host_info, usable_cpus

__all__ = [
    "HostInfo",
    "cache_root",
    "cannot_execute",
    "cuda_info",
    "gpu_present",
    "host_info",
    "machine_description",
    "usable_cpus",
]


def gpu_present() -> bool:
    """True when an NVIDIA driver answers and reports a GPU."""
    return cuda_info() is not None


def cannot_execute(profile: Any, required_cpu_features: Sequence[str] = ()) -> str | None:
    """None when this machine can run artifacts for ``profile``, else why not.

    ``required_cpu_features`` are the CPU flags the profile's code uses (the compiler knows
    them from its target; this layer does not).
    """
    host = host_info()
    if profile.cpu.arch != host.arch:
        return f"this host is {host.arch}; the profile's CPU is {profile.cpu.arch}"
    missing = [f for f in required_cpu_features if host.cpu_features and f not in host.cpu_features]
    if missing:
        return f"this host's CPU lacks {', '.join(missing)}"
    if profile.is_cuda and not gpu_present():
        return "no NVIDIA GPU is attached to this host"
    return None


def machine_description() -> dict[str, Any]:
    """The machine a report was measured on: CPU model, cores, arch, Python, system."""
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "arch": host_info().arch,
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
    }
