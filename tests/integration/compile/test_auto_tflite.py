"""--backend auto on a .tflite source imports it once: one TensorFlow child process for
every candidate backend (each used to re-import the source, starting TensorFlow again)."""

from __future__ import annotations

import numpy as np
import pytest

from edgekiln.compile import evidence
from edgekiln.compile.api import compile_model
from edgekiln.compile.frontends import tensorflow
from edgekiln.device_profiles import get_profile
from edgekiln.runtime.compat import host_info
from tests.frameworks.models import tflite_head

pytestmark = pytest.mark.skipif(host_info().arch != "x86_64", reason="the x86_64 profile runs on x86-64 hosts only")


def _tflite(tmp_path) -> tuple:
    """A small classifier head as .tflite, an input and the output it should give."""
    path = tmp_path / "head.tflite"
    weights = tflite_head(path)
    x = np.random.default_rng(1).normal(size=(1, 16)).astype(np.float32)
    e = np.exp(x @ weights - (x @ weights).max())
    return path, x, e / e.sum()


def test_auto_starts_tensorflow_once_for_every_candidate_and_its_timing(tmp_path, monkeypatch):
    path, x, expected = _tflite(tmp_path)
    starts = []
    real = tensorflow._convert_in_child
    monkeypatch.setattr(tensorflow, "_convert_in_child", lambda *a: starts.append(a[1]) or real(*a))
    artifact = compile_model(path, "x86_64", tmp_path / "head.tar.gz")
    # Imported once: lowered, validated and timed against ONNX Runtime on that one import.
    assert starts == [path]
    selection = artifact.manifest.backend_selection
    # Untuned TVM is left out by the evidence rule (no tuning records); the others are timed.
    # (On a graph this small one runtime's call overhead may make the other 3x slower: dropped.)
    assert [c.backend for c in selection.candidates] == ["tvm", "onnxruntime", "litert", "openvino"]
    assert selection.candidates[0].status == "skipped"
    assert {c.status for c in selection.candidates[1:]} <= {"built", "dropped"}
    timed = [c for c in selection.candidates[1:] if c.status == "built"]
    assert all(c.ratio_to_onnxruntime and c.ratio_to_onnxruntime > 0 and c.pairs >= 3 for c in selection.candidates[1:])
    assert selection.outcome in ("separated", "tied", "undecided", "only one left")
    # Timed on this host: the row for its CPU vendor where there is one (AMD), else every host's.
    row = evidence.lookup(get_profile("x86_64"), "fp32", host_vendor=host_info().cpu_vendor)
    assert selection.evidence == row.key and selection.threads and selection.threads >= 1
    for c in timed:  # the reason carries the records' own figures
        assert (
            f"{c.backend} {c.ratio_to_onnxruntime:.3f}x (95% CI {c.ci95_low:.3f}-{c.ci95_high:.3f}, {c.pairs} pairs)"
            in selection.reason
        )
    assert selection.chosen == artifact.manifest.backend
    from tests.conftest import run_artifact

    out = run_artifact(artifact.path, [x])[0]
    assert np.abs(out - expected).max() < 1e-5
