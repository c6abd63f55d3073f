"""Size of the device install and peak RSS of running zoo MobileNetV2 with it.

    python benchmarks/device_footprint.py [--artifact PATH] [--out results/device_footprint.json]

Creates a fresh virtual environment, installs edgekiln from this checkout without extras
(what a device gets from `pip install edgekiln`), and reports the size it added beyond an
empty venv, the packages it pulled in, and the peak resident memory of a process that loads
an x86-64 MobileNetV2 artifact and runs it ten times — beside the peak RSS of the same
interpreter importing only numpy, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Peak RSS is VmHWM from /proc: ru_maxrss of a child started from a big process keeps the
# parent's high-water mark across exec on Linux.
RUN = """
import sys, time
import numpy as np
import edgekiln
t0 = time.perf_counter()
model = edgekiln.load(sys.argv[1])
load_s = time.perf_counter() - t0
x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
for _ in range(10):
    model.run([x])
heavy = sorted(m for m in ("tvm", "onnx", "onnxruntime", "torch", "tensorflow") if m in sys.modules)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(hwm, round(load_s, 3), ",".join(heavy) or "-")
"""
FLOOR = "import numpy; print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')))"


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", help="x86-64 MobileNetV2 tvm artifact (default: compiled now)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "device_footprint.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgekiln-footprint-") as tmp:
        tmp_path = Path(tmp)
        artifact = args.artifact
        if artifact is None:
            from edgekiln.compile.api import CompileOptions, compile_model

            artifact = str(tmp_path / "mobilenet_v2.tar.gz")
            compile_model("zoo:mobilenet_v2", "x86_64", artifact, options=CompileOptions(backend="tvm", validate=False))
        empty = tmp_path / "empty"
        venv.create(empty, with_pip=True)
        device = tmp_path / "device"
        venv.create(device, with_pip=True)
        python = device / "bin" / "python"
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", str(ROOT)],
            check=True,
            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        )
        freeze = subprocess.run(
            [str(python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=True
        ).stdout
        packages = {p["name"]: p["version"] for p in json.loads(freeze)}
        added = _size(device) - _size(empty)
        floor = int(subprocess.run([str(python), "-c", FLOOR], capture_output=True, text=True, check=True).stdout)
        proc = subprocess.run([str(python), "-c", RUN, artifact], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"running the artifact in the device install failed: {proc.stderr.strip()[-500:]}")
        out = proc.stdout
        rss_kb, load_s, heavy = out.split()
        artifact_bytes = os.path.getsize(artifact)
    result = {
        "command": "python benchmarks/device_footprint.py",
        "install_bytes": added,
        "packages": packages,
        "artifact_bytes": artifact_bytes,
        "peak_rss_kib_running_mobilenet_v2": int(rss_kb),
        "peak_rss_kib_python_numpy_only": floor,
        "load_seconds": float(load_s),
        "heavy_modules_loaded": heavy,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
