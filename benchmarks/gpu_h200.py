"""The GPU check for the h200 profile, in one run on a machine with an NVIDIA GPU.

1. compiles ResNet-18 for nvidia/h200-sxm at batch 1 and batch 32 with the tvm backend
   (fp32 and fp16, dlight schedules, one CUDA graph) and the onnxruntime backend (CUDA
   execution provider with CUDA graphs); each compile validates its artifact on this GPU;
2. proves that every artifact runs with its runtime alone: a fresh process in which the
   compiler packages (tvm, onnx, tensorflow) cannot be imported loads it with
   ``device="cuda"`` and runs it (the compile already compared it with the fp32 reference);
3. times them with ``edgekiln bench`` against PyTorch eager and torch.compile (fp16,
   CUDA graphs: "reduce-overhead") in the same run, one run per batch.

Usage, from the repository root (about 6-8 minutes on an H200 host with 16 cores):

    PYTHONPATH=$PWD python benchmarks/gpu_h200.py [--out DIR] [--model zoo:resnet18]
        [--runs 200] [--all]

``--all`` also benchmarks the fp32 tvm artifact (compiled and validated either way). The
device needs onnxruntime-gpu for the onnxruntime artifacts (``pip install 'edgekiln[gpu]'``)
and torch with CUDA for the baselines; a step that cannot run says why in the summary and
the others go on. Everything lands in ``--out``: the artifacts, each compile's JSON, the
runtime-only check, the bench reports (``bench-b1.json``, ``bench-b32.json``) and
``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TARGET = "h200"
BATCHES = (1, 32)
# (name, compile flags): what is built per batch.
BUILDS = (
    ("tvm-fp32", ["--backend", "tvm"]),
    ("tvm-fp16", ["--backend", "tvm", "--backend-option", "precision=fp16"]),
    ("ort-cuda", ["--backend", "onnxruntime"]),
)
# Run in a process where the compilers cannot be imported: the artifact needs its runtime only.
_RUNTIME_ONLY = r"""
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tvm", "onnx", "tensorflow"):
            raise ImportError(f"{name} is blocked: an artifact must run with its runtime alone")
sys.meta_path.insert(0, Block())
import numpy as np, edgekiln
model = edgekiln.load(sys.argv[1], device="cuda")
inputs = [np.random.default_rng(0).standard_normal(s).astype(d)
          for s, d in zip(model.get_input_shapes(), model.get_input_dtypes())]
out = model.run(inputs)[0]
print(json.dumps({"ok": True, "shape": list(out.shape), "finite": bool(np.isfinite(out).all()),
                  "compiler_imported": "tvm" in sys.modules}))
"""


def _edgekiln(*args: str, log: Path, timeout: float) -> dict:
    """Run the edgekiln CLI; its --json stdout, or the failure."""
    cmd = [sys.executable, "-m", "edgekiln.cli.main", *args]
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:.0f} s", "command": " ".join(args)}
    log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    result = {"ok": proc.returncode == 0, "seconds": round(time.perf_counter() - started, 1), "command": " ".join(args)}
    if proc.returncode != 0:
        result["error"] = (proc.stdout.strip().splitlines() or proc.stderr.strip().splitlines() or ["?"])[-1][:400]
    return result


def compile_all(model: str, out: Path) -> dict[str, dict]:
    jobs = {}
    with ThreadPoolExecutor(max_workers=3) as pool:
        for batch in BATCHES:
            for name, flags in BUILDS:
                key = f"{name}-b{batch}"
                artifact = out / f"{key}.tar.gz"
                args = [
                    "compile",
                    model,
                    "--target",
                    TARGET,
                    "--input-shape",
                    f"{batch},3,224,224",
                    "-o",
                    str(artifact),
                    "--json",
                    *flags,
                ]
                jobs[key] = pool.submit(_edgekiln, *args, log=out / f"compile-{key}.log", timeout=420)
    results = {}
    for key, job in jobs.items():
        result = job.result()
        log = (out / f"compile-{key}.log").read_text() if (out / f"compile-{key}.log").exists() else ""
        try:
            report = json.loads(log.split("\n--- stderr ---\n")[0])
            result["validation"] = report["validation"]
        except (ValueError, KeyError):
            pass
        results[key] = result
    return results


def runtime_only(out: Path, built: dict[str, dict]) -> dict[str, dict]:
    checks = {}
    for key, result in built.items():
        if not result["ok"]:
            continue
        proc = subprocess.run(
            [sys.executable, "-c", _RUNTIME_ONLY, str(out / f"{key}.tar.gz")],
            capture_output=True,
            text=True,
            timeout=180,
        )
        lines = proc.stdout.strip().splitlines()
        checks[key] = (
            json.loads(lines[-1])
            if proc.returncode == 0 and lines
            else {
                "ok": False,
                "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:400],
            }
        )
    return checks


def bench_all(out: Path, built: dict[str, dict], runs: int, everything: bool) -> dict[str, dict]:
    reports = {}
    for batch in BATCHES:
        names = [n for n, _ in BUILDS if everything or n != "tvm-fp32"]
        artifacts = [str(out / f"{n}-b{batch}.tar.gz") for n in names if built.get(f"{n}-b{batch}", {}).get("ok")]
        if not artifacts:
            reports[f"b{batch}"] = {"ok": False, "error": "no artifact built"}
            continue
        args = ["bench", *artifacts, "--baseline", "torch,torch-compile", "--device", "cuda"]
        args += ["--runs", str(runs), "--warmup", "20", "--json", str(out / f"bench-b{batch}.json")]
        reports[f"b{batch}"] = _edgekiln(*args, log=out / f"bench-b{batch}.log", timeout=600)
        reports[f"b{batch}"]["figures"] = _figures(out / f"bench-b{batch}.json")
    return reports


def _figures(path: Path) -> list[dict]:
    """p50 of each artifact and baseline (ms) and the median per-pair ratio, from a bench report."""
    if not path.exists():
        return []
    rows = []
    for r in json.loads(path.read_text()).get("results", []):
        row = {"backend": r["backend"], "precision": r["precision"], "batch": r["batch"]}
        for s in r["subjects"]:
            row[f"{s['name']}_p50_ms"] = (s.get("latency") or {}).get("p50_ms")
        for c in r["comparisons"]:
            row[f"ratio_to_{c['baseline']}"] = c["ratio"]["median"]
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="gpu-h200-results", help="output folder")
    parser.add_argument("--model", default="zoo:resnet18")
    parser.add_argument("--runs", type=int, default=200, help="measured pairs per artifact and baseline")
    parser.add_argument("--all", action="store_true", help="also benchmark the fp32 tvm artifact")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    query = ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"]
    try:
        gpu = subprocess.run(query, capture_output=True, text=True)
    except FileNotFoundError:
        gpu = subprocess.CompletedProcess(query, 127)
    if gpu.returncode != 0:
        print("no NVIDIA GPU here (nvidia-smi failed): nothing to measure", file=sys.stderr)
        return 2
    summary: dict = {"gpu": gpu.stdout.strip(), "model": args.model, "target": TARGET}
    started = time.perf_counter()
    summary["compile"] = compile_all(args.model, out)
    print(json.dumps(summary["compile"], indent=1), flush=True)
    summary["runtime_only"] = runtime_only(out, summary["compile"])
    print(json.dumps(summary["runtime_only"], indent=1), flush=True)
    summary["bench"] = bench_all(out, summary["compile"], args.runs, args.all)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary["bench"], indent=1))
    return 0 if all(r["ok"] for r in summary["compile"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
