"""The tuning records shipped for x86_64 and ml_c5 still cover the zoo models they were tuned for:
a change to how TVM sees a model (its passes before fusion, a TVM upgrade) changes the
tasks, and records that no longer match would leave compile with default schedules."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("tvm")

from edgekiln.compile.api import CompileOptions, compile_model, import_source  # noqa: E402
from edgekiln.compile.backends.tvm import tuning  # noqa: E402
from edgekiln.device_profiles import get_profile  # noqa: E402
from edgekiln.execute.progress import NullProgress  # noqa: E402


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty edgekiln cache: only the shipped records can cover anything."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGEKILN_CACHE", str(cache))
    return cache


@pytest.mark.parametrize(
    ("model", "profile"),
    [
        ("zoo:resnet18", "x86_64"),
        ("zoo:mobilenet_v2", "x86_64"),
        ("zoo:resnet18", "ml_c5"),
        ("zoo:mobilenet_v2", "ml_c5"),
    ],
)
def test_shipped_records_cover_the_zoo_models(model: str, profile: str, tmp_path: Path, fresh_cache: Path) -> None:
    source = import_source(
        model, tmp_path / "src", framework=None, input_shape=None, name=None, progress=NullProgress()
    )
    coverage = tuning.records_coverage(source, get_profile(profile))
    # Compile's rule for shipping TVM to a target it cannot time: records for the tasks that
    # carry at least 90% of the model's FLOPs. The shipped budget tunes every task with FLOPs.
    assert coverage.share >= 0.99, coverage.to_dict()
    assert coverage.sources == ("shipped",)
    assert all(t.run_ms is not None and t.run_ms > 0 for t in coverage.tasks)


@pytest.mark.parametrize("profile", ["x86_64", "ml_c5"])
def test_compile_applies_the_shipped_records_and_says_so(profile: str, tmp_path: Path, fresh_cache: Path) -> None:
    # Cross-compiled without validation: a host without AVX-512 still builds ml_c5's kernels.
    artifact = compile_model(
        "zoo:resnet18", profile, tmp_path / "r18.tar.gz", options=CompileOptions(backend="tvm", validate=False)
    )
    tuned = artifact.manifest.tuning
    assert tuned is not None and tuned["sources"] == ["shipped"]
    assert tuned["flops_share"] >= 0.99 and tuned["tasks_tuned"] >= 15
    assert "skipped_shipped" not in tuned  # every shipped record still builds with this TVM
    if profile != "x86_64":
        return
    # x86_64 also builds ResNet-18 for AVX-512 CPUs with ml_c5's shipped records, where this
    # host can run that code (validation would run it).
    (variant,) = tuned["variants"]
    if variant["built"]:
        assert variant["sources"] == ["shipped"] and variant["flops_share"] >= 0.99
        assert "skipped_shipped" not in variant
        assert {f.path for f in artifact.manifest.files} >= {"lib/model.so", variant["library"]}
    else:
        assert "lacks avx512" in variant["reason"]
