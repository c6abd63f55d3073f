"""An x86_64 TVM artifact carries an AVX-512 build where aws/c5 tuning records cover the
model: compile builds and validates both, the runtime loads the one the CPU executes, and
either can be forced. On a build host without AVX-512 the variant is left out, with the
reason in the manifest (nothing ships that no one ran)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")
pytest.importorskip("xgboost")

from edgekiln.compile.api import CompileOptions, compile_model  # noqa: E402
from edgekiln.compile.backends.tvm import tuning  # noqa: E402
from edgekiln.compile.backends.tvm.backend import TVMOptions  # noqa: E402
from edgekiln.compile.backends.tvm.tuner import TuneOptions, tune_model  # noqa: E402
from edgekiln.execute.host import host_info  # noqa: E402
from edgekiln.execute.runners import LocalRunner  # noqa: E402
from tests.integration.compile.test_tvm_tune import _matmul_onnx  # noqa: E402

pytestmark = pytest.mark.skipif(tuning.ffi_writes_databases() is not None, reason=str(tuning.ffi_writes_databases()))

VARIANT = "lib/model-skylake-avx512.so"
AVX512 = ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl")


def _load_and_run(artifact: Path, inputs: list[np.ndarray], library: str | None = None) -> tuple[str, np.ndarray]:
    """The worker's version line (it names the model library loaded) and its outputs, in a
    process of its own: the runtime path a device takes, without the TVM compiler."""
    subject = {"kind": "artifact", "path": str(artifact), "device": "cpu"}
    if library:
        subject["library"] = library
    worker = LocalRunner().start("variant test")
    try:
        info = worker.load(subject, [[x] for x in inputs])
        outputs = worker.outputs()
    finally:
        worker.close()
    return info.version, np.stack([o[0] for o in outputs])


def _members(artifact: Path) -> list[str]:
    with tarfile.open(artifact) as tar:
        return sorted(tar.getnames())


def test_the_avx512_build_ships_validated_and_loads_where_the_cpu_has_avx512(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEKILN_CACHE", str(tmp_path / "cache"))
    model = _matmul_onnx(tmp_path / "matmul.onnx")
    db = tmp_path / "db"
    # Records for the variant's profile only: the portable build stays untuned.
    tune_model(str(model), "ml_c5", TuneOptions(trials_per_task=2, tuning_db=db, threads=1))

    built = compile_model(
        model,
        "x86_64",
        tmp_path / "a.tar.gz",
        options=CompileOptions(backend="tvm", backend_options=TVMOptions(tuning_db=str(db))),
    )
    (entry,) = built.manifest.tuning["variants"]  # type: ignore[index]
    assert entry["profile"] == "aws/c5" and entry["cpu_features"] == list(AVX512)
    assert built.manifest.validation.status == "passed"

    if not set(AVX512) <= host_info().cpu_features:
        # The variant was not built, so there is nothing to load; the manifest says why.
        assert entry["built"] is False and "lacks avx512" in entry["reason"]
        assert VARIANT not in _members(built.path)
        return

    assert entry["built"] is True and entry["library"] == VARIANT and entry["flops_share"] == pytest.approx(1.0)
    assert entry["sources"] == ["flag"]
    (variant,) = [f for f in built.manifest.files if f.role == "model-library-variant"]
    assert variant.path == VARIANT and variant.cpu_features == AVX512
    assert built.manifest.validation.executed_on.endswith(f"also {VARIANT}")

    inputs = [np.random.default_rng(i).standard_normal((1, 64)).astype(np.float32) for i in range(2)]
    version, fast = _load_and_run(built.path, inputs)
    assert version.endswith(f"({VARIANT})")
    version, portable = _load_and_run(built.path, inputs, library="lib/model.so")
    assert version.endswith("(lib/model.so)")
    np.testing.assert_allclose(fast, portable, rtol=1e-5, atol=1e-5)

    # Turned off, the artifact has the portable build alone, and no variant entry.
    single = compile_model(
        model,
        "x86_64",
        tmp_path / "single.tar.gz",
        options=CompileOptions(backend="tvm", backend_options=TVMOptions(tuning_db=str(db), cpu_variants=False)),
    )
    assert VARIANT not in _members(single.path) and single.manifest.tuning is None


def test_without_variant_records_the_artifact_has_the_portable_build_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEKILN_CACHE", str(tmp_path / "cache"))
    model = _matmul_onnx(tmp_path / "matmul.onnx")
    built = compile_model(model, "x86_64", tmp_path / "a.tar.gz", options=CompileOptions(backend="tvm"))
    (entry,) = built.manifest.tuning["variants"]  # type: ignore[index]
    assert entry["built"] is False
    if set(AVX512) <= host_info().cpu_features:
        assert "cover 0% of the model's FLOPs, under the 90% rule" in entry["reason"]
    else:
        assert "lacks avx512" in entry["reason"]
    assert VARIANT not in _members(built.path)
