"""`edgekiln compile --backend litert` and `edgekiln run` as a user runs them: the LiteRT
artifact agrees with the TVM artifact's top-1 on fixed inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.resources import as_file
from pathlib import Path

import ai_edge_litert  # noqa: F401 - an installed extra: missing must fail, not skip
import numpy as np
import pytest

from edgekiln import zoo
from edgekiln.runtime.compat import host_info

pytestmark = pytest.mark.skipif(host_info().arch != "x86_64", reason="runs x86-64 artifacts")

EDGEKILN = [sys.executable, "-m", "edgekiln.cli.main"]


def edgekiln(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*EDGEKILN, *args], capture_output=True, text=True, env=dict(os.environ))


def top1(artifact: Path, inputs: list[str]) -> list[int]:
    proc = edgekiln("run", str(artifact), *inputs, "--json", "--top-k", "1")
    assert proc.returncode == 0, proc.stderr
    return [r["top"][0]["index"] for r in json.loads(proc.stdout)["results"]]


def test_compile_and_run_agree_with_tvm(tmp_path, compiled):
    out = tmp_path / "mv2-litert.tar.gz"
    proc = edgekiln(
        "compile", "zoo:mobilenet_v2", "--target", "x86_64", "--backend", "litert", "-o", str(out), "--json"
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["backend"] == "litert" and summary["size_bytes"] == out.stat().st_size
    assert summary["validation"]["status"] == "passed" and summary["validation"]["max_abs_diff"] <= 1e-4

    rng = np.random.default_rng(5)
    arrays = []
    for i in range(3):
        path = tmp_path / f"x{i}.npy"
        np.save(path, rng.standard_normal((1, 3, 224, 224)).astype(np.float32))
        arrays.append(str(path))
    tvm = compiled("zoo:mobilenet_v2", "x86_64").path  # shared with the TVM tests in one session
    with as_file(zoo.sample_image_path()) as sample:
        inputs = [str(sample), *arrays]
        assert top1(out, inputs) == top1(tvm, inputs)

    info = json.loads(edgekiln("inspect", str(out), "--json").stdout)
    assert info["backend"] == "litert" and info["archive"]["verified"] is True


def test_unsupported_operator_fails_with_its_name(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Erf", ["x"], ["y"], name="gelu_erf")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "erf.onnx")
    out = tmp_path / "erf.tar.gz"
    proc = edgekiln("compile", str(tmp_path / "erf.onnx"), "--target", "x86_64", "--backend", "litert", "-o", str(out))
    assert proc.returncode == 4, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "Erf (node 'gelu_erf')" in last and "Traceback" not in proc.stderr
    assert not out.exists()
