"""``edgekiln bench`` as a CI job runs it: a real process, a real artifact, the JSON it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgekiln.compile.api import CompileOptions
from edgekiln.runtime.compat import host_info

# The tvm backend, explicitly: compile now picks a backend by itself ("auto").
TVM = CompileOptions(backend="tvm")
pytestmark = pytest.mark.skipif(host_info().arch != "x86_64", reason="benchmarks x86-64 artifacts on this host")

EDGEKILN = [sys.executable, "-m", "edgekiln.cli.main"]


def edgekiln(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*EDGEKILN, *args], capture_output=True, text=True, cwd=cwd, env=dict(os.environ))


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, needle: str) -> None:
    assert proc.returncode == code, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("edgekiln bench: error:") and needle in last, proc.stderr
    assert "Traceback" not in proc.stderr


NUMBER = (int, float)
LATENCY_KEYS = {
    "n": int,
    "mean_ms": NUMBER,
    "stdev_ms": NUMBER,
    "min_ms": NUMBER,
    "p50_ms": NUMBER,
    "p90_ms": NUMBER,
    "p99_ms": NUMBER,
    "max_ms": NUMBER,
}
RATIO_KEYS = {
    "n": int,
    "median": NUMBER,
    "geomean": NUMBER,
    "min": NUMBER,
    "p10": NUMBER,
    "p90": NUMBER,
    "max": NUMBER,
    "ci95_low": NUMBER,
    "ci95_high": NUMBER,
    "spread": NUMBER,
}
SUBJECT_KEYS = {
    "name": str,
    "role": str,
    "version": str,
    "load_s": NUMBER,
    "first_inference_ms": NUMBER,
    "latency": dict,
    "throughput_samples_per_s": NUMBER,
    "achieved_gflops": NUMBER,
    "peak_share": NUMBER,
    "peak_rss_mb": NUMBER,
    "rss_before_load_mb": NUMBER,
    "model_bytes": int,
    "times_ms": list,
    "pair_ms": list,
    "queries_per_pair": int,
}
RESULT_KEYS = {
    "key": str,
    "model": str,
    "profile": str,
    "backend": str,
    "precision": str,
    "device": str,
    "scenario": str,
    "batch": int,
    "calls_per_query": int,
    "artifact": str,
    "artifact_bytes": int,
    "runner": str,
    "timings_meaningful": bool,
    "macs": int,
    "flops_per_sample": NUMBER,
    "peak_gflops": NUMBER,
    "pairs": int,
    "warmup": int,
    "subjects": list,
    "comparisons": list,
    "correctness": dict,
    "wall_s": NUMBER,
}


def assert_schema(data: dict, keys: dict) -> None:
    for key, kind in keys.items():
        assert key in data, f"missing {key}"
        assert isinstance(data[key], kind), f"{key} is {type(data[key]).__name__}"


def test_bench_json_schema(compiled, tmp_path):
    artifact = compiled("zoo:mobilenet_v2", "x86_64", options=TVM).path
    out = tmp_path / "out.json"
    proc = edgekiln("bench", str(artifact), "--baseline", "onnxruntime", "--runs", "3", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    # The table for a person, progress on stderr, the report in the file.
    assert "tvm/onnxruntime time ratio: median" in proc.stdout and "95% CI" in proc.stdout
    assert "pair 3/3" in proc.stderr
    data = json.loads(out.read_text())
    assert data["schema"] == "edgekiln.bench/1"
    assert data["command"].startswith("edgekiln bench ")
    assert {"cpu", "cores", "loadavg_before", "loadavg_after"} <= set(data["host"])
    assert data["options"]["baselines"] == ["onnxruntime"] and data["options"]["runs"] == 3
    (result,) = data["results"]
    assert_schema(result, RESULT_KEYS)
    assert result["key"] == "mobilenet_v2/generic/x86-64-avx2/tvm/fp32/cpu/single-stream/b1"
    assert [s["name"] for s in result["subjects"]] == ["tvm", "onnxruntime"]
    for subject in result["subjects"]:
        assert_schema(subject, SUBJECT_KEYS)
        assert_schema(subject["latency"], LATENCY_KEYS)
        n = 3 * subject["queries_per_pair"]
        assert subject["latency"]["n"] == n and len(subject["times_ms"]) == n and len(subject["pair_ms"]) == 3
    (comparison,) = result["comparisons"]
    assert comparison["baseline"] == "onnxruntime"
    assert_schema(comparison["ratio"], RATIO_KEYS)
    assert comparison["ratio"]["ci95_low"] <= comparison["ratio"]["median"] <= comparison["ratio"]["ci95_high"]
    assert comparison["speedup"] == pytest.approx(1 / comparison["ratio"]["median"])
    assert result["correctness"]["top1_agreement"] == 1.0
    assert result["artifact_bytes"] == artifact.stat().st_size


def test_bench_json_to_stdout(compiled):
    artifact = compiled("zoo:mobilenet_v2", "x86_64", options=TVM).path
    proc = edgekiln("bench", str(artifact), "--baseline", "none", "--runs", "1", "--warmup", "0", "--json", "-")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["results"][0]["comparisons"] == [] and data["options"]["baselines"] == ["none"]


def test_bench_usage_errors(compiled, tmp_path):
    artifact = str(compiled("zoo:mobilenet_v2", "x86_64", options=TVM).path)
    assert_one_line_error(edgekiln("bench", str(tmp_path / "nope.tar.gz")), 2, "does not exist")
    assert_one_line_error(edgekiln("bench", artifact, "--runs", "0"), 2, "--runs must be at least 1")
    assert_one_line_error(edgekiln("bench", artifact, "--baseline", "onnxruntime,tensorrt"), 2, "unknown baseline")
    assert_one_line_error(edgekiln("bench", artifact, "--batch", "4"), 2, "--scenario offline")
    # No agent listens there: the error says so instead of hanging.
    assert_one_line_error(
        edgekiln("bench", artifact, "--agent", f"unix://{tmp_path}/agent.sock", "--baseline", "none"),
        4,
        "no agent answered",
    )
    proc = edgekiln("bench", artifact, "--runs", "2", "--duration", "1")
    assert proc.returncode == 2 and "not allowed with" in proc.stderr
