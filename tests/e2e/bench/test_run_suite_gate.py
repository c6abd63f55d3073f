"""``edgekiln suite`` and ``edgekiln gate``, with real benchmark runs.

The acceptance check: a stored baseline edited to be faster than reality makes the gate
fail, naming what regressed — measured by a real second run, not made up. Twice as fast,
not 30%: two runs here differed by more than 30% (see the test).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib  # noqa: F401 - an installed extra: missing must fail, not skip
import pytest

from edgekiln.compile.api import CompileOptions
from edgekiln.runtime.compat import host_info
from tests.frameworks.models import tflite_head

# The tvm backend, explicitly: compile now picks a backend by itself ("auto").
TVM = CompileOptions(backend="tvm")
pytestmark = pytest.mark.skipif(host_info().arch != "x86_64", reason="benchmarks x86-64 artifacts on this host")

ROOT = Path(__file__).resolve().parents[3]
SUITE = """
[gate]
ratio = 0.15
latency = 0.25

[suites.ci]
description = "MobileNetV2 on this host"
models = ["mobilenet_v2"]
profiles = ["x86_64"]
backends = ["tvm", "no-such-backend"]
baselines = ["onnxruntime"]
runs = 21
"""


def edgekiln(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgekiln.cli.main", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        cwd=ROOT,
    )


def run_suite(suite_file: Path, *args: str) -> subprocess.CompletedProcess:
    return edgekiln("suite", str(suite_file), *args)


def made_faster(data: dict, factor: float) -> dict:
    """The stored report as if the artifact had been ``factor`` times the time it took."""
    for result in data["results"]:
        for subject in result["subjects"]:
            if subject["role"] != "candidate":
                continue
            subject["latency"] = {k: (v * factor if k.endswith("_ms") else v) for k, v in subject["latency"].items()}
            subject["times_ms"] = [t * factor for t in subject["times_ms"]]
            subject["pair_ms"] = [t * factor for t in subject["pair_ms"]]
            subject["throughput_samples_per_s"] /= factor
        for comparison in result["comparisons"]:
            comparison["ratio"] = {
                k: (v if k in ("n", "spread") else v * factor) for k, v in comparison["ratio"].items()
            }
            comparison["speedup"] /= factor
    return data


def assert_valid_png(path: Path) -> None:
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 150


def test_suite_report_plots_and_gate(compiled, tmp_path):
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE)
    # The suite would compile the same artifact the fixture already has: hand it over.
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    shutil.copy(
        compiled("zoo:mobilenet_v2", "x86_64", options=TVM).path, artifacts / "mobilenet_v2-x86_64-tvm-fp32-b1.tar.gz"
    )
    first = tmp_path / "first"
    proc = run_suite(suite, "--suite", "ci", "--out", str(first), "--reuse-artifacts", str(artifacts))
    assert proc.returncode == 0, proc.stderr
    results = json.loads((first / "results.json").read_text())
    (result,) = results["results"]
    assert result["key"] == "mobilenet_v2/generic/x86-64-avx2/tvm/fp32/cpu/single-stream/b1"
    assert result["pairs"] == 21 and result["comparisons"][0]["ratio"]["n"] == 21
    (skipped,) = results["skipped"]
    assert skipped["status"] == "skipped" and "no-such-backend" in skipped["reason"]
    report = (first / "report.md").read_text()
    assert "| mobilenet_v2 | generic/x86-64-avx2 | tvm | fp32 |" in report and "Load average" in report
    for name in ("latency.png", "ratios.png", "accuracy_latency.png"):
        assert f"]({name})" in report
        assert_valid_png(first / name)

    # The report against itself passes the gate.
    gate = edgekiln("gate", str(first / "results.json"), str(first / "results.json"))
    assert gate.returncode == 0, gate.stderr
    assert "passed" in gate.stdout

    # A stored baseline edited to be twice as fast as reality: a real second run fails the gate.
    # 21 pairs, not 5, and half, not 70%: the gate compares medians, and between two runs here
    # TVM's time went from 23.4 to 19.2 ms and its ratio to ONNX Runtime from 3.29 to 2.11
    # (a 2-core host shared with the suite's services, TVM's spinning thread pool), so a 30%
    # faster baseline sat within the allowed margins and the gate rightly passed.
    stored = tmp_path / "stored.json"
    stored.write_text(json.dumps(made_faster(results, 0.5), indent=2))
    second = tmp_path / "second"
    proc = run_suite(
        suite,
        "--suite",
        "ci",
        "--out",
        str(second),
        "--reuse-artifacts",
        str(artifacts),
        "--gate",
        str(stored),
    )
    assert proc.returncode == 1, proc.stderr
    assert "regression gate FAILED" in proc.stderr
    assert "REGRESSED mobilenet_v2/generic/x86-64-avx2/tvm/fp32/cpu/single-stream/b1" in proc.stderr
    verdict = json.loads((second / "gate.json").read_text())
    assert verdict["passed"] is False
    assert {f["metric"] for f in verdict["regressions"]} <= {"ratio to onnxruntime", "p50 latency"}
    assert "**failed**" in (second / "report.md").read_text()


def test_bad_suites_are_clear_errors(tmp_path):
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE.replace("runs = 21", "runs = 21\nspeed = 3"))
    proc = run_suite(suite, "--suite", "ci")
    assert proc.returncode == 2 and "unknown keys ['speed']" in proc.stderr
    proc = run_suite(suite, "--suite", "nightly")
    assert proc.returncode == 2 and "has no suite 'nightly'" in proc.stderr


TFLITE_SUITE = """
[suites.user]
description = "a user's .tflite classifier on this host and on an H200 (no GPU here)"
models = ["head.tflite"]
profiles = ["x86_64", "h200"]
backends = ["onnxruntime"]
baselines = ["onnxruntime"]
runs = 3
"""


def test_a_tflite_file_runs_and_a_combination_the_host_cannot_run_is_skipped(tmp_path):
    tflite_head(tmp_path / "head.tflite")
    (tmp_path / "suite.toml").write_text(TFLITE_SUITE)
    proc = run_suite(tmp_path / "suite.toml", "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    (result,) = results["results"]
    assert result["key"] == "head/generic/x86-64-avx2/onnxruntime/fp32/cpu/single-stream/b1"
    assert result["pairs"] == 3 and result["correctness"]["top1_agreement"] == 1.0
    (skipped,) = results["skipped"]
    assert skipped["key"].startswith("head/nvidia/h200-sxm/onnxruntime/fp32/")
    assert skipped["status"] == "skipped"
    assert "GPU" in skipped["reason"], skipped["reason"]
    assert "(1 measured, 1 skipped, 0 failed)" in proc.stderr
