"""``edgekiln profiles``: list the device profiles and show one.

``edgekiln profiles list [--json]`` prints a table (id, aliases, arch, accelerator,
backends); ``edgekiln profiles show NAME [--json]`` prints one profile, found by id, alias
or ``.toml`` path. ``--json`` output is for CI jobs and keeps the profile file's layout.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence, TextIO

from edgekiln.device_profiles import DeviceProfile, get_profile, list_profiles


def register(subparsers: Any) -> None:
    """Add the ``profiles`` command and its ``list`` and ``show`` subcommands."""
    parser = subparsers.add_parser(
        "profiles",
        help="list device profiles or show one",
        description="List the device profiles edgekiln compiles for, or show one.",
    )
    commands = parser.add_subparsers(dest="profiles_command")
    commands.required = True

    list_parser = commands.add_parser("list", help="list every device profile")
    list_parser.add_argument("--json", action="store_true", help="print a JSON array")
    list_parser.set_defaults(func=run_list)

    show_parser = commands.add_parser("show", help="show one device profile")
    show_parser.add_argument("name", metavar="NAME", help="profile id, alias or .toml file")
    show_parser.add_argument("--json", action="store_true", help="print a JSON object")
    show_parser.set_defaults(func=run_show)
    # Named after the choices so that a bare `edgekiln profiles` says what it takes.
    commands.metavar = "{" + ",".join(commands.choices) + "}"


def run_list(args: argparse.Namespace) -> int:
    profiles = list_profiles()
    if args.json:
        _print_json([_json_entry(p) for p in profiles])
        return 0
    rows = [
        (
            p.id,
            ", ".join(p.aliases) or "-",
            p.cpu.arch,
            _accelerator_label(p),
            ", ".join(p.backends),
        )
        for p in profiles
    ]
    _print_table(("ID", "ALIASES", "ARCH", "ACCELERATOR", "BACKENDS"), rows)
    return 0


def run_show(args: argparse.Namespace) -> int:
    profile = get_profile(args.name)
    if args.json:
        _print_json(_json_entry(profile))
        return 0
    _print_profile(profile)
    return 0


def _json_entry(profile: DeviceProfile) -> dict[str, Any]:
    entry = profile.to_dict()
    # Derived, so not in the file layout, but what a CI job wants without re-deriving it.
    entry["llvm_target"] = profile.llvm_target()
    return entry


def _accelerator_label(profile: DeviceProfile) -> str:
    acc = profile.accelerator
    return "-" if acc is None else f"{acc.kind} {acc.cuda_arch}"


def _print_json(value: Any, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    json.dump(value, out, indent=2)
    out.write("\n")


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO | None = None) -> None:
    out = out or sys.stdout
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        cells = [cell.ljust(width) for cell, width in zip(row, widths)]
        out.write("  ".join(cells).rstrip() + "\n")


def _print_profile(profile: DeviceProfile, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    cpu = profile.cpu
    lines = [
        (profile.id, ""),
        ("name", profile.name),
        ("description", profile.description or "-"),
        ("aliases", ", ".join(profile.aliases) or "-"),
        ("backends", ", ".join(profile.backends)),
        ("llvm target", profile.llvm_target()),
        ("cpu", f"{cpu.arch}, {cpu.cores} cores, {cpu.mcpu}"),
        ("  triple", f"{cpu.triple} (LLVM {cpu.llvm_triple})"),
        ("  peak fp32", f"{_number(cpu.peak_gflops_fp32)} GFLOP/s"),
        ("  memory bandwidth", f"{_number(cpu.memory_bandwidth_gbs)} GB/s"),
        ("  source", cpu.source),
    ]
    if cpu.variants:
        lines.append(("  variants", ", ".join(cpu.variants) + " (tvm: a build for each beside this one)"))
    acc = profile.accelerator
    if acc is None:
        lines.append(("accelerator", "-"))
    else:
        lines += [
            ("accelerator", f"{acc.name} ({acc.kind} {acc.cuda_arch})"),
            ("  peak fp32", f"{_number(acc.peak_gflops_fp32)} GFLOP/s"),
            ("  memory bandwidth", f"{_number(acc.memory_bandwidth_gbs)} GB/s"),
            ("  source", acc.source),
        ]
    tc = profile.toolchain
    toolchain = f"{tc.cc} (Debian package {tc.debian_package or '-'})" if tc.cc else "native"
    lines.append(("toolchain", toolchain))
    emu = profile.emulation
    lines.append(("emulation", "-" if emu is None else f"{emu.qemu_binary} -cpu {emu.cpu}"))
    lines.append(("wheel tags", ", ".join(profile.python.platform_tags)))

    out.write(lines[0][0] + "\n")
    width = max(len(label) for label, _ in lines[1:])
    for label, value in lines[1:]:
        out.write(f"  {label.ljust(width)}  {value}\n")


def _number(value: float) -> str:
    # 384.0 -> "384", 45.76 -> "45.76": the figures are as exact as their source, no more.
    return f"{value:,.2f}".rstrip("0").rstrip(".")
