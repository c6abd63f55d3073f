"""Sysroots for emulated boards: a Debian userland of the board's architecture, built once.

An ARM artifact is checked on the x86-64 build host by running it, through the device
runtime, under qemu-user.  qemu needs the board's own userland to do that: its dynamic
loader and C/C++ libraries, a Python, and the Python packages of the device install
(numpy, apache-tvm-ffi, Pillow) and of the backends' runtimes (onnxruntime, ai-edge-litert
on aarch64).  :func:`ensure_sysroot` builds that userland for a
profile and keeps it in ``$EDGEKILN_CACHE/emulation/<profile>/`` (default
``~/.cache/edgekiln``):

- Debian bookworm packages of the board's architecture (``python3.11``, ``libstdc++6``
  and what they depend on), resolved and downloaded by the host's ``apt-get`` with its
  own lists and state, so the host's dpkg architecture list and package state are never
  touched, and unpacked with ``dpkg-deb`` (nothing is configured: no maintainer script
  runs);
- the PyPI wheels of the device install for the profile's wheel platform tags, and the
  recipe's hash-locked wheels (the backend runtimes), unpacked into
  ``/usr/local/lib/python3.11/dist-packages`` as pip on the device would;
- bytecode for the standard library and the packages (not their tests), compiled once by
  the emulated Python so that later runs start in seconds instead of recompiling numpy
  under emulation every time.

The build happens in a private directory next to the cache entry and is renamed into
place last, so a failed or interrupted build never looks finished; ``sysroot.json``
records what is inside.  Entries are named by their recipe's digest: after a recipe change
(say, the apache-tvm-ffi pin moved) a new board is built beside the old one on the next use.

This module keeps the cache (lookup, lock, build into place); :mod:`.recipe` says what goes
in and records what came out, :mod:`.qemu` finds the emulator, :mod:`.debian` fetches and
unpacks the Debian packages, :mod:`.assemble` adds the wheels and compiles the bytecode.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Iterator

from edgekiln.emulation.assemble import (
    compile_and_check,
    install_locked_wheels,
    install_wheels,
    prepare_tree,
    tree_size,
)
from edgekiln.emulation.debian import Apt, check_host_tools, unpack_debs
from edgekiln.emulation.qemu import QEMU_HINT, QEMU_MIN_MAJOR, QEMU_PACKAGE, Qemu, find_qemu
from edgekiln.emulation.recipe import (
    DEBIAN_ARCHES,
    DEBIAN_SUITE,
    DEVICE_REQUIREMENTS,
    GUEST_PYTHON,
    GUEST_SITE_PACKAGES,
    MANIFEST_NAME,
    PYTHON_VERSION,
    SCHEMA_VERSION,
    Recipe,
    Sysroot,
    recipe_for,
    resolve_profile,
)
from edgekiln.errors import IntegrityError

if TYPE_CHECKING:  # pragma: no cover
    from edgekiln.device_profiles import DeviceProfile
    from edgekiln.execute.progress import Progress

# Re-exported: callers import the whole sysroot vocabulary from this module.
__all__ = [
    "DEBIAN_ARCHES",
    "DEBIAN_SUITE",
    "DEVICE_REQUIREMENTS",
    "GUEST_PYTHON",
    "GUEST_SITE_PACKAGES",
    "MANIFEST_NAME",
    "PYTHON_VERSION",
    "QEMU_HINT",
    "QEMU_MIN_MAJOR",
    "QEMU_PACKAGE",
    "SCHEMA_VERSION",
    "Qemu",
    "Recipe",
    "Sysroot",
    "cache_dir",
    "emulation_root",
    "ensure_sysroot",
    "find_qemu",
    "find_sysroot",
    "recipe_for",
    "resolve_profile",
]


def emulation_root() -> Path:
    from edgekiln.runtime.compat import cache_root

    return cache_root() / "emulation"


def cache_dir(profile: DeviceProfile | str) -> Path:
    """Where the profile's sysroot of the current recipe is (or will be) kept.

    One entry per recipe (its digest ends the name): an edgekiln whose recipe differs (an
    older install, another checkout) keeps using its own entry beside this one instead of
    rebuilding, and so replacing, the board under a run of the other.
    """
    profile = resolve_profile(profile)
    return emulation_root() / f"{_entry_name(profile)}-{recipe_for(profile).digest(profile.python.platform_tags)}"


def _entry_name(profile: DeviceProfile) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", profile.id)


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


def ensure_sysroot(profile: DeviceProfile | str, *, rebuild: bool = False, progress: Progress | None = None) -> Sysroot:
    """The profile's sysroot, built first when it is not cached (or ``rebuild`` is set).

    Building takes about half a minute on a 2-core host and downloads some 80 MB (Debian
    packages and wheels); a cached sysroot is returned at once.  Concurrent callers wait
    for one build.

    Raises:
        UserError: the profile has no emulated board.
        DependencyError: qemu-user is missing or too old, a host tool is missing, or a
            download failed.
    """
    profile = resolve_profile(profile)
    # Any object with step(description) -> context manager; by default one that says nothing.
    progress = progress or SimpleNamespace(step=lambda _description: contextlib.nullcontext())
    qemu = find_qemu(profile)  # before any download: without it the sysroot is useless
    if not rebuild:
        found = find_sysroot(profile)
        if found is not None:
            return found
    target = cache_dir(profile)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent / f".{_entry_name(profile)}.lock"):
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


def _build(profile: DeviceProfile, qemu: Qemu, target: Path, progress: Progress) -> Sysroot:
    check_host_tools()
    recipe = recipe_for(profile)
    started = time.monotonic()
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-build-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the finished entry is an ordinary cache directory
    try:
        root = staging / "root"
        work = staging / "work"
        work.mkdir()
        with progress.step(f"resolve Debian {DEBIAN_SUITE} {recipe.debian_arch} packages for {profile.id}"):
            apt = Apt(work / "apt", recipe.debian_arch)
            notes = apt.update()
            selected = apt.resolve(recipe.packages)
        with progress.step(f"download and unpack {len(selected)} Debian packages"):
            debs = apt.download(selected, work / "debs")
            unpack_debs(debs, root)
        wheels: list[str] = []
        site = root / GUEST_SITE_PACKAGES.lstrip("/")
        if recipe.wheels:
            with progress.step(f"download wheels for {profile.python.platform_tags[0]}: {', '.join(recipe.wheels)}"):
                wheels = install_wheels(recipe.wheels, profile.python.platform_tags, work / "wheels", site)
        if recipe.locked:
            names = ", ".join(pin for pin, _ in recipe.locked[:2])
            with progress.step(f"download and check the hashes of {len(recipe.locked)} locked wheels ({names}, ...)"):
                wheels += install_locked_wheels(recipe.locked, profile.python.platform_tags, work / "locked", site)
        prepare_tree(root, recipe)
        with progress.step("compile Python bytecode under emulation and check the imports"):
            compile_and_check(qemu, root, recipe)
        shutil.rmtree(work)
        sysroot = Sysroot(
            profile=profile.id,
            path=staging,
            arch=recipe.arch,
            debian_arch=recipe.debian_arch,
            suite=DEBIAN_SUITE,
            qemu_binary=qemu.binary,
            qemu_cpu=qemu.cpu,
            qemu_version=qemu.version,
            python=GUEST_PYTHON,
            packages=tuple(sorted(selected)),
            wheels=tuple(sorted(wheels)),
            missing=recipe.missing,
            notes=tuple(notes),
            recipe=recipe.digest(profile.python.platform_tags),
            size_bytes=tree_size(root),
            build_seconds=round(time.monotonic() - started, 1),
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
