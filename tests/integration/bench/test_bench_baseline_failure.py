"""A baseline that cannot run the model (the torch baseline on an operator it lacks) is
reported, and the artifact and ONNX Runtime are still measured: real processes, real runtimes."""

from __future__ import annotations

import numpy as np
import pytest

from edgekiln.bench.harness import BenchOptions, bench
from edgekiln.compile.api import CompileOptions, compile_model
from edgekiln.runtime.compat import host_info

pytestmark = pytest.mark.skipif(host_info().arch != "x86_64", reason="the x86_64 profile runs on x86-64 hosts only")


def erf_classifier(path):
    """A small classifier whose Erf (GELU's) the torch baseline does not run."""
    import onnx
    from onnx import TensorProto, helper

    weights = np.random.default_rng(0).normal(size=(32, 10)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Erf", ["x"], ["e"]),
            helper.make_node("MatMul", ["e", "w"], ["y"]),
        ],
        "erf-head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [helper.make_tensor("w", TensorProto.FLOAT, [32, 10], weights.ravel())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_baseline_that_cannot_run_is_reported_and_the_rest_is_measured(tmp_path):
    pytest.importorskip("torch", reason="the torch baseline needs torch (an installed extra)")
    source = erf_classifier(tmp_path / "erf-head.onnx")
    artifact = compile_model(source, "x86_64", tmp_path / "erf.tar.gz", options=CompileOptions(backend="onnxruntime"))
    options = BenchOptions(runs=3, baselines=("onnxruntime", "torch"), baseline_model=str(source))
    (result,) = bench([artifact.path], options).results
    assert set(result.baselines_failed) == {"torch"}
    assert "the torch baseline cannot run operators ['Erf']" in result.baselines_failed["torch"]
    assert [s.name for s in result.subjects] == ["onnxruntime-artifact", "onnxruntime"]
    assert [c.baseline for c in result.comparisons] == ["onnxruntime"] and result.pairs == 3
    assert result.correctness is not None and result.correctness.max_abs_diff < 1e-5
