"""MXNet importer parity: Gluon zoo models and small operator graphs exported by real MXNet,
converted without MXNet, run with onnxruntime and compared with MXNet's own outputs.

The exports need the MXNet reference environment (``.venv-mxnet``); the tests skip without
it unless EDGEKILN_REQUIRE_MXNET=1, when they fail.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgekiln.compile.frontends import mxnet as mxf  # noqa: E402
from tests.frameworks.mxnet_reference import export_gluon, export_operator_cases, require_mxnet_python  # noqa: E402

MODELS = ["mobilenetv2_1.0", "resnet18_v1", "resnet18_v2", "mobilenet1.0", "mobilenetv2_0.5", "mobilenet0.25"]
TOLERANCE = 1e-4
LEVELS = {
    "no-optimizations": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "default-optimizations": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@pytest.fixture(scope="session")
def gluon_export(tmp_path_factory):
    """gluon_export(name) -> export_gluon's dict, made once per session."""
    require_mxnet_python()
    root = tmp_path_factory.mktemp("mxnet-gluon")
    cache: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in cache:
            cache[name] = export_gluon(name, root / name)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def operator_cases(tmp_path_factory):
    require_mxnet_python()
    return export_operator_cases(tmp_path_factory.mktemp("mxnet-operators"))


def run(model, feeds: dict[str, np.ndarray], level) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.mark.parametrize("name", MODELS)
def test_gluon_model_matches_mxnet(gluon_export, name):
    ref = gluon_export(name)
    # Outputs O(1), so the absolute tolerance means something (the reference BNs are calibrated).
    assert 0.1 < float(np.abs(ref["output"]).max()) < 50, ref["report"]
    model = mxf.to_onnx(ref["symbol"], ref["params"], {"data": [1, 3, 224, 224]}, name=name)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["data"]
    failures = []
    for label, level in LEVELS.items():
        (got,) = run(model, {"data": ref["input"]}, level)
        assert got.shape == ref["output"].shape
        diff = float(np.abs(got - ref["output"]).max())
        if diff >= TOLERANCE or got.argmax() != ref["output"].argmax():
            failures.append(
                f"{label}: max abs diff {diff:.3g} (tolerance {TOLERANCE}), "
                f"argmax {got.argmax()} vs MXNet's {ref['output'].argmax()}"
            )
    assert not failures, f"{name} differs from MXNet: " + "; ".join(failures)


def test_every_operator_case_matches_mxnet(operator_cases):
    """Each converted operator (defaults, pooling conventions, softmax modes...) against MXNet."""
    assert len(operator_cases) >= 40
    failures = []
    for case, ref in operator_cases.items():
        shapes = {k: list(v.shape) for k, v in ref["inputs"].items()}
        model = mxf.to_onnx(ref["symbol"], ref["params"], shapes, name=case)
        onnx.checker.check_model(model, full_check=True)
        assert sorted(i.name for i in model.graph.input) == sorted(ref["inputs"]), case
        got = run(model, ref["inputs"], LEVELS["no-optimizations"])
        if len(got) != len(ref["outputs"]):
            failures.append(f"{case}: {len(got)} outputs, MXNet has {len(ref['outputs'])}")
            continue
        for i, (y, want) in enumerate(zip(got, ref["outputs"])):
            if y.shape != want.shape:
                failures.append(f"{case} output {i}: shape {y.shape}, MXNet's {want.shape}")
                continue
            diff = float(np.abs(y - want).max())
            tolerance = 1e-5 * max(1.0, float(np.abs(want).max()))
            if diff > tolerance:
                failures.append(f"{case} output {i}: max abs diff {diff:.3g} > {tolerance:.3g}")
    assert not failures, "operators that differ from MXNet:\n" + "\n".join(failures)
