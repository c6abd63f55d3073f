"""Run programs on an emulated board: qemu-user with the profile's cached sysroot.

``run("rasp4b", ["python", "-c", "..."])`` runs the board's Python 3.11 under
``qemu-aarch64 -cpu cortex-a72 -L <sysroot>``.  qemu translates every absolute path the
program opens to the sysroot first and falls back to the host's file when the sysroot has
none, so the emulated process sees the board's /usr, /lib and /etc but the host's /tmp,
/home, /root, the working directory and any other path the caller hands it: artifacts and
.npz files pass by their host paths, unchanged.

The edgekiln package of this process is importable in the emulated Python (its source is
pure Python and the runtime needs nothing compiled), so ``python -m edgekiln.…`` works
there as it does on a device that installed edgekiln.

Limits: programs that the emulated process itself executes (``subprocess`` in the guest)
run without qemu and fail, since no binfmt_misc handler is registered; fork works.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from edgekiln.emulation.sysroot import (
    PYTHON_VERSION,
    Qemu,
    Sysroot,
    emulation_root,
    ensure_sysroot,
    find_qemu,
    resolve_profile,
)
from edgekiln.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from edgekiln.device_profiles import DeviceProfile
    from edgekiln.execute.progress import Progress

# Names that mean the board's interpreter.
PYTHON_NAMES = ("python", "python3", f"python{PYTHON_VERSION}")
# Where a bare program name is looked up in the sysroot (/bin and /sbin link into /usr).
GUEST_PATH = ("/usr/local/bin", "/usr/bin", "/usr/sbin")
# Host variables that would reach into the guest and break it: the host's Python paths,
# its preloads and library paths (x86-64 objects the guest's loader would try), and qemu's
# own settings, which this module passes on the command line instead.
_HOST_ONLY_PREFIXES = ("PYTHON", "LD_", "QEMU_")


def python_prefix(
    profile: DeviceProfile | str, *, progress: Progress | None = None
) -> tuple[list[str], dict[str, str]]:
    """The command-line prefix and environment that run the board's Python.

    Append Python's own arguments to the list and pass the environment (complete, not a
    delta) to :mod:`subprocess`; host paths in the arguments are seen as they are::

        prefix, env = python_prefix("rasp4b")
        subprocess.run([*prefix, "-c", "import numpy; print(numpy.__version__)"], env=env,
                       capture_output=True, text=True)

    Builds the sysroot first when it is not cached (a minute or so; see :func:`ensure_sysroot`).

    Raises:
        UserError: unknown profile, or one without an emulated board.
        DependencyError: qemu-user missing or older than QEMU 8, or the sysroot cannot be built.
    """
    sysroot, qemu = _prepare(profile, progress)
    return [*_qemu_args(qemu, sysroot), str(sysroot.python_path)], guest_env(sysroot)


def command(
    profile: DeviceProfile | str,
    argv: Sequence[str],
    *,
    cwd: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The host command line and environment that run ``argv`` on the emulated board.

    ``argv[0]`` is ``python`` (or ``python3``) for the board's Python, ``edgekiln`` for the
    edgekiln command there, ``edgekiln-run`` for the native runner that ``edgekiln
    build-runtime`` built for the board, a program name looked up in the sysroot's /usr/local/bin,
    /usr/bin and /usr/sbin, or a path: an absolute one
    that exists in the sysroot is taken from there, any other from the host (relative to
    ``cwd``), e.g. a program built with the profile's cross compiler.  ``env`` adds to (and
    overrides) the environment; a ``PYTHONPATH`` in it comes before edgekiln's.
    """
    if not argv:
        raise UserError("no command to run on the emulated board")
    sysroot, qemu = _prepare(profile, progress)
    program = _program(sysroot, str(argv[0]), Path(cwd) if cwd is not None else Path.cwd())
    return [*_qemu_args(qemu, sysroot), *program, *map(str, argv[1:])], guest_env(sysroot, env)


def run(
    profile: DeviceProfile | str,
    argv: Sequence[str],
    *,
    cwd: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    capture_output: bool = False,
    text: bool = True,
    input: str | bytes | None = None,
    progress: Progress | None = None,
) -> subprocess.CompletedProcess:
    """Run ``argv`` on the emulated board and wait for it (see :func:`command` for ``argv[0]``).

    The exit status is the program's; a non-zero one is not an error here.  Building the
    sysroot first, when it is not cached, takes a minute or so (``progress`` reports the steps).

    Raises:
        UserError: unknown profile, no emulated board for it, or ``argv[0]`` not found.
        DependencyError: qemu-user missing or older than QEMU 8, or the sysroot cannot be built.
        subprocess.TimeoutExpired: ``timeout`` seconds passed; the emulator was killed.
    """
    cmd, full_env = command(profile, argv, cwd=cwd, env=env, progress=progress)
    return subprocess.run(
        cmd, cwd=cwd, env=full_env, timeout=timeout, capture_output=capture_output, text=text, input=input
    )


def guest_env(sysroot: Sysroot, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of an emulated process: the host's, cleaned, plus edgekiln on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_HOST_ONLY_PREFIXES)}
    # The guest's PATH names guest paths; qemu translates them into the sysroot.
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env["PYTHONNOUSERSITE"] = "1"  # ~/.local holds the host's packages, not the board's
    # The sysroot has no locales but glibc's built-in C.UTF-8; the host's LANG would make
    # the guest's glibc read the host's locale files.
    env["LC_ALL"] = "C.UTF-8"
    paths = [str(edgekiln_path())]
    for key, value in (extra or {}).items():
        if key == "PYTHONPATH":
            paths.insert(0, value)
        else:
            env[key] = value
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def edgekiln_path() -> Path:
    """A directory holding only this process's edgekiln package, for the guest's PYTHONPATH.

    The package's parent directory will not do: in an installed edgekiln it is the host's
    site-packages, whose x86-64 numpy would shadow the board's.
    """
    import edgekiln

    package = Path(edgekiln.__file__).resolve().parent
    shim = emulation_root() / "src" / hashlib.sha256(str(package).encode()).hexdigest()[:16]
    link = shim / "edgekiln"
    if not (link.is_symlink() and os.readlink(link) == str(package)):
        shim.mkdir(parents=True, exist_ok=True)
        # Made under a private name and renamed, so a concurrent run never sees no link.
        temp = shim / f".edgekiln-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        temp.symlink_to(package)
        os.replace(temp, link)
    return shim


def _prepare(profile: DeviceProfile | str, progress: Progress | None) -> tuple[Sysroot, Qemu]:
    profile = resolve_profile(profile)
    qemu = find_qemu(profile)
    return ensure_sysroot(profile, progress=progress), qemu


def _qemu_args(qemu: Qemu, sysroot: Sysroot) -> list[str]:
    return [qemu.path, "-cpu", qemu.cpu, "-L", str(sysroot.root)]


def _program(sysroot: Sysroot, name: str, cwd: Path, depth: int = 0) -> list[str]:
    """Host paths of the program (and of its interpreter, for a #! script)."""
    if name in PYTHON_NAMES:
        return [str(sysroot.python_path)]
    if name == "edgekiln":
        # The device's console script; the sysroot has the package but no script for it.
        return [str(sysroot.python_path), "-m", "edgekiln.cli.main"]
    if name == "edgekiln-run":
        # The native runner that `edgekiln build-runtime` built for this board's CPU.
        from edgekiln.runtime.native import find_native_runtime

        built = find_native_runtime(sysroot.arch)
        if built is not None:
            return [str(built.runner)]
        raise UserError(
            f"edgekiln-run has not been built for {sysroot.arch} yet",
            hint=f"run `edgekiln build-runtime --target {sysroot.profile}` first",
        )
    if "/" not in name:
        for directory in GUEST_PATH:
            candidate = sysroot.host_path(f"{directory}/{name}")
            if candidate.is_file():
                return _with_interpreter(sysroot, candidate, cwd, depth)
        raise UserError(
            f"{name} is not a program in the {sysroot.profile} sysroot ({', '.join(GUEST_PATH)})",
            hint=f"run `python`, or give the path of a program built for {sysroot.arch}",
        )
    inside = sysroot.host_path(name) if name.startswith("/") else None
    path = inside if inside is not None and inside.is_file() else cwd / name
    if not path.is_file():
        raise UserError(f"{name} does not exist, neither in the {sysroot.profile} sysroot nor on this host")
    return _with_interpreter(sysroot, path, cwd, depth)


def _with_interpreter(sysroot: Sysroot, path: Path, cwd: Path, depth: int) -> list[str]:
    # qemu-user loads ELF programs only; the kernel's #! handling does not apply to what
    # it runs, so scripts (pydoc3.11, f2py) get their interpreter here.
    try:
        with open(path, "rb") as handle:
            head = handle.read(256)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    if not head.startswith(b"#!") or depth > 2:
        return [str(path)]
    words = head[2:].split(b"\n", 1)[0].decode(errors="replace").split()
    if not words:
        return [str(path)]
    interpreter, args = words[0], words[1:]
    if interpreter.endswith("/env") and args:
        return [*_program(sysroot, args[0], cwd, depth + 1), *args[1:], str(path)]
    return [*_program(sysroot, interpreter, cwd, depth + 1), *args, str(path)]
