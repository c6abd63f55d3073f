"""Latency of one zoo model through LiteRT fp32, LiteRT int8 and ONNX Runtime fp32 (default
settings, on the source model), measured interleaved in one process so that all three see
the same machine load.

    .venv/bin/python benchmarks/litert_latency.py --model mobilenet_v2 --runs 50

The LiteRT artifacts go through ``edgekiln.runtime.Model`` (the device path: layout and
int8 conversion included); ONNX Runtime runs the canonical ONNX model with default session
options. Prints one JSON object with the median and 90th percentile per engine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from importlib.resources import as_file
from pathlib import Path

import numpy as np


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--target", default="x86_64")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)

    import onnxruntime as ort

    from edgekiln import zoo
    from edgekiln.compile.api import CompileOptions, compile_model
    from edgekiln.runtime import Model
    from edgekiln.runtime.executors.litert import _threads
    from edgekiln.runtime.preprocess import preprocess

    work = Path(tempfile.mkdtemp(prefix="edgekiln-bench-"))
    try:
        cal = work / "calibration"
        cal.mkdir()
        with as_file(zoo.sample_image_path()) as sample:
            shutil.copyfile(sample, cal / "sample.png")
            x = preprocess(sample, zoo.preprocessing(args.model), (1, 3, 224, 224))
        rng = np.random.default_rng(0)
        np.save(work / "cal.npy", np.concatenate([x, rng.standard_normal((15, 3, 224, 224)).astype(np.float32)]))
        fp32 = compile_model(
            f"zoo:{args.model}", args.target, work / "fp32.tar.gz", options=CompileOptions(backend="litert")
        )
        int8 = compile_model(
            f"zoo:{args.model}",
            args.target,
            work / "int8.tar.gz",
            options=CompileOptions(
                backend="litert",
                backend_options={"quantize": "int8", "calibration": str(work / "cal.npy")},
                validate=False,
            ),
        )
        session = ort.InferenceSession(zoo.build(args.model).SerializeToString(), providers=["CPUExecutionProvider"])
        engines = {
            "litert_fp32": Model(fp32.path).run,
            "litert_int8": Model(int8.path).run,
            "onnxruntime_fp32": lambda inputs: session.run(None, {"input": inputs[0]}),
        }
        for _ in range(args.warmup):
            for run in engines.values():
                run([x])
        times: dict[str, list[float]] = {name: [] for name in engines}
        for _ in range(args.runs):
            for name, run in engines.items():
                start = time.perf_counter()
                run([x])
                times[name].append((time.perf_counter() - start) * 1e3)
        report = {
            "model": args.model,
            "runs": args.runs,
            "cpus": len(os.sched_getaffinity(0)),
            # The profile's cores, capped at this machine's usable CPUs as the executor does.
            "litert_threads": _threads(fp32.manifest.backend_options["num_threads"]),
            "ms": {
                name: {"median": round(float(np.median(t)), 3), "p90": round(float(np.percentile(t, 90)), 3)}
                for name, t in times.items()
            },
        }
        base = report["ms"]["onnxruntime_fp32"]["median"]
        report["relative_to_onnxruntime_fp32"] = {
            name: round(v["median"] / base, 3) for name, v in report["ms"].items()
        }
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
