"""Sysroots for emulated boards: a Debian userland of the board's architecture, built once.

An ARM artifact is checked on the x86-64 build host by running it, through the device
runtime, under qemu-user.  qemu needs the board's own userland to do that: its dynamic
loader and C/C++ libraries, a Python, and the Python packages of the device install
(numpy, apache-tvm-ffi, Pillow).  :func:`ensure_sysroot` builds that userland for a
profile and keeps it in ``$EDGEKILN_CACHE/emulation/<profile>/`` (default
``~/.cache/edgekiln``):

- Debian bookworm packages of the board's architecture (``python3.11``, ``libstdc++6``
  and what they depend on), resolved and downloaded by the host's ``apt-get`` with its
  own lists and state, so the host's dpkg architecture list and package state are never
  touched, and unpacked with ``dpkg-deb`` (nothing is configured: no maintainer script
  runs);
- the PyPI wheels of the device install for the profile's wheel platform tags, unpacked
  into ``/usr/local/lib/python3.11/dist-packages`` as pip on the device would;
- bytecode for the standard library and the packages (not their tests), compiled once by
  the emulated Python so that later runs start in seconds instead of recompiling numpy
  under emulation every time.

The build happens in a private directory next to the cache entry and is renamed into
place last, so a failed or interrupted build never looks finished; ``sysroot.json``
records what is inside.  A cache entry built from another recipe (say, after the
apache-tvm-ffi pin moved) is rebuilt on the next use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from edgekiln.errors import DependencyError, IntegrityError, UserError

if TYPE_CHECKING:  # pragma: no cover
    from edgekiln.compile.progress import Progress
    from edgekiln.device_profiles import DeviceProfile

SCHEMA_VERSION = 1
MANIFEST_NAME = "sysroot.json"
# bookworm is what the build host runs (Debian 12); its python3.11 (3.11.2) takes the
# cp311 wheels that the device install uses, and its glibc 2.36 satisfies manylinux_2_28.
DEBIAN_SUITE = "bookworm"
# A local mirror (or an apt proxy) can stand in for deb.debian.org.
DEBIAN_MIRROR_ENV = "EDGEKILN_DEBIAN_MIRROR"
DEBIAN_SECURITY_MIRROR_ENV = "EDGEKILN_DEBIAN_SECURITY_MIRROR"
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")

PYTHON_VERSION = "3.11"
GUEST_PYTHON = f"/usr/bin/python{PYTHON_VERSION}"
GUEST_SITE_PACKAGES = f"/usr/local/lib/python{PYTHON_VERSION}/dist-packages"
# Guest paths that must exist in the sysroot even when no package fills them: qemu's -L
# falls back to the host's file for any path missing in the sysroot, and the host's own
# Python directories hold x86-64 extension modules that the guest must never see.
_SHADOWED_DIRS = (
    GUEST_SITE_PACKAGES,
    "/usr/lib/python3/dist-packages",
    f"/usr/local/lib/python{PYTHON_VERSION}/site-packages",
    f"/usr/lib/python{PYTHON_VERSION}/site-packages",
)
# Guest paths that must NOT exist in the sysroot, so that they fall through to the host:
# the emulated process reads and writes the caller's files there (pytest's tmp_path, the
# caller's $TMPDIR).
_HOST_VISIBLE_DIRS = ("tmp", "var/tmp", "root", "home")

# The device install (setup.cfg install_requires without the Python < 3.11 backport);
# tests/integration/emulation checks that the two agree.
DEVICE_REQUIREMENTS = ("numpy>=1.24", "apache-tvm-ffi==0.1.15.post2", "Pillow>=10")

# Debian's name for each profile arch (dpkg --print-architecture on the board).
DEBIAN_ARCHES = {"aarch64": "arm64", "armv7l": "armhf", "x86_64": "amd64"}

# The oldest QEMU that runs the device wheels: 7.2 (Debian 12's own qemu-user) dies with
# SIGILL/SIGSEGV importing onnxruntime's aarch64 wheel; 8.x and later do not.
QEMU_MIN_MAJOR = 8
QEMU_PACKAGE = "qemu-user"
QEMU_HINT = (
    "run `make setup`, which installs the Debian package qemu-user (on Debian 12 from "
    "bookworm-backports), or `apt-get install -t bookworm-backports qemu-user`"
)


@dataclass(frozen=True)
class Recipe:
    """What goes into the sysroot of one architecture.

    packages: Debian packages installed with their dependencies (no Recommends).
    wheels: requirements downloaded from PyPI for the profile's wheel platform tags.
    imports: modules the emulated Python must import once the sysroot is built.
    links: (guest path, target) symlinks that the packages' maintainer scripts would make
        (update-alternatives), since unpacking runs no maintainer script.
    missing: what the device install has that this architecture's sysroot cannot, and why.
    """

    arch: str
    debian_arch: str
    packages: tuple[str, ...]
    wheels: tuple[str, ...]
    imports: tuple[str, ...]
    links: tuple[tuple[str, str], ...] = ()
    missing: tuple[str, ...] = ()

    def digest(self, platform_tags: tuple[str, ...]) -> str:
        """Identifies the recipe, so that a cache entry built from another is rebuilt."""
        data = {"schema": SCHEMA_VERSION, "suite": DEBIAN_SUITE, "platform_tags": list(platform_tags),
                **dataclasses.asdict(self)}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# libstdc++6 and libgcc-s1 are what manylinux wheels (tvm-ffi) and the artifact's
# libtvm_runtime.so take from the system; python3.11 brings libc6, zlib, libffi, ...
_RECIPES = {
    "aarch64": Recipe(
        arch="aarch64",
        debian_arch="arm64",
        packages=("python3.11", "libstdc++6", "libgcc-s1"),
        wheels=DEVICE_REQUIREMENTS,
        imports=("numpy", "tvm_ffi", "PIL.Image"),
    ),
    # PyPI has no armv7l wheels of numpy, Pillow or apache-tvm-ffi (tvm-ffi ships only an
    # sdist for it) and apache-tvm no armv7l runtime library, so the 32-bit board gets
    # Debian's numpy (1.24) and Pillow (9.4) and no TVM runtime: enough for Python/numpy
    # work and for backends with armhf builds, not for TVM artifacts.
    "armv7l": Recipe(
        arch="armv7l",
        debian_arch="armhf",
        packages=("python3.11", "python3-numpy", "python3-pil", "libstdc++6", "libgcc-s1"),
        wheels=(),
        imports=("numpy", "PIL.Image"),
        # Debian's numpy links libblas.so.3 and liblapack.so.3, which libblas3 and
        # liblapack3 provide only through update-alternatives in their postinst.
        links=(
            ("/usr/lib/arm-linux-gnueabihf/libblas.so.3", "blas/libblas.so.3"),
            ("/usr/lib/arm-linux-gnueabihf/liblapack.so.3", "lapack/liblapack.so.3"),
        ),
        missing=(
            "apache-tvm-ffi: PyPI has no armv7l wheel (only an sdist, not built here)",
            "libtvm_runtime.so: apache-tvm publishes no armv7l release",
        ),
    ),
}


@dataclass(frozen=True)
class Qemu:
    """A usable qemu-user binary for one profile."""

    binary: str  # as the profile names it: "qemu-aarch64"
    path: str  # where it is on this host
    version: str  # "10.0.2"
    cpu: str  # the profile's -cpu model


@dataclass(frozen=True)
class Sysroot:
    """A built, cached userland for one profile; ``root`` is what qemu's ``-L`` gets."""

    profile: str
    path: Path  # the cache entry: root/ and sysroot.json
    arch: str
    debian_arch: str
    suite: str
    qemu_binary: str
    qemu_cpu: str
    qemu_version: str  # the QEMU that built (and checked) it
    python: str  # guest path of the interpreter
    packages: tuple[tuple[str, str], ...]  # (Debian package, version), sorted
    wheels: tuple[str, ...]  # wheel file names
    missing: tuple[str, ...]
    notes: tuple[str, ...]  # how this build differs from the recipe (an update suite left out)
    recipe: str
    size_bytes: int
    build_seconds: float
    built_at: str  # UTC, ISO 8601

    @property
    def root(self) -> Path:
        return self.path / "root"

    @property
    def python_path(self) -> Path:
        """The interpreter as a host path (qemu is given the program by its host path)."""
        return self.host_path(self.python)

    def host_path(self, guest: str) -> Path:
        """Where a guest path lies inside the sysroot on this host."""
        return self.root / guest.lstrip("/")

    def python_packages(self) -> dict[str, str]:
        """Python distributions inside, name -> version: the wheels and Debian's python3-*."""
        found: dict[str, str] = {}
        for name in self.wheels:
            dist, version = name.split("-")[:2]
            found[dist.replace("_", "-").lower()] = version
        for package, version in self.packages:
            if package.startswith("python3-") and package != "python3-minimal":
                # "1:1.24.2-1+deb12u1" -> "1.24.2": without the epoch and Debian revision
                upstream = version.split(":", 1)[-1].rsplit("-", 1)[0]
                found.setdefault(package.removeprefix("python3-"), upstream)
        return found

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["schema"] = SCHEMA_VERSION
        data["path"] = str(self.path)
        data["root"] = str(self.root)
        data["packages"] = {name: version for name, version in self.packages}
        data["wheels"] = list(self.wheels)
        data["missing"] = list(self.missing)
        data["notes"] = list(self.notes)
        return data

    @classmethod
    def load(cls, path: Path) -> Sysroot:
        """Read ``path/sysroot.json``; the entry may have moved, so ``path`` wins over the file."""
        file = path / MANIFEST_NAME
        try:
            data = json.loads(file.read_text())
            if data.get("schema") != SCHEMA_VERSION:
                raise ValueError(f"schema {data.get('schema')!r}")
            return cls(
                profile=data["profile"], path=path, arch=data["arch"], debian_arch=data["debian_arch"],
                suite=data["suite"], qemu_binary=data["qemu_binary"], qemu_cpu=data["qemu_cpu"],
                qemu_version=data["qemu_version"], python=data["python"],
                packages=tuple(sorted((str(k), str(v)) for k, v in data["packages"].items())),
                wheels=tuple(data["wheels"]), missing=tuple(data["missing"]), notes=tuple(data["notes"]),
                recipe=data["recipe"],
                size_bytes=int(data["size_bytes"]), build_seconds=float(data["build_seconds"]),
                built_at=data["built_at"],
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IntegrityError(f"unreadable sysroot record {file}: {exc}",
                                 hint="rebuild it with `edgekiln emulate PROFILE --rebuild`") from None

    def save(self) -> None:
        data = self.to_dict()
        del data["path"], data["root"]  # where it lies is where it is read from
        (self.path / MANIFEST_NAME).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------
# profiles and qemu


def resolve_profile(profile: DeviceProfile | str) -> DeviceProfile:
    """The profile itself, or the one with that name; UserError when it cannot be emulated."""
    import platform

    from edgekiln.device_profiles import get_profile

    if isinstance(profile, str):
        profile = get_profile(profile)
    if profile.emulation is None:
        host = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine().lower())
        if profile.cpu.arch == host:
            raise UserError(
                f"profile {profile.id} ({profile.cpu.arch}) runs natively on this host and has no "
                f"emulated board; run the command directly"
            )
        raise UserError(f"profile {profile.id} has no [emulation] table (qemu_binary, cpu) to emulate it with")
    if profile.cpu.arch not in _RECIPES:
        raise UserError(
            f"no emulated board for {profile.cpu.arch} (profile {profile.id}); "
            f"emulated architectures: {', '.join(sorted(_RECIPES))}"
        )
    return profile


def recipe_for(profile: DeviceProfile) -> Recipe:
    return _RECIPES[resolve_profile(profile).cpu.arch]


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


# ---------------------------------------------------------------------------------------
# the cache


def emulation_root() -> Path:
    from edgekiln.compile.backends.tvm.runtime_libs import cache_root

    return cache_root() / "emulation"


def cache_dir(profile: DeviceProfile | str) -> Path:
    """Where the profile's sysroot is (or will be) kept."""
    profile = resolve_profile(profile)
    return emulation_root() / re.sub(r"[^A-Za-z0-9._-]", "_", profile.id)


def find_sysroot(profile: DeviceProfile | str) -> Sysroot | None:
    """The cached sysroot when it exists and was built from the current recipe, else None."""
    profile = resolve_profile(profile)
    path = cache_dir(profile)
    if not (path / MANIFEST_NAME).is_file():
        return None
    try:
        sysroot = Sysroot.load(path)
    except IntegrityError:
        return None
    if sysroot.recipe != recipe_for(profile).digest(profile.python.platform_tags):
        return None
    if not sysroot.python_path.is_file():
        return None
    return sysroot


def ensure_sysroot(profile: DeviceProfile | str, *, rebuild: bool = False,
                   progress: Progress | None = None) -> Sysroot:
    """The profile's sysroot, built first when it is not cached (or ``rebuild`` is set).

    Building takes about half a minute on a 2-core host and downloads some 40 MB (Debian
    packages and wheels); a cached sysroot is returned at once.  Concurrent callers wait
    for one build.

    Raises:
        UserError: the profile has no emulated board.
        DependencyError: qemu-user is missing or too old, a host tool is missing, or a
            download failed.
    """
    from edgekiln.compile.progress import NullProgress

    profile = resolve_profile(profile)
    progress = progress or NullProgress()
    qemu = find_qemu(profile)  # before any download: without it the sysroot is useless
    if not rebuild:
        found = find_sysroot(profile)
        if found is not None:
            return found
    target = cache_dir(profile)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent / f".{target.name}.lock"):
        if not rebuild:
            found = find_sysroot(profile)  # built by whoever held the lock before us
            if found is not None:
                return found
        return _build(profile, qemu, target, progress)


@contextlib.contextmanager
def _locked(lock: Path) -> Iterator[None]:
    import fcntl

    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------
# building


def _build(profile: DeviceProfile, qemu: Qemu, target: Path, progress: Progress) -> Sysroot:
    _check_host_tools()
    recipe = recipe_for(profile)
    started = time.monotonic()
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-build-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the finished entry is an ordinary cache directory
    try:
        root = staging / "root"
        work = staging / "work"
        work.mkdir()
        with progress.step(f"resolve Debian {DEBIAN_SUITE} {recipe.debian_arch} packages for {profile.id}"):
            apt = _Apt(work / "apt", recipe.debian_arch)
            notes = apt.update()
            selected = apt.resolve(recipe.packages)
        with progress.step(f"download and unpack {len(selected)} Debian packages"):
            debs = apt.download(selected, work / "debs")
            _unpack_debs(debs, root)
        wheels: list[str] = []
        if recipe.wheels:
            with progress.step(f"download wheels for {profile.python.platform_tags[0]}: "
                               f"{', '.join(recipe.wheels)}"):
                wheels = _install_wheels(recipe.wheels, profile.python.platform_tags, work / "wheels",
                                         root / GUEST_SITE_PACKAGES.lstrip("/"))
        _prepare_tree(root, recipe)
        with progress.step("compile Python bytecode under emulation and check the imports"):
            _compile_and_check(qemu, root, recipe)
        shutil.rmtree(work)
        sysroot = Sysroot(
            profile=profile.id, path=staging, arch=recipe.arch, debian_arch=recipe.debian_arch,
            suite=DEBIAN_SUITE, qemu_binary=qemu.binary, qemu_cpu=qemu.cpu, qemu_version=qemu.version,
            python=GUEST_PYTHON, packages=tuple(sorted(selected)), wheels=tuple(sorted(wheels)),
            missing=recipe.missing, notes=tuple(notes), recipe=recipe.digest(profile.python.platform_tags),
            size_bytes=_tree_size(root), build_seconds=round(time.monotonic() - started, 1),
            built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        sysroot.save()
        # Rename into place last, so a failed build never looks like a finished one; an
        # old entry is moved aside first and removed after (rename cannot replace a
        # non-empty directory).
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
            os.replace(target, old / "entry")
        os.replace(staging, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dataclasses.replace(sysroot, path=target)


def _check_host_tools() -> None:
    missing = [tool for tool in ("apt-get", "dpkg-deb", "tar") if shutil.which(tool) is None]
    if missing:
        raise DependencyError(
            f"building a sysroot needs {', '.join(missing)} on the build host (a Debian or Ubuntu host)",
            hint="install the Debian packages apt, dpkg and tar",
        )
    if not DEBIAN_KEYRING.is_file():
        raise DependencyError(
            f"building a sysroot needs the Debian archive keyring {DEBIAN_KEYRING}",
            hint="install the Debian package debian-archive-keyring (`make setup` does)",
        )


class _Apt:
    """The host's apt-get, pointed at private lists, state and cache for one foreign arch.

    Nothing of the host's apt or dpkg state is read or written: its architecture list,
    installed packages, sources and pins do not matter, and neither root nor a lock is
    needed.  The host's apt.conf.d is kept so that its proxy settings still apply.
    """

    def __init__(self, work: Path, debian_arch: str) -> None:
        self.work = work
        self.debian_arch = debian_arch
        for sub in ("state/lists/partial", "cache/archives/partial", "sources.list.d", "preferences.d"):
            (work / sub).mkdir(parents=True, exist_ok=True)
        (work / "state" / "status").touch()  # an empty dpkg status: nothing is installed
        mirror = os.environ.get(DEBIAN_MIRROR_ENV, "http://deb.debian.org/debian").rstrip("/")
        security = os.environ.get(DEBIAN_SECURITY_MIRROR_ENV, "http://deb.debian.org/debian-security").rstrip("/")
        signed = f"[signed-by={DEBIAN_KEYRING}]"
        # bookworm-updates and -security so that the sysroot gets the fixed libraries a
        # device installing today would get.
        (work / "sources.list").write_text(
            f"deb {signed} {mirror} {DEBIAN_SUITE} main\n"
            f"deb {signed} {mirror} {DEBIAN_SUITE}-updates main\n"
            f"deb {signed} {security} {DEBIAN_SUITE}-security main\n"
        )
        options = {
            "APT::Architecture": debian_arch,
            "APT::Architectures": debian_arch,
            "Dir::State": work / "state",
            "Dir::State::status": work / "state" / "status",
            "Dir::Cache": work / "cache",
            "Dir::Etc::SourceList": work / "sources.list",
            "Dir::Etc::SourceParts": work / "sources.list.d",
            "Dir::Etc::Preferences": work / "preferences",
            "Dir::Etc::PreferencesParts": work / "preferences.d",
            "Acquire::Languages": "none",
            "Debug::NoLocking": "1",
        }
        if os.geteuid() == 0:
            # apt would drop to the _apt user to download, which cannot write into root's
            # cache directory; it then warns and goes on as root anyway.
            options["APT::Sandbox::User"] = "root"
        self.last_output = ""
        self.options = [arg for key, value in options.items() for arg in ("-o", f"{key}={value}")]

    def _run(self, args: list[str], what: str, cwd: Path | None = None) -> str:
        cmd = ["apt-get", *self.options, *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd,
                              env={**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"})
        self.last_output = proc.stderr + proc.stdout
        if proc.returncode != 0:
            lines = [ln for ln in self.last_output.splitlines() if ln.strip()]
            # The first error names the cause; apt's last one is a summary ("Some index
            # files failed to download").
            errors = [ln for ln in lines if ln.startswith("E:")] or lines or ["no output"]
            raise DependencyError(f"cannot {what} (apt-get {args[0]} exited {proc.returncode}): {errors[0]}",
                                  hint=f"check that deb.debian.org (or ${DEBIAN_MIRROR_ENV}) is reachable")
        return proc.stdout

    def update(self) -> list[str]:
        """Fetch the package lists; notes on the update suites that could not be had.

        The release suite is required.  -updates and -security only bring newer builds
        of some packages: a mirror caught mid-sync (a size or hash mismatch) costs those
        fixes, which the sysroot record then says, rather than the whole build.
        """
        what = f"download the Debian {DEBIAN_SUITE} {self.debian_arch} package lists"
        failed: DependencyError | None = None
        try:
            self._run(["update", "-qq"], what)
        except DependencyError as exc:
            failed = exc
        # apt-get update exits 0 when a source cannot be reached at all (only a warning),
        # and 100 when a file it got is wrong: both are "Failed to fetch" lines.
        failures = re.findall(r"^[EW]: Failed to fetch (\S+)(.*)$", self.last_output, re.M)
        suites = sorted({m.group(1) for url, _ in failures if (m := re.search(r"/dists/([^/]+)/", url))})
        lists = self.work / "state" / "lists"
        if not any(lists.glob(f"*_dists_{DEBIAN_SUITE}_main_binary-{self.debian_arch}_Packages*")):
            if failed is not None and not failures:
                raise failed
            cause = " ".join(" ".join(failures[0]).split()) if failures else "apt got no package list"
            raise DependencyError(f"cannot {what}: {cause}",
                                  hint=f"check that deb.debian.org (or ${DEBIAN_MIRROR_ENV}) is reachable")
        if failed is not None and not suites:
            raise failed
        if not suites:
            return []
        cause = " ".join(" ".join(failures[0]).split())
        return [f"{', '.join(suites)} {self.debian_arch} package lists unavailable at build time, their "
                f"updates left out ({cause[:160]})"]

    def resolve(self, packages: tuple[str, ...]) -> list[tuple[str, str]]:
        """The packages and everything they depend on, as (name, version)."""
        # apt's own resolver on an empty status file: exactly what installing them on a
        # fresh board would unpack, with alternatives chosen as apt chooses them.
        out = self._run(["install", "--simulate", "--no-install-recommends", "-qq", *packages],
                        f"resolve {', '.join(packages)} for {self.debian_arch}")
        selected = []
        for line in out.splitlines():
            match = re.match(r"^Inst (\S+) \((\S+) ", line)
            if match:
                selected.append((match.group(1), match.group(2)))
        if not selected:
            raise DependencyError(f"apt resolved nothing to install for {', '.join(packages)} on {self.debian_arch}")
        return selected

    def download(self, selected: list[tuple[str, str]], into: Path) -> list[Path]:
        into.mkdir(parents=True, exist_ok=True)
        self._run(["download", "-qq", *(f"{name}={version}" for name, version in selected)],
                  f"download {len(selected)} Debian {self.debian_arch} packages", cwd=into)
        debs = sorted(into.glob("*.deb"))
        if len(debs) != len(selected):
            raise DependencyError(f"apt downloaded {len(debs)} of {len(selected)} Debian packages")
        return debs


def _unpack_debs(debs: list[Path], root: Path) -> None:
    # The merged-/usr layout of a bookworm system: /lib, /bin and /sbin are links into
    # /usr.  The packages still ship files under /lib (the dynamic loader), so these
    # links must exist first and tar must follow them (--keep-directory-symlink); `dpkg -x`
    # would replace them with directories.
    for sub in ("usr/lib", "usr/bin", "usr/sbin"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for link in ("lib", "bin", "sbin"):
        os.symlink(f"usr/{link}", root / link)
    for deb in debs:
        unpack = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        assert unpack.stdout is not None
        tar = subprocess.run(["tar", "-x", "--keep-directory-symlink", "--no-same-owner", "-C", str(root)],
                             stdin=unpack.stdout, capture_output=True, text=True)
        unpack.stdout.close()
        err = unpack.stderr.read().decode(errors="replace") if unpack.stderr else ""
        if unpack.wait() != 0 or tar.returncode != 0:
            raise DependencyError(f"cannot unpack {deb.name}: {(err or tar.stderr).strip().splitlines()[-1:]}")


def _install_wheels(requirements: tuple[str, ...], platform_tags: tuple[str, ...], into: Path,
                    site: Path) -> list[str]:
    """Download the wheels (with their dependencies) for the platform and unpack them."""
    into.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
           "--only-binary=:all:", "--implementation", "cp", "--python-version", PYTHON_VERSION,
           "--abi", "cp" + PYTHON_VERSION.replace(".", ""), "-d", str(into)]
    for tag in platform_tags:
        cmd += ["--platform", tag]
    proc = subprocess.run([*cmd, *requirements], capture_output=True, text=True)
    wheels = sorted(into.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")] or proc.stderr.splitlines()
        raise DependencyError(f"cannot download wheels for {platform_tags[0]}: {(lines or ['no wheel'])[-1]}",
                              hint="check that PyPI is reachable")
    site.mkdir(parents=True, exist_ok=True)
    for wheel in wheels:
        _unpack_wheel(wheel, site)
    return [w.name for w in wheels]


def _unpack_wheel(wheel: Path, site: Path) -> None:
    # What pip does for a plain (non-editable) install into one site directory; scripts
    # and headers are not needed on an emulated board.
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if name.startswith("/") or ".." in Path(name).parts:
                raise IntegrityError(f"wheel {wheel.name} has an unsafe member {name!r}")
        archive.extractall(site)
    for data in site.glob("*.data"):
        for scheme in ("purelib", "platlib"):
            src = data / scheme
            if src.is_dir():
                for item in src.iterdir():
                    os.replace(item, site / item.name)
        shutil.rmtree(data)
    # zipfile drops the execute bits; no module needs them, but shared objects should
    # look like what pip writes.
    for lib in site.rglob("*.so*"):
        if lib.is_file():
            lib.chmod(0o755)


def _prepare_tree(root: Path, recipe: Recipe) -> None:
    for guest, dest in recipe.links:
        link = root / guest.lstrip("/")
        if not (link.parent / dest).exists():
            raise DependencyError(f"the {recipe.debian_arch} packages have no {link.parent / dest} for {guest}")
        link.unlink(missing_ok=True)
        link.symlink_to(dest)
    # Absolute links resolve against the host's / when qemu opens them through a host
    # path (the interpreter is run by its host path, so sys.prefix is one): make them
    # relative so that they stay inside the sysroot.
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            link = Path(dirpath) / name
            if link.is_symlink():
                dest = os.readlink(link)
                if dest.startswith("/"):
                    link.unlink()
                    link.symlink_to(os.path.relpath(root / dest.lstrip("/"), link.parent))
    for guest in _SHADOWED_DIRS:
        (root / guest.lstrip("/")).mkdir(parents=True, exist_ok=True)
    for sub in _HOST_VISIBLE_DIRS:
        path = root / sub
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)


def _compile_and_check(qemu: Qemu, root: Path, recipe: Recipe) -> None:
    python = root / GUEST_PYTHON.lstrip("/")
    if not python.is_file():
        raise DependencyError(f"the Debian packages for {recipe.debian_arch} brought no {GUEST_PYTHON}")
    base = [qemu.path, "-cpu", qemu.cpu, "-L", str(root), str(python)]
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "PYTHONNOUSERSITE": "1"}
    dirs = [root / f"usr/lib/python{PYTHON_VERSION}", root / GUEST_SITE_PACKAGES.lstrip("/"),
            root / "usr/lib/python3/dist-packages"]
    # Test suites and GUI/2to3 parts are never imported on a board; compiling them would
    # double the time (and lib2to3's test data is not valid Python 3).
    exclude = r"/(tests?|idlelib|lib2to3|tkinter|turtledemo|ensurepip)/"
    # compileall returns 1 when a file does not compile; that is the package's business.
    # Anything else means the emulated interpreter itself does not work.
    proc = subprocess.run([*base, "-m", "compileall", "-q", "-j", "0", "-x", exclude,
                           *(str(d) for d in dirs if d.is_dir())],
                          capture_output=True, text=True, env=env)
    if proc.returncode not in (0, 1):
        raise DependencyError(_emulation_failure(qemu, proc, "compiling bytecode"), hint=QEMU_HINT)
    check = f"import {', '.join(recipe.imports)}" if recipe.imports else "pass"
    proc = subprocess.run([*base, "-c", check], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        # Killed by a signal (SIGILL, SIGSEGV) is the emulator's doing; an ImportError is
        # the recipe's (a library the packages did not bring).
        raise DependencyError(_emulation_failure(qemu, proc, f"`{check}`"),
                              hint=QEMU_HINT if proc.returncode < 0 else None)


def _emulation_failure(qemu: Qemu, proc: subprocess.CompletedProcess, what: str) -> str:
    lines = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()] or ["no output"]
    how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
    return f"the emulated Python under {qemu.binary} {qemu.version} -cpu {qemu.cpu} failed {what} ({how}): {lines[-1]}"


def _tree_size(root: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total
