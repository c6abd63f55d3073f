"""Assembling a sysroot from its parts: the device wheels unpacked as pip would, the tree
made safe for qemu's ``-L``, and the bytecode compiled (and imports checked) under emulation."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from edgekiln.artifact.package import sha256_file
from edgekiln.emulation.qemu import QEMU_HINT, Qemu
from edgekiln.emulation.recipe import GUEST_PYTHON, GUEST_SITE_PACKAGES, PYTHON_VERSION, Recipe
from edgekiln.errors import DependencyError, IntegrityError

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


def install_wheels(requirements: tuple[str, ...], platform_tags: tuple[str, ...], into: Path, site: Path) -> list[str]:
    """Download the wheels (with their dependencies) for the platform and unpack them."""
    wheels = _pip_download(list(requirements), platform_tags, into)
    site.mkdir(parents=True, exist_ok=True)
    for wheel in wheels:
        unpack_wheel(wheel, site)
    return [w.name for w in wheels]


def install_locked_wheels(
    locked: tuple[tuple[str, str], ...], platform_tags: tuple[str, ...], into: Path, site: Path
) -> list[str]:
    """Download exactly the pinned wheels, check each against its sha256, and unpack them.

    pip's hash-checking mode refuses any file whose hash is not the pinned one, and
    ``--no-deps`` keeps it from resolving anything the lock does not name.
    """
    into.mkdir(parents=True, exist_ok=True)
    lock = into / "requirements.txt"
    lock.write_text("".join(f"{pin} --hash=sha256:{sha256}\n" for pin, sha256 in locked))
    wheels = _pip_download(["--no-deps", "--require-hashes", "-r", str(lock)], platform_tags, into)
    expected = {sha256 for _, sha256 in locked}
    for wheel in wheels:
        # pip checked them already; this keeps the promise if a pip ever skips the check.
        if sha256_file(wheel) not in expected:
            raise IntegrityError(f"wheel {wheel.name} does not match any pinned sha256", hint="check the package index")
    if len(wheels) != len(locked):
        raise DependencyError(f"expected {len(locked)} locked wheels, pip fetched {len(wheels)}")
    site.mkdir(parents=True, exist_ok=True)
    for wheel in wheels:
        unpack_wheel(wheel, site)
    return [w.name for w in wheels]


def platform_tags_for_pip(platform_tags: tuple[str, ...]) -> list[str]:
    """The profile's tags with every older glibc's manylinux tag, as pip on the device takes.

    Given ``--platform``, pip matches those tags only, while on a board with glibc 2.28 it also
    takes manylinux_2_27 wheels (ai-edge-litert publishes only those for aarch64).
    """
    tags: list[str] = []
    for tag in platform_tags:
        tags.append(tag)
        match = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", tag)
        if match:
            newest, arch = int(match.group(1)), match.group(2)
            tags += [f"manylinux_2_{minor}_{arch}" for minor in range(newest - 1, 16, -1)]
    return list(dict.fromkeys(tags))


def _pip_download(args: list[str], platform_tags: tuple[str, ...], into: Path) -> list[Path]:
    into.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        PYTHON_VERSION,
        "--abi",
        "cp" + PYTHON_VERSION.replace(".", ""),
        "-d",
        str(into),
    ]
    for tag in platform_tags_for_pip(platform_tags):
        cmd += ["--platform", tag]
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True)
    wheels = sorted(into.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")] or proc.stderr.splitlines()
        if "DO NOT MATCH THE HASHES" in proc.stderr:
            details = [ln.strip() for ln in proc.stderr.splitlines() if "Expected sha256" in ln or ".whl" in ln]
            raise IntegrityError(
                f"a wheel for {platform_tags[0]} does not match its pinned sha256: " + " ".join(details)[:400],
                hint="the package index served another file than the one pinned; check the index",
            )
        raise DependencyError(
            f"cannot download wheels for {platform_tags[0]}: {(lines or ['no wheel'])[-1]}",
            hint="check that PyPI is reachable",
        )
    return wheels


def unpack_wheel(wheel: Path, site: Path) -> None:
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


def prepare_tree(root: Path, recipe: Recipe) -> None:
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


def compile_and_check(qemu: Qemu, root: Path, recipe: Recipe) -> None:
    python = root / GUEST_PYTHON.lstrip("/")
    if not python.is_file():
        raise DependencyError(f"the Debian packages for {recipe.debian_arch} brought no {GUEST_PYTHON}")
    base = [qemu.path, "-cpu", qemu.cpu, "-L", str(root), str(python)]
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "PYTHONNOUSERSITE": "1"}
    dirs = [
        root / f"usr/lib/python{PYTHON_VERSION}",
        root / GUEST_SITE_PACKAGES.lstrip("/"),
        root / "usr/lib/python3/dist-packages",
    ]
    # Test suites and GUI/2to3 parts are never imported on a board; compiling them would
    # double the time (and lib2to3's test data is not valid Python 3).
    exclude = r"/(tests?|idlelib|lib2to3|tkinter|turtledemo|ensurepip)/"
    # compileall returns 1 when a file does not compile; that is the package's business.
    # Anything else means the emulated interpreter itself does not work.
    proc = subprocess.run(
        [*base, "-m", "compileall", "-q", "-j", "0", "-x", exclude, *(str(d) for d in dirs if d.is_dir())],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode not in (0, 1):
        raise DependencyError(_emulation_failure(qemu, proc, "compiling bytecode"), hint=QEMU_HINT)
    check = f"import {', '.join(recipe.imports)}" if recipe.imports else "pass"
    proc = subprocess.run([*base, "-c", check], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        # Killed by a signal (SIGILL, SIGSEGV) is the emulator's doing; an ImportError is
        # the recipe's (a library the packages did not bring).
        raise DependencyError(
            _emulation_failure(qemu, proc, f"`{check}`"), hint=QEMU_HINT if proc.returncode < 0 else None
        )


def _emulation_failure(qemu: Qemu, proc: subprocess.CompletedProcess, what: str) -> str:
    lines = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()] or ["no output"]
    how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
    return f"the emulated Python under {qemu.binary} {qemu.version} -cpu {qemu.cpu} failed {what} ({how}): {lines[-1]}"


def tree_size(root: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total
