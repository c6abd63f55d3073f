"""The TVM runtime libraries that artifacts bundle, one set per device platform.

An artifact carries ``libtvm_runtime.so`` (and ``libtvm_runtime_cuda.so`` for GPU profiles)
from the apache-tvm release whose compiler built it, for the device's platform, so the
device needs only numpy and apache-tvm-ffi.  For the build host's own platform they come
from the installed apache-tvm package; for other platforms from that release's wheel for
the platform, fetched once from PyPI into a cache (``edgekiln fetch-runtime ARCH``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from edgekiln.errors import DependencyError, UserError
from edgekiln.execute.host import cache_root, host_info

# Wheel platform tag per device arch.  apache-tvm publishes manylinux_2_28 wheels for
# x86_64 and aarch64 and none for 32-bit ARM.
WHEEL_PLATFORMS = {"x86_64": "manylinux_2_28_x86_64", "aarch64": "manylinux_2_28_aarch64"}
_LIBS = ("libtvm_runtime.so", "libtvm_runtime_cuda.so")


@dataclass(frozen=True)
class RuntimeLibs:
    arch: str
    version: str
    runtime: Path
    cuda: Path | None
    glibc: str | None


def tvm_version() -> str:
    return metadata.version("apache-tvm")


def _cache_dir(arch: str, version: str) -> Path:
    return cache_root() / "tvm-runtime" / version / arch


def unavailable_reason(arch: str) -> str | None:
    """Why no runtime library can be bundled for ``arch``, or None when one can."""
    if arch not in WHEEL_PLATFORMS:
        return (
            f"apache-tvm {tvm_version()} publishes no {arch} release, so the artifact bundles no "
            f"TVM runtime library; the device must provide libtvm_runtime.so of that version "
            f"built from source"
        )
    return None


def find(arch: str) -> RuntimeLibs | None:
    """The runtime libraries for ``arch``; None when the release has none for it."""
    if unavailable_reason(arch):
        return None
    version = tvm_version()
    if arch == host_info().arch:
        import tvm

        lib = Path(tvm.__file__).parent / "lib"
        cuda = lib / "libtvm_runtime_cuda.so"
        return RuntimeLibs(
            arch, version, lib / "libtvm_runtime.so", cuda if cuda.exists() else None, _glibc_of(WHEEL_PLATFORMS[arch])
        )
    cached = _cache_dir(arch, version)
    info = cached / "wheel.json"
    if not info.is_file():
        raise DependencyError(
            f"the TVM runtime library for {arch} (apache-tvm {version}) is not on this build host",
            hint=f"run `edgekiln fetch-runtime {arch}` once; it downloads that release's {arch} wheel from PyPI",
        )
    tag = json.loads(info.read_text())["platform"]
    cuda = cached / "libtvm_runtime_cuda.so"
    return RuntimeLibs(arch, version, cached / "libtvm_runtime.so", cuda if cuda.exists() else None, _glibc_of(tag))


def _glibc_of(tag: str) -> str | None:
    # manylinux_2_28_aarch64 → glibc 2.28 (PEP 600)
    parts = tag.split("_")
    if len(parts) >= 3 and parts[0] == "manylinux" and parts[1].isdigit() and parts[2].isdigit():
        return f"{parts[1]}.{parts[2]}"
    return None


def fetch(arch: str) -> Path:
    """Download the apache-tvm wheel for ``arch`` and keep its runtime libraries in the cache."""
    if arch not in WHEEL_PLATFORMS:
        reason = unavailable_reason(arch) or f"unknown arch {arch!r}"
        raise UserError(f"cannot fetch a TVM runtime for {arch}: {reason}")
    version = tvm_version()
    target = _cache_dir(arch, version)
    if (target / "wheel.json").is_file():
        return target
    with tempfile.TemporaryDirectory(prefix="edgekiln-wheel-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--platform",
            WHEEL_PLATFORMS[arch],
            "--python-version",
            "3.11",
            f"apache-tvm=={version}",
            "-d",
            tmp,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise DependencyError(f"cannot download apache-tvm {version} for {arch}: {last}")
        staging = Path(tempfile.mkdtemp(prefix=f".{arch}-", dir=_ensure(target.parent)))
        try:
            with zipfile.ZipFile(wheels[0]) as wheel:
                for lib in _LIBS:
                    try:
                        data = wheel.read(f"tvm/lib/{lib}")
                    except KeyError:
                        continue
                    (staging / lib).write_bytes(data)
            if not (staging / "libtvm_runtime.so").exists():
                raise DependencyError(f"the apache-tvm {version} wheel for {arch} holds no libtvm_runtime.so")
            (staging / "wheel.json").write_text(
                json.dumps({"wheel": wheels[0].name, "platform": WHEEL_PLATFORMS[arch]})
            )
            # Rename into place last, so a failed fetch never looks like a finished one.
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
