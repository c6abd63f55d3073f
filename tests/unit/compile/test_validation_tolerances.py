"""Validation as numpy's allclose with both figures, the second reference of onnxruntime
artifacts, and the warning on outputs that do not depend on the input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edgekiln.artifact.manifest import TensorSpec
from edgekiln.artifact.package import read_manifest
from edgekiln.compile import second_reference
from edgekiln.compile.api import CompileOptions, compile_model
from edgekiln.compile.validate import ValidationOptions, compare, constant_outputs
from edgekiln.errors import BackendError
from edgekiln.execute.inputs import compare_outputs
from tests.data.classifiers import write_classifier

OUT = [TensorSpec("y", "float32", (1, 2))]
REF = [[np.array([[10.0, 0.001]], np.float32)]]
CAND = [[np.array([[10.0011, 0.001]], np.float32)]]


def test_both_figures_and_the_allclose_rule():
    diff = compare_outputs(REF, CAND, rtol=2e-4)
    assert diff.worst == pytest.approx(1.1e-3, rel=1e-2)
    assert diff.worst_rel == pytest.approx(1.1e-4, rel=1e-2)
    assert diff.failing(atol=1e-4, rtol=2e-4) == []  # 1.1e-3 <= 1e-4 + 2e-4 * 10
    assert compare_outputs(REF, CAND).failing(atol=1e-4, rtol=0.0) == [0]  # absolute only: fails
    np.testing.assert_equal(np.allclose(CAND[0][0], REF[0][0], rtol=2e-4, atol=1e-4), True)


def test_compare_reports_and_records_both_tolerances():
    options = ValidationOptions(tolerance_abs=1e-4, tolerance_rel=2e-4)
    validation = compare(REF, CAND, OUT, options, executed_on="host")
    assert validation.tolerance_abs == 1e-4 and validation.tolerance_rel == 2e-4
    assert validation.max_abs_diff == pytest.approx(1.1e-3, rel=1e-2)
    assert validation.max_rel_diff == pytest.approx(1.1e-4, rel=1e-2)
    with pytest.raises(BackendError) as info:
        compare(REF, CAND, OUT, dataclasses.replace(options, tolerance_rel=1e-5), executed_on="host")
    message = info.value.one_line()
    assert "tolerance 0.0001 (abs) + 1e-05 x |reference| (rel)" in message and "max rel diff 0.00011" in message
    assert "--rtol" in info.value.hint


def test_zero_reference_elements_are_left_out_of_the_relative_figure():
    diff = compare_outputs([[np.array([0.0, 1.0])]], [[np.array([1e-6, 1.0])]])
    assert diff.worst == pytest.approx(1e-6) and diff.worst_rel == 0.0
    nan = compare_outputs([[np.array([1.0])]], [[np.array([np.nan])]], rtol=1.0)
    assert nan.failing(atol=1e9, rtol=1.0) == [0]


def test_constant_outputs_are_named():
    same = [[np.ones((1, 3)), np.arange(3.0)], [np.ones((1, 3)), np.arange(3.0) + 1]]
    specs = [TensorSpec("a", "float32", (1, 3)), TensorSpec("b", "float32", (3,))]
    assert constant_outputs(same, specs) == [
        "output 'a' is the same for all 2 validation inputs: it does not depend on the input"
    ]
    assert constant_outputs(same[:1], specs) == []  # one input proves nothing


def test_a_constant_model_compiles_with_a_warning_in_the_manifest(tmp_path):
    path = write_classifier(tmp_path / "const.onnx", constant=True)
    artifact = compile_model(path, "x86_64", tmp_path / "c.tar.gz", options=CompileOptions(backend="onnxruntime"))
    (warning,) = read_manifest(artifact.path).validation.warnings
    assert "output 'scores' is the same for all 3 validation inputs" in warning
    assert artifact.summary()["validation"]["warnings"] == [warning]


def test_onnxruntime_artifacts_get_a_second_reference(tmp_path):
    path = write_classifier(tmp_path / "user.onnx")
    artifact = compile_model(path, "x86_64", tmp_path / "u.tar.gz", options=CompileOptions(backend="onnxruntime"))
    validation = read_manifest(artifact.path).validation
    assert validation.reference.startswith("onnxruntime ")
    assert (
        validation.second_reference.startswith("torch ")
        and "over the same graph on 3 sample(s)" in validation.second_reference
    )
    assert 0 < validation.second_max_abs_diff < 1e-4  # another engine: close, not bit-equal


def _source(tmp_path, **kw):
    from edgekiln.compile.frontends import import_model

    return import_model(
        write_classifier(tmp_path / "m.onnx", **kw), tmp_path / "src", framework=None, input_shape=None, name=None
    )


def test_without_torch_the_onnx_reference_evaluator_serves_small_models(tmp_path, monkeypatch):
    source = _source(tmp_path)
    monkeypatch.setattr(second_reference.importlib.util, "find_spec", lambda name: None)
    batches = [[np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)]]
    from edgekiln.compile.validate import reference_outputs

    candidate = reference_outputs(source, batches)
    check = second_reference.check(source, batches, candidate, source.outputs, 1e-4, 1e-5)
    assert check.reference.startswith("onnx ") and "reference evaluator on 1 sample(s)" in check.reference
    assert check.max_abs_diff < 1e-4
    wrong = [[candidate[0][0] + 0.5]]
    with pytest.raises(BackendError, match="second reference, onnx .* reference evaluator, failed .* scores"):
        second_reference.check(source, batches, wrong, source.outputs, 1e-4, 1e-5)
    large = dataclasses.replace(
        source, stats={**source.stats, "macs": second_reference.REFERENCE_EVALUATOR_MAX_MACS + 1}
    )
    skipped = second_reference.check(large, batches, candidate, source.outputs, 1e-4, 1e-5)
    assert skipped.max_abs_diff is None and skipped.reference.startswith("none: torch is not installed")


def test_the_reference_evaluator_is_not_used_for_operators_it_computes_otherwise(tmp_path, monkeypatch):
    import onnx
    from onnx import TensorProto, helper

    from edgekiln.compile.frontends import import_model

    nodes = [
        helper.make_node("LRN", ["x"], ["n"], size=5, alpha=1e-4, beta=0.75, bias=1.0),
        helper.make_node("GlobalAveragePool", ["n"], ["p"]),
        helper.make_node("Flatten", ["p"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "lrn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)]), tmp_path / "lrn.onnx")
    source = import_model(tmp_path / "lrn.onnx", tmp_path / "src", framework=None, input_shape=None, name=None)
    monkeypatch.setattr(second_reference.importlib.util, "find_spec", lambda name: None)
    batches = [[np.random.default_rng(0).standard_normal((1, 8, 6, 6)).astype(np.float32) * 10]]
    from edgekiln.compile.validate import reference_outputs

    check = second_reference.check(source, batches, reference_outputs(source, batches), source.outputs, 1e-4, 1e-5)
    assert check.max_abs_diff is None
    assert check.reference == "none: onnx's reference evaluator computes LRN otherwise than the ONNX specification"
