"""``edgekiln inspect``: show an artifact's manifest and the size of each file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="show an artifact's manifest and file sizes",
        description="Print the manifest of ARTIFACT and the size of every file in it.",
    )
    parser.add_argument("artifact", metavar="ARTIFACT", help="artifact .tar.gz")
    parser.add_argument("--json", action="store_true", help="print the manifest and sizes as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import tempfile

    from edgekiln.artifact import MANIFEST_NAME, unpack

    # One verified extraction gives the manifest, the sizes and the binaries: the archive is
    # decompressed once, and nothing is shown that was not checked against the manifest.
    with tempfile.TemporaryDirectory(prefix="edgekiln-inspect-") as tmp:
        root = Path(tmp) / "a"
        manifest = unpack(args.artifact, root)
        sizes = {MANIFEST_NAME: (root / MANIFEST_NAME).stat().st_size, **{f.path: f.size for f in manifest.files}}
        binaries = describe_binaries(manifest, root)
    data = manifest.to_dict()
    data["archive"] = {
        "path": args.artifact,
        "size_bytes": Path(args.artifact).stat().st_size,
        "members": sizes,
        # Extraction checks every member against the manifest's size and sha256.
        "verified": True,
        "binaries": binaries,
    }
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(render(data))
    return 0


def describe_binaries(manifest: Any, root: Path) -> dict:
    """ELF machine and CUDA images of each library in the artifact extracted (and verified) at ``root``."""
    from edgekiln.artifact.binaries import cuda_images, elf_machine

    found = {}
    for entry in manifest.files:
        machine = elf_machine(root / entry.path)
        if machine is None:
            continue
        images = cuda_images(root / entry.path) if entry.role == "model-library" else []
        found[entry.path] = {"elf": machine, "cuda": [{"kind": i.kind, "arch": i.arch, "size": i.size} for i in images]}
    return found


def render(data: dict) -> str:
    """The artifact summary as text (also used by ``edgekiln run`` and ``make demo``)."""
    m, rt, v = data["model"], data["runtime"], data["validation"]
    lines = [
        f"artifact   {data['archive']['path']} ({data['archive']['size_bytes'] / 1e6:.1f} MB)",
        f"model      {m['name']} v{m['version']} ({m['source_format']}, sha256 {m['source_sha256'][:12]}…)",
        f"profile    {data['profile']}   backend {data['backend']}   target {data['target_triple']}"
        + (f"   CUDA {rt['cuda_arch']}" if rt.get("cuda_arch") else ""),
        "compiler   "
        + ", ".join(f"{k} {val}" for k, val in data["compiler"].items())
        + f"; edgekiln {data['edgekiln_version']}",
        f"needs      {rt['arch']} {rt['os']}"
        + (f", glibc >= {rt['glibc']}" if rt.get("glibc") else "")
        + (f", CPU features {' '.join(rt['cpu_features'])}" if rt.get("cpu_features") else "")
        + (f", {rt['cuda_runtime']}" if rt.get("cuda_runtime") else "")
        + (f", {' '.join(rt['python_packages'])}" if rt.get("python_packages") else ""),
    ]
    for note in rt.get("notes") or []:
        lines.append(f"note       {note}")
    for kind in ("inputs", "outputs"):
        for t in data[kind]:
            lines.append(f"{kind[:-1]:<10} {t['name']} {t['dtype']} {t['shape']}")
    if v["status"] == "passed" and v.get("max_abs_diff") is not None:
        rel = "" if v.get("tolerance_rel") is None else f", max rel diff {v.get('max_rel_diff') or 0:.2e}"
        tol = f"{v['tolerance_abs']:g}" + (
            "" if v.get("tolerance_rel") is None else f" + {v['tolerance_rel']:g} x |ref|"
        )
        lines.append(
            f"validation passed: max abs diff {v['max_abs_diff']:.2e}{rel} (tolerance {tol}), "
            f"top-1 agreement {v['top1_agreement']:.2f} ({v['samples']} samples, {v['reference']})"
        )
        if v.get("second_reference"):
            second = v.get("second_max_abs_diff")
            lines.append(f"second reference {v['second_reference']}" + ("" if second is None else f": {second:.2e}"))
        lines += [f"warning    {w}" for w in v.get("warnings") or ()]
    elif v["status"] == "passed":
        lines.append(f"validation passed: {v['reference']}, top-1 agreement {v['top1_agreement']:.2f}")
    else:
        lines.append(f"validation {v['status']}: {v.get('reason')}")
    lines.append("files")
    sizes = data["archive"]["members"]
    binaries = data["archive"].get("binaries", {})
    for f in data["files"]:
        kind = binaries.get(f["path"])
        what = ""
        if kind:
            cuda = ", ".join(f"{i['kind']} {i['arch']}" for i in kind["cuda"])
            what = f"  ELF {kind['elf']}" + (f" + CUDA {cuda}" if cuda else "")
        if f.get("cpu_features"):
            what += f"  loaded on CPUs with {' '.join(f['cpu_features'])}"
        lines.append(f"  {f['path']:<28} {f['size'] / 1e6:8.2f} MB  {f['role']:<22} sha256 {f['sha256'][:16]}…{what}")
    if "manifest.json" in sizes:
        lines.append(f"  {'manifest.json':<28} {sizes['manifest.json'] / 1e6:8.2f} MB")
    return "\n".join(lines)
