"""The host's qemu-user binary for a profile, checked to be new enough to run the device wheels."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgekiln.emulation.recipe import resolve_profile
from edgekiln.errors import DependencyError

if TYPE_CHECKING:  # pragma: no cover
    from edgekiln.device_profiles import DeviceProfile

# The oldest QEMU that runs the device wheels: 7.2 (Debian 12's own qemu-user) dies with
# SIGILL/SIGSEGV importing onnxruntime's aarch64 wheel; 8.x and later do not.
QEMU_MIN_MAJOR = 8
QEMU_PACKAGE = "qemu-user"
QEMU_HINT = (
    "run `make setup`, which installs the Debian package qemu-user (on Debian 12 from "
    "bookworm-backports), or `apt-get install -t bookworm-backports qemu-user`"
)


@dataclass(frozen=True)
class Qemu:
    """A usable qemu-user binary for one profile."""

    binary: str  # as the profile names it: "qemu-aarch64"
    path: str  # where it is on this host
    version: str  # "10.0.2"
    cpu: str  # the profile's -cpu model


def find_qemu(profile: DeviceProfile | str) -> Qemu:
    """The profile's qemu-user binary on PATH, checked to be new enough.

    Raises:
        DependencyError: it is missing or older than QEMU 8; the message names the package.
    """
    profile = resolve_profile(profile)
    assert profile.emulation is not None
    binary = profile.emulation.qemu_binary
    path = shutil.which(binary)
    if path is None:
        raise DependencyError(
            f"{binary} is not installed; emulating {profile.id} needs the Debian package {QEMU_PACKAGE} "
            f"(QEMU >= {QEMU_MIN_MAJOR})",
            hint=QEMU_HINT,
        )
    stat = os.stat(path)
    version = _qemu_version(path, stat.st_mtime_ns, stat.st_size)
    major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
    if major < QEMU_MIN_MAJOR:
        raise DependencyError(
            f"{path} is QEMU {version or '(unknown version)'}; emulating {profile.id} needs QEMU >= "
            f"{QEMU_MIN_MAJOR} (older ones crash in the device wheels)",
            hint=QEMU_HINT,
        )
    return Qemu(binary=binary, path=path, version=version, cpu=profile.emulation.cpu)


@functools.lru_cache(maxsize=16)
def _qemu_version(path: str, mtime_ns: int, size: int) -> str:
    # Keyed on mtime and size too: `make setup` may replace the binary while we run.
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    match = re.search(r"version (\d+(?:\.\d+)*)", proc.stdout)
    return match.group(1) if match else ""
