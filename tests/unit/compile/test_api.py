"""compile_model as a pipeline: stage order, the output written last, and its error paths
(onnxruntime backend on tiny models built in code: no TVM build)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from edgekiln.artifact.package import read_manifest
from edgekiln.compile import api
from edgekiln.compile.api import CompileOptions, compile_model
from edgekiln.compile.backends.litert.backend import LiteRTOptions
from edgekiln.compile.backends.onnxruntime.backend import ONNXRuntimeOptions
from edgekiln.compile.backends.tvm.backend import TVMOptions
from edgekiln.compile.quantize import QuantizeOptions
from edgekiln.errors import BackendError, UserError
from tests.unit.compile.conftest import RecordingProgress

ORT = CompileOptions(backend="onnxruntime")


def test_pipeline_runs_import_lower_validate_package_in_order(tiny_model, tmp_path):
    progress = RecordingProgress()
    out = tmp_path / "tiny.tar.gz"
    artifact = compile_model(tiny_model, "x86_64", out, options=ORT, progress=progress)
    kinds = [s.split(" ")[0] for s in progress.steps]
    assert kinds == ["import", "optimize", "validate", "write"], progress.steps
    assert artifact.path == out and artifact.size == out.stat().st_size
    manifest = read_manifest(out)
    assert manifest.validation.status == "passed" and manifest.validation.samples == 3
    assert manifest.validation.max_abs_diff <= 1e-4
    assert manifest.compile_seconds is not None and manifest.compile_seconds > 0
    assert manifest.graph is not None and manifest.graph.macs == 32 and manifest.graph.op_counts == {"MatMul": 1}
    assert manifest.backend_selection is None  # a named backend, not auto


def test_summary_keys_are_what_ci_reads(tiny_model, tmp_path):
    summary = compile_model(tiny_model, "x86_64", tmp_path / "t.tar.gz", options=ORT).summary()
    assert list(summary) == [
        "artifact",
        "size_bytes",
        "model",
        "version",
        "profile",
        "backend",
        "backend_selection",
        "target_triple",
        "cuda_arch",
        "inputs",
        "outputs",
        "validation",
        "compile_seconds",
        "quantization",
        "tuning",
    ]
    assert summary["tuning"] is None  # only tvm builds apply tuning records
    assert summary["inputs"] == [{"name": "x", "dtype": "float32", "shape": [1, 8]}]
    assert summary["backend"] == "onnxruntime" and isinstance(summary["compile_seconds"], float)
    json.dumps(summary)


def test_output_is_written_only_after_validation(tiny_model, tmp_path, monkeypatch):
    out = tmp_path / "tiny.tar.gz"
    seen = []

    def failing_validate(source, profile, root, manifest, options, progress, int8):
        seen.append((out.exists(), (root / "manifest.json").is_file()))
        raise BackendError("validation failed: output y differs by 1.0")

    monkeypatch.setattr(api, "_validate", failing_validate)
    with pytest.raises(BackendError, match="validation failed"):
        compile_model(tiny_model, "x86_64", out, options=ORT)
    # The staged manifest was there for the runtime; the output was not, and still is not.
    assert seen == [(False, True)]
    assert list(tmp_path.iterdir()) == [tiny_model]


def test_missing_output_directory_fails_before_import(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(api, "import_model", lambda *a, **k: pytest.fail("imported"))
    with pytest.raises(UserError, match="directory of the output path .* does not exist"):
        compile_model(tiny_model, "x86_64", tmp_path / "no" / "such" / "dir.tar.gz", options=ORT)
    with pytest.raises(UserError, match="is a directory"):
        compile_model(tiny_model, "x86_64", tmp_path, options=ORT)


def test_quantize_on_an_int8_source_is_refused(tiny_model, tmp_path, monkeypatch):
    real = api.import_model
    monkeypatch.setattr(api, "import_model", lambda *a, **k: dataclasses.replace(real(*a, **k), prequantized=True))
    monkeypatch.setattr(api, "quantize_onnx", lambda *a, **k: pytest.fail("quantized"))
    options = CompileOptions(backend="onnxruntime", quantize=QuantizeOptions(calibration=str(tmp_path)))
    with pytest.raises(UserError, match="already an int8 model; compile it without --quantize"):
        compile_model(tiny_model, "x86_64", tmp_path / "q.tar.gz", options=options)
    assert not (tmp_path / "q.tar.gz").exists()


@pytest.mark.parametrize(
    "target,options,message",
    [
        ("h200", CompileOptions(backend="litert"), "backend litert cannot build for nvidia/h200-sxm"),
        (
            "x86_64",
            CompileOptions(backend="litert", quantize=QuantizeOptions(mode="int8-auto", calibration="c")),
            "backend litert cannot build int8-auto models; use one of onnxruntime, openvino, tvm",
        ),
        (
            "x86_64",
            CompileOptions(backend="onnxruntime", backend_options=TVMOptions(strip=False)),
            "TVMOptions do not apply to the onnxruntime backend",
        ),
        ("x86_64", CompileOptions(backend="caffe2"), "unknown backend 'caffe2'"),
    ],
)
def test_a_backend_that_cannot_build_fails_before_import(tiny_model, tmp_path, monkeypatch, target, options, message):
    monkeypatch.setattr(api, "import_model", lambda *a, **k: pytest.fail("imported"))
    with pytest.raises(UserError, match=message):
        compile_model(tiny_model, target, tmp_path / "x.tar.gz", options=options)


def test_backend_lowering_failure_leaves_nothing(tmp_path):
    from tests.unit.compile.conftest import write_model

    model = write_model(tmp_path / "cos.onnx", op="Cos")  # no TFLite builtin for Cos
    with pytest.raises(BackendError, match="Cos"):
        compile_model(model, "x86_64", tmp_path / "c.tar.gz", options=CompileOptions(backend="litert"))
    assert not (tmp_path / "c.tar.gz").exists()


def test_typed_backend_options_reach_the_backend(tiny_model, tmp_path):
    options = CompileOptions(
        backend="onnxruntime", backend_options=ONNXRuntimeOptions(optimization="basic", intra_op_threads=2)
    )
    manifest = compile_model(tiny_model, "x86_64", tmp_path / "o.tar.gz", options=options).manifest
    assert manifest.backend_options["session"] == {
        "providers": ["CPUExecutionProvider"],
        "intra_op_num_threads": 2,
        "optimization": "basic",
    }


def test_compile_options_read_a_mapping_through_the_backend_type():
    options = CompileOptions(backend="litert", backend_options={"num_threads": 3})
    assert options.backend_options == (LiteRTOptions(num_threads=3),)
    with pytest.raises(UserError, match="unknown litert backend option.*valid options: quantize, calibration"):
        CompileOptions(backend="litert", backend_options={"threads": 3})
    with pytest.raises(UserError, match="need a named backend"):
        CompileOptions(backend="auto", backend_options={"embed_ptx": False})
    with pytest.raises(UserError, match="same backend's options twice"):
        CompileOptions(backend_options=(TVMOptions(), TVMOptions(strip=False)))
    # Under auto each backend takes its own type's options, the others their defaults.
    from edgekiln.compile.backends import registry

    auto = CompileOptions(backend_options=TVMOptions(embed_ptx=False))
    assert auto.options_for(registry.get("tvm")) == TVMOptions(embed_ptx=False)
    assert auto.options_for(registry.get("onnxruntime")) == ONNXRuntimeOptions()


def test_validation_settings_are_checked_before_import(tiny_model, tmp_path, monkeypatch):
    from edgekiln.compile.validate import ValidationOptions

    monkeypatch.setattr(api, "import_model", lambda *a, **k: pytest.fail("imported"))
    options = CompileOptions(backend="onnxruntime", validation=ValidationOptions(tolerance_abs=-1))
    with pytest.raises(UserError, match="tolerances must be >= 0"):
        compile_model(tiny_model, "x86_64", tmp_path / "v.tar.gz", options=options)


def test_labels_travel_with_the_artifact(tiny_model, tmp_path, monkeypatch):
    real = api.import_model
    monkeypatch.setattr(
        api, "import_model", lambda *a, **k: dataclasses.replace(real(*a, **k), labels=("a", "b", "c", "d"))
    )
    artifact = compile_model(tiny_model, "x86_64", tmp_path / "l.tar.gz", options=ORT)
    assert artifact.manifest.labels == api.LABELS_FILE
    assert [f.role for f in artifact.manifest.files] == ["labels", "model"]
    import edgekiln

    model = edgekiln.load(str(artifact.path))
    out = model.run([np.ones((1, 8), np.float32)])
    assert out[0].shape == (1, 4)
