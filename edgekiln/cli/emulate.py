"""``edgekiln emulate``: run a command on an emulated board (qemu-user and a cached sysroot)."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "emulate",
        help="run a command on an emulated ARM board",
        usage="edgekiln emulate PROFILE [--rebuild] [--info] [--json] [-- COMMAND...]",
        description=(
            "Run COMMAND on PROFILE's board emulated with qemu-user: `python` is the board's "
            "Python 3.11 with numpy, apache-tvm-ffi and Pillow (and this edgekiln), `edgekiln` the "
            "edgekiln command there, other names are looked up in the board's /usr/bin, paths on this "
            "host are passed as they are. The board's userland (a Debian sysroot) is built on first "
            "use, in a minute or so, and cached in $EDGEKILN_CACHE/emulation (default "
            "~/.cache/edgekiln). Exits with COMMAND's exit status."
        ),
        epilog="example: edgekiln emulate rasp4b -- python -c 'import platform; print(platform.machine())'",
    )
    parser.add_argument("profile", metavar="PROFILE", help="profile id or alias with an [emulation] table (rasp4b)")
    parser.add_argument("--rebuild", action="store_true", help="build the sysroot again even when cached")
    parser.add_argument(
        "--info", action="store_true", help="print what the sysroot holds (to stderr when a COMMAND follows)"
    )
    parser.add_argument("--json", action="store_true", help="print --info as JSON")
    # dest "argv": "command" is the subcommand's name in edgekiln.cli.main.  REMAINDER
    # keeps the command's own options away from argparse; it also takes this command's
    # options when they follow PROFILE, which run() picks out (argparse alone cannot
    # parse "PROFILE --info -- COMMAND").
    parser.add_argument(
        "argv",
        nargs=argparse.REMAINDER,
        metavar="-- COMMAND",
        help="the program and its arguments, after -- (python, edgekiln, a name in the board's /usr/bin, or a path)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgekiln.emulation import ensure_sysroot, find_qemu
    from edgekiln.emulation import run as run_emulated
    from edgekiln.emulation.sysroot import resolve_profile
    from edgekiln.execute.progress import ConsoleProgress

    command = _own_options(args)
    profile = resolve_profile(args.profile)
    qemu = find_qemu(profile)
    sysroot = ensure_sysroot(profile, rebuild=args.rebuild, progress=ConsoleProgress())
    if args.info or not command:
        stream = sys.stderr if command else sys.stdout
        data = {
            **sysroot.to_dict(),
            "qemu_path": qemu.path,
            "qemu_installed_version": qemu.version,
            "python_packages": sysroot.python_packages(),
        }
        if args.json:
            print(json.dumps(data, indent=2, sort_keys=True), file=stream)
        else:
            print(_describe(sysroot, qemu), file=stream)
    if not command:
        return 0
    sys.stdout.flush()
    proc = run_emulated(profile, command)
    # Like a shell: a program killed by a signal exits 128 + the signal number.
    return proc.returncode if proc.returncode >= 0 else 128 - proc.returncode


_FLAGS = {"--rebuild": "rebuild", "--info": "info", "--json": "json"}


def _own_options(args: argparse.Namespace) -> list[str]:
    """The command, once this command's flags between PROFILE and ``--`` are set on ``args``."""
    from edgekiln.errors import UserError

    rest = list(args.argv)
    while rest and rest[0].startswith("-"):
        word = rest.pop(0)
        if word == "--":
            break
        if word not in _FLAGS:
            raise UserError(
                f"unknown option {word!r} for edgekiln emulate; put the command after --",
                hint="`edgekiln emulate --help`",
            )
        setattr(args, _FLAGS[word], True)
    return rest


def _describe(sysroot, qemu) -> str:
    packages = sysroot.python_packages()
    python = dict(sysroot.packages).get("python3.11", "?")
    rows = [
        ("profile", sysroot.profile),
        ("sysroot", f"{sysroot.root} ({sysroot.size_bytes / 1e6:.0f} MB)"),
        ("emulator", f"{qemu.path} {qemu.version} -cpu {sysroot.qemu_cpu}"),
        ("python", f"{sysroot.python} (Debian python3.11 {python})"),
        ("python packages", ", ".join(f"{name} {version}" for name, version in sorted(packages.items())) or "-"),
        ("debian packages", f"{len(sysroot.packages)} from {sysroot.suite} {sysroot.debian_arch}"),
        ("missing", "; ".join(sysroot.missing) or "-"),
        ("notes", "; ".join(sysroot.notes) or "-"),
        ("built", f"{sysroot.built_at} in {sysroot.build_seconds:.0f} s with QEMU {sysroot.qemu_version}"),
    ]
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)
