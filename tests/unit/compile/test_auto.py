"""--backend auto: one import, a loop of lower-and-validate over it, and the record of
every candidate (onnxruntime and litert on tiny models; the timing harness is stubbed)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from edgekiln.artifact.manifest import BackendSelection, CandidateRecord
from edgekiln.compile import api, auto, evidence
from edgekiln.compile.api import compile_model
from edgekiln.compile.backends.tvm.backend import TVMOptions
from edgekiln.compile.quantize import QuantizeOptions
from edgekiln.compile.stages import StagedArtifact
from edgekiln.device_profiles import get_profile
from edgekiln.errors import BackendError, DependencyError, UserError
from tests.unit.compile.conftest import RecordingProgress, write_model


class _Fake:
    def __init__(self, id: str) -> None:
        self.id = id


def _loop(outcomes: dict[str, object], cannot_run: str | None, coverage=None, target="rasp4b"):
    """Run compile_auto over fake candidates whose lower-and-validate raises or builds."""
    tried = []

    def lower(source, backend):
        tried.append((source, backend.id))
        outcome = outcomes[backend.id]
        if isinstance(outcome, Exception):
            raise outcome
        return StagedArtifact(backend=backend.id, root=Path("/nonexistent"), manifest=None)  # type: ignore[arg-type]

    staged, selection = auto.compile_auto(
        "the source",
        [_Fake(b) for b in outcomes],
        lower,
        get_profile(target),
        Path("/nonexistent"),
        cannot_run,
        RecordingProgress(),
        coverage=coverage,
    )
    return staged, selection, tried


def test_when_the_target_cannot_run_here_the_evidence_order_decides_without_untuned_tvm():
    staged, selection, tried = _loop(
        {"tvm": None, "onnxruntime": None, "litert": BackendError("litert broke")}, cannot_run="this host is x86_64"
    )
    # aarch64 fp32 evidence: litert, then onnxruntime; TVM without records is never built.
    assert staged.backend == "onnxruntime"
    assert tried == [("the source", "litert"), ("the source", "onnxruntime")]
    assert (selection.chosen, selection.outcome, selection.evidence) == (
        "onnxruntime",
        "evidence",
        "aarch64-cortex-a/fp32",
    )
    assert "github.com/google/XNNPACK" in selection.evidence_source
    assert selection.reason.startswith(
        "this machine cannot time the target (this host is x86_64); evidence aarch64-cortex-a/fp32"
    )
    assert "onnxruntime is the first in that order that built without failing validation" in selection.reason
    assert "untuned TVM is left out: the model has no tuning records" in selection.reason
    # Recorded in the profile's order, whatever order they were tried in.
    assert [(c.backend, c.status) for c in selection.candidates] == [
        ("tvm", "skipped"),
        ("onnxruntime", "built"),
        ("litert", "failed"),
    ]
    assert selection.candidates[2].reason == "litert broke"


def test_tuning_records_covering_the_model_let_tvm_lead_on_the_board():
    covered = evidence.TuningCoverage(0.95, "tuning db")
    staged, selection, tried = _loop({"tvm": None, "onnxruntime": None, "litert": None}, "x", coverage=covered)
    # Covered TVM is no longer excluded; it keeps its place in the evidence order (last).
    assert tried == [("the source", "litert")] and selection.tuning_coverage == 0.95
    staged, selection, tried = _loop(
        {"tvm": None, "onnxruntime": BackendError("a"), "litert": BackendError("b")}, "x", coverage=covered
    )
    assert staged.backend == "tvm" and [b for _, b in tried] == ["litert", "onnxruntime", "tvm"]


def test_rasp3b_keeps_tvm_without_records():
    staged, selection, tried = _loop({"tvm": None, "litert": None}, cannot_run="armv7l", target="rasp3b")
    assert staged.backend == "tvm" and tried == [("the source", "tvm")]
    assert selection.evidence == "armv7l-cpu/fp32" and all(c.status != "skipped" for c in selection.candidates)


def test_every_failure_is_recorded_and_all_failing_raises_with_the_reasons():
    with pytest.raises(
        BackendError,
        match="no backend could build the model for raspberry-pi/4b-aarch64: tvm: untuned TVM is left out.*"
        "litert: no ai-edge-litert",
    ) as caught:
        _loop({"tvm": BackendError("tvm broke"), "litert": DependencyError("no ai-edge-litert")}, cannot_run="x")
    assert "--backend tvm builds untuned TVM" in caught.value.one_line()


def test_a_user_error_stops_the_loop_at_once():
    with pytest.raises(UserError, match="bad shape"):
        _loop({"tvm": UserError("bad shape"), "litert": None}, cannot_run=None, target="rasp3b")


def test_candidates_follow_the_profile_and_the_quantization_asked():
    profile = get_profile("x86_64")
    assert auto.eligible(profile) == ["tvm", "onnxruntime", "litert", "openvino"]
    int8 = QuantizeOptions(mode="int8", calibration="c")
    assert auto.eligible(profile, int8) == ["tvm", "onnxruntime", "litert", "openvino"]
    int8_auto = QuantizeOptions(mode="int8-auto", calibration="c")
    assert auto.eligible(profile, int8_auto) == ["tvm", "onnxruntime", "openvino"]
    assert auto.eligible(get_profile("h200")) == ["tvm", "onnxruntime"]  # litert runs on CPUs only


def _host_vendor(monkeypatch, vendor: str) -> None:
    host = dataclasses.replace(auto.host_info(), cpu_vendor=vendor)
    monkeypatch.setattr(auto, "host_info", lambda: host)


def test_auto_imports_once_and_times_every_built_candidate(tmp_path, monkeypatch, fast_profile):
    _host_vendor(monkeypatch, "intel")  # the row for every host, whatever this one is
    profile = fast_profile("onnxruntime", "litert")
    m_profile = lambda: profile  # noqa: E731
    imports = []
    real_import = api.import_model
    monkeypatch.setattr(api, "import_model", lambda *a, **k: imports.append(a[0]) or real_import(*a, **k))
    timed = {}

    def measure(built, records, baseline, progress, order, order_source, budget):
        # The baseline is the one imported source, not a file to import again.
        assert baseline.path.name == "model.onnx" and baseline.source_ref == str(model)
        # The x86_64 evidence order ranks the candidates for the tie rule.
        assert list(order) == ["onnxruntime", "litert"] and order_source == "evidence row x86_64-cpu/fp32's order"
        assert budget == auto.sequential.TimingBudget()
        timed.update({name: artifact.path.is_file() for name, artifact in built.items()})
        for record in records:
            record.update(p50_ms=1.0 if record["backend"] == "litert" else 2.0, pairs=3)
        return "litert", "fastest of 2 timed candidates", {"outcome": "separated", "threads": 2}

    monkeypatch.setattr(auto, "_measure", measure)
    model = write_model(tmp_path / "tiny.onnx")
    artifact = compile_model(model, "x86_64", tmp_path / "auto.tar.gz")
    assert imports == [model]
    assert timed == {"onnxruntime": True, "litert": True}  # packed, as the harness times them
    m = artifact.manifest
    assert m.backend == "litert" and m.validation.status == "passed"
    assert m.backend_selection == BackendSelection(
        mode="auto",
        chosen="litert",
        reason="fastest of 2 timed candidates",
        candidates=(
            CandidateRecord("onnxruntime", "built", p50_ms=2.0, pairs=3),
            CandidateRecord("litert", "built", p50_ms=1.0, pairs=3),
        ),
        outcome="separated",
        evidence="x86_64-cpu/fp32",
        evidence_source=evidence.lookup(m_profile(), "fp32").source,
        threads=2,
    )
    # The JSON CI reads keeps its layout: only the figures a candidate has.
    assert artifact.summary()["backend_selection"]["candidates"] == [
        {"backend": "onnxruntime", "status": "built", "p50_ms": 2.0, "pairs": 3},
        {"backend": "litert", "status": "built", "p50_ms": 1.0, "pairs": 3},
    ]


def test_timed_on_an_amd_host_the_tie_rule_follows_the_amd_row(monkeypatch):
    _host_vendor(monkeypatch, "amd")
    seen = {}

    def measure(built, records, baseline, progress, order, order_source, budget):
        seen.update(order=list(order), source=order_source)
        return order[0], "undecided; kept by the tie rule", {"outcome": "undecided", "threads": 2}

    monkeypatch.setattr(auto, "_pack", lambda build, path: build)
    monkeypatch.setattr(auto, "_measure", measure)
    names = {"tvm": None, "onnxruntime": None, "litert": None, "openvino": None}
    _, selection, _ = _loop(names, cannot_run=None, target="x86_64")
    # OpenVINO, first on Intel, comes last of the three on AMD, where it measured slower.
    assert seen["order"] == ["onnxruntime", "litert", "openvino"]
    assert seen["source"] == "evidence row x86_64-cpu/fp32/amd's order"
    assert (selection.chosen, selection.evidence) == ("onnxruntime", "x86_64-cpu/fp32/amd")
    assert "benchmarks/results/auto/amd/" in selection.evidence_source


def test_a_target_this_host_cannot_time_ignores_the_host_vendor(monkeypatch):
    _host_vendor(monkeypatch, "amd")
    names = {"tvm": None, "onnxruntime": None, "litert": None, "openvino": None}
    _, selection, tried = _loop(names, cannot_run="pretend another x86-64 CPU", target="x86_64")
    # The device's vendor is unknown: the row for every host, and its first backend.
    assert selection.evidence == "x86_64-cpu/fp32" and [b for _, b in tried] == ["openvino"]


def test_auto_records_a_failing_candidate_and_keeps_the_one_that_built(tmp_path, monkeypatch, fast_profile):
    fast_profile("litert", "onnxruntime")
    monkeypatch.setattr(auto, "_measure", lambda *a: pytest.fail("only one candidate built"))
    model = write_model(tmp_path / "cos.onnx", op="Cos")  # LiteRT has no Cos builtin
    artifact = compile_model(model, "x86_64", tmp_path / "auto.tar.gz")
    selection = artifact.manifest.backend_selection
    assert artifact.manifest.backend == "onnxruntime" and selection.chosen == "onnxruntime"
    assert selection.reason == "the only backend that built"
    failed, built = selection.candidates
    assert (failed.backend, failed.status, built) == ("litert", "failed", CandidateRecord("onnxruntime", "built"))
    assert "Cos" in failed.reason


def test_auto_with_int8_quantizes_once_for_the_qdq_candidates(tmp_path, monkeypatch, fast_profile):
    fast_profile("onnxruntime")
    calls = []
    real = api.quantize_onnx

    def counting(source, options, workdir, progress):
        calls.append(source.path)
        return real(source, options, workdir, progress)

    monkeypatch.setattr(api, "quantize_onnx", counting)
    import numpy as np

    np.save(tmp_path / "cal.npy", np.random.default_rng(1).normal(size=(10, 8)).astype(np.float32))
    model = write_model(tmp_path / "tiny.onnx")
    options = api.CompileOptions(
        quantize=QuantizeOptions(calibration=str(tmp_path / "cal.npy"), accuracy_tolerance=0.5)
    )
    artifact = compile_model(model, "x86_64", tmp_path / "q.tar.gz", options=options)
    assert len(calls) == 1
    q = artifact.manifest.quantization
    assert q["mode"] == "int8" and q["calibration_samples"] == 8 and q["accuracy_gate"]["passed"] is True
    assert dataclasses.asdict(artifact.manifest.backend_selection)["chosen"] == "onnxruntime"


def test_compile_hands_auto_the_precision_the_tuning_coverage_and_the_budget(tmp_path, monkeypatch, fast_profile):
    fast_profile("onnxruntime")
    seen = {}
    real = auto.compile_auto

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    covered = evidence.TuningCoverage(0.93, "records")
    monkeypatch.setattr(auto, "compile_auto", spy)
    monkeypatch.setattr(api, "tuning_coverage", lambda source, profile, options: covered)
    budget = auto.sequential.TimingBudget(max_pairs=10, threads=1)
    options = api.CompileOptions(auto_timing=budget)
    artifact = compile_model(write_model(tmp_path / "tiny.onnx"), "x86_64", tmp_path / "a.tar.gz", options=options)
    assert seen == {"precision": "fp32", "coverage": covered, "budget": budget}
    assert artifact.manifest.backend_selection.tuning_coverage == 0.93


def test_a_model_without_tuning_records_has_no_coverage(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKILN_CACHE", str(tmp_path / "cache"))
    from edgekiln.compile.frontends import import_model

    source = import_model(str(write_model(tmp_path / "tiny.onnx")), tmp_path / "source")
    # The shipped x86_64 records are for the zoo's ResNet-18 and MobileNetV2, not this model.
    assert api.tuning_coverage(source, get_profile("x86_64"), api.CompileOptions()) is None
    without = api.CompileOptions(backend_options=(TVMOptions(tuning_records=False),))
    assert api.tuning_coverage(source, get_profile("x86_64"), without) is None
    assert api.tuning_coverage(source, get_profile("rasp4b"), api.CompileOptions()) is None
