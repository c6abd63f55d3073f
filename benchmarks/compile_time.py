"""Compile time per zoo model per device profile (a figure, not a test).

    python benchmarks/compile_time.py [--models resnet18,...] [--profiles x86_64,...] [--backend tvm]
                                      [--out results/compile_time.json]

Each compile runs in this process, one after another, with the TVM backend (the one that
compiles: the others convert) and validation off, so the figure is the compile alone
(import, Relax conversion, build with any tuning records, link, pack); the time of each step
is kept too. It uses edgekiln's cache as it is (the aarch64 TVM runtime library lives
there); with an empty one, a compile also unpacks the profile's shipped records, about half
a second more. The machine and its load are recorded beside the figures, since compile time
scales with the build host's cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from edgekiln import zoo
from edgekiln.compile.api import CompileOptions, compile_model
from edgekiln.execute.progress import Deferred

DEFAULT_PROFILES = ("x86_64", "ml_c5", "rasp4b", "rasp3b", "jetson_orin", "ml_g4dn", "h200")


def _step_times(steps: list[tuple[str, float]]) -> dict[str, float]:
    """Each step's seconds, by its name without the file, model or record details that the
    reporter's description carries (a temporary directory's path, above all)."""
    times = {}
    for description, elapsed in steps:
        step = description.split(" (")[0].split(" for ")[0].split(" with ")[0]
        times["write" if step.startswith("write ") else step] = round(elapsed, 2)
    return times


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(zoo.MODEL_NAMES))
    parser.add_argument("--profiles", default=",".join(DEFAULT_PROFILES))
    parser.add_argument("--backend", default="tvm", help="a backend name, or auto")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "compile_time.json"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgekiln-bench-") as tmp:
        for model in args.models.split(","):
            for profile in args.profiles.split(","):
                steps = Deferred()
                start = time.perf_counter()
                try:
                    artifact = compile_model(
                        f"zoo:{model}",
                        profile,
                        Path(tmp) / f"{model}-{profile}.tar.gz",
                        options=CompileOptions(backend=args.backend, validate=False),
                        progress=steps,
                    )
                    size, error = artifact.size, None
                except Exception as exc:  # record and go on: one failing pair should not hide the rest
                    size, error = None, f"{type(exc).__name__}: {exc}"
                seconds = round(time.perf_counter() - start, 2)
                rows.append(
                    {
                        "model": model,
                        "profile": profile,
                        "seconds": seconds,
                        "steps": _step_times(steps.steps),
                        "artifact_bytes": size,
                        "error": error,
                    }
                )
                print(f"{model:<20} {profile:<12} {seconds:7.2f} s  {error or ''}", file=sys.stderr)
                with contextlib.suppress(FileNotFoundError):
                    (Path(tmp) / f"{model}-{profile}.tar.gz").unlink()
    result = {
        "command": "python benchmarks/compile_time.py " + " ".join(sys.argv[1:]),
        "backend": args.backend,
        "host": {
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_after": os.getloadavg(),
        },
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(_markdown(result))
    print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    return 0


def _markdown(result: dict) -> str:
    profiles = list(dict.fromkeys(r["profile"] for r in result["results"]))
    models = list(dict.fromkeys(r["model"] for r in result["results"]))
    table = {(r["model"], r["profile"]): r for r in result["results"]}
    lines = [
        "# Compile time per zoo model per profile",
        "",
        f"Host: {result['host']['cpu']}, {result['host']['cores']} cores. "
        f"Command: `{result['command'].strip()}`. Seconds of wall time for one compile without "
        f"validation with the {result['backend']} backend (import, conversion, build with any "
        "tuning records, CPU variants included, link with the profile's toolchain, pack); "
        "artifact size in MB in brackets. CUDA profiles include nvcc compiling the kernels.",
        "",
        "| model | " + " | ".join(profiles) + " |",
        "|---|" + "---|" * len(profiles),
    ]
    for model in models:
        cells = []
        for profile in profiles:
            r = table[(model, profile)]
            cells.append("failed" if r["error"] else f"{r['seconds']:.1f} ({r['artifact_bytes'] / 1e6:.0f})")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    errors = [r for r in result["results"] if r["error"]]
    if errors:
        lines += ["", "Failures:", ""] + [f"- {r['model']} / {r['profile']}: {r['error']}" for r in errors]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
