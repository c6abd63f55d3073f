"""Builds the native runtime (libedgekiln + edgekiln-run) for a device profile's CPU.

The TVM runtime (only what a Relax VM artifact for the CPU needs) and tvm-ffi are compiled
from the sources that the installed apache-tvm and apache-tvm-ffi wheels ship, together
with edgekiln's C API (``edgekiln/native``), by CMake and the profile's cross compiler, into
one stripped shared library with libstdc++ linked in: a device needs glibc and nothing
else. Builds are cached per architecture and version (:mod:`edgekiln.runtime.native`).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from edgekiln.compile.toolchain import find_tools
from edgekiln.device_profiles import DeviceProfile
from edgekiln.errors import BackendError, DependencyError, UserError
from edgekiln.execute.progress import NullProgress, Progress
from edgekiln.runtime import native
from edgekiln.runtime.native import BUILD_INFO, NativeRuntime

# The CPU architectures built for; a profile's arch name is also CMake's
# CMAKE_SYSTEM_PROCESSOR when cross-compiling.
_ARCHES = ("x86_64", "aarch64", "armv7l")
_BUILD_SECONDS_LIMIT = 3600


@dataclass(frozen=True)
class BuildOptions:
    """How to build: ``jobs`` parallel compiles (the build host's cores are often shared),
    ``force`` rebuilds even when the cache holds this version."""

    jobs: int = 2
    force: bool = False

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise UserError("the number of build jobs must be at least 1")


def ensure_native_runtime(
    profile: DeviceProfile, options: BuildOptions | None = None, progress: Progress | None = None
) -> NativeRuntime:
    """The native runtime for ``profile``'s CPU, built first when the cache lacks it."""
    options = options or BuildOptions()
    progress = progress or NullProgress()
    if profile.is_cuda:
        raise UserError(f"the native runtime runs on the CPU; {profile.id} is a CUDA profile")
    arch = profile.cpu.arch
    if arch not in _ARCHES:
        raise UserError(f"the native runtime is not built for {arch} (only {', '.join(_ARCHES)})")
    found = native.find_native_runtime(arch)
    if found is not None and not options.force:
        return found
    target = native.build_dir(arch)
    target.parent.mkdir(parents=True, exist_ok=True)
    # One build per architecture at a time: builds share the object folder.
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = native.find_native_runtime(arch)
        if found is not None and not options.force:
            return found  # built by another process while this one waited
        with progress.step(f"build the native runtime for {arch} ({native.native_version()})"):
            _build(profile, target, options)
    built = native.find_native_runtime(arch)
    assert built is not None
    return built


def build_info(runtime: NativeRuntime) -> dict:
    """What build-runtime wrote about a build: sizes, sha256 and the glibc it needs."""
    return json.loads((runtime.root / BUILD_INFO).read_text())


def _sources() -> tuple[Path, Path]:
    """The TVM runtime and tvm-ffi source trees of the installed wheels."""
    try:
        import tvm
        import tvm_ffi
    except ImportError as exc:
        raise DependencyError(
            f"building the native runtime needs the apache-tvm sources ({exc})", hint="pip install 'edgekiln[compile]'"
        ) from None
    tvm_dir, ffi_dir = Path(tvm.__file__).parent, Path(tvm_ffi.__file__).parent
    if not (tvm_dir / "src" / "runtime" / "vm" / "vm.cc").is_file() or not (ffi_dir / "src" / "ffi").is_dir():
        raise DependencyError(f"the installed apache-tvm ({tvm_dir}) ships no runtime sources")
    return tvm_dir, ffi_dir


def _compilers(profile: DeviceProfile) -> tuple[str, str, str]:
    """The C++ compiler, the C compiler and strip of the profile's toolchain."""
    cxx, cc, strip = find_tools(profile, "gcc", "strip")
    if shutil.which("cmake") is None:
        raise DependencyError("building the native runtime needs CMake", hint="apt-get install cmake")
    return cxx, cc, strip


def _forget_other_checkouts(work: Path) -> None:
    """Drop the object tree when CMake configured it for sources elsewhere (another
    edgekiln install or checkout): CMake refuses to reuse it, and its objects are not these
    sources' anyway."""
    cache = work / "CMakeCache.txt"
    try:
        lines = cache.read_text(errors="replace").splitlines()
    except OSError:
        return
    home = next((line.split("=", 1)[1] for line in lines if line.startswith("CMAKE_HOME_DIRECTORY:")), None)
    if home is not None and Path(home).resolve() != native.SOURCE_DIR.resolve():
        shutil.rmtree(work, ignore_errors=True)


def _build(profile: DeviceProfile, target: Path, options: BuildOptions) -> None:
    tvm_dir, ffi_dir = _sources()
    cxx, cc, strip = _compilers(profile)
    arch = profile.cpu.arch
    # The object files stay in the cache, so that a rebuild after a source change compiles
    # only what changed; the install goes to a private folder renamed into place at the end.
    work = target.parent / "build"
    _forget_other_checkouts(work)
    work.mkdir(parents=True, exist_ok=True)
    configure = [
        "cmake", "-S", str(native.SOURCE_DIR), "-B", str(work),
        f"-DTVM_SOURCE_DIR={tvm_dir}", f"-DTVM_FFI_SOURCE_DIR={ffi_dir}",
        f"-DEDGEKILN_NATIVE_VERSION={native.native_version()}",
        "-DCMAKE_BUILD_TYPE=MinSizeRel", f"-DCMAKE_CXX_COMPILER={cxx}", f"-DCMAKE_C_COMPILER={cc}",
        f"-DCMAKE_STRIP={shutil.which(strip)}",
    ]  # fmt: skip
    if profile.toolchain.cc:
        configure += ["-DCMAKE_SYSTEM_NAME=Linux", f"-DCMAKE_SYSTEM_PROCESSOR={arch}"]
    started = time.monotonic()
    _run(configure, "configure")
    _run(["cmake", "--build", str(work), "--", f"-j{options.jobs}"], "compile")
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _run(["cmake", "--install", str(work), "--prefix", str(staging), "--strip"], "install")
        (staging / BUILD_INFO).write_text(json.dumps(_describe(staging, arch, time.monotonic() - started), indent=2))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # Builds of earlier sources are never used again (the version names the sources).
    for old in target.parent.iterdir():
        if old.name not in ("build", target.name) and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)


def _run(cmd: list[str], what: str) -> None:
    # Below the interactive work on the machine: a build takes minutes of every core given.
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=_BUILD_SECONDS_LIMIT, preexec_fn=lambda: os.nice(10)
    )
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr + proc.stdout).splitlines() if "error" in line.lower()]
        detail = (lines or (proc.stderr or proc.stdout).strip().splitlines() or ["no output"])[-1]
        raise BackendError(f"the native runtime's {what} step failed: {detail[:300]}")


def _describe(root: Path, arch: str, seconds: float) -> dict:
    from edgekiln.artifact.package import sha256_file

    files = {}
    for rel in (native.LIBRARY, native.RUNNER, native.HEADER):
        path = root / rel
        files[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    return {
        "arch": arch,
        "version": native.native_version(),
        "glibc": required_glibc(root / native.LIBRARY),
        "build_seconds": round(seconds, 1),
        "files": files,
    }


def required_glibc(library: Path) -> str | None:
    """The newest GLIBC_x.y symbol version that ``library`` references."""
    versions = {
        tuple(int(p) for p in m.split(b".")) for m in re.findall(rb"GLIBC_(\d+\.\d+)\x00", library.read_bytes())
    }
    return ".".join(map(str, max(versions))) if versions else None


# Where an artifact carries the native runtime, and each file's manifest role.
BUNDLED = {
    native.LIBRARY: "native-runtime-library",
    native.RUNNER: "native-runner",
    native.HEADER: "native-header",
}


def bundle(profile: DeviceProfile, root: Path, progress: Progress) -> tuple[dict[str, str], dict]:
    """Copy the profile's native runtime into the artifact folder ``root``; returns the
    files (path → role) and the manifest's ``native_runtime`` record (version, glibc, and
    the sha256 of each library)."""
    built = ensure_native_runtime(profile, progress=progress)
    info = build_info(built)
    for rel in BUNDLED:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built.root / rel, root / rel)
        if rel != native.HEADER:
            (root / rel).chmod(0o755)
    record = {
        "version": info["version"],
        "arch": info["arch"],
        "glibc": info["glibc"],
        "api": "DLR 1.10 C API (include/edgekiln/dlr.h)",
        "sha256": {rel: entry["sha256"] for rel, entry in info["files"].items() if rel != native.HEADER},
    }
    return dict(BUNDLED), record
