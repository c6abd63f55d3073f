"""The manifest's typed build facts (backend selection, compile time, graph size): typed in
Python, in "extra" in manifest.json as always, and read back from manifests of earlier versions."""

from __future__ import annotations

import dataclasses
import json

import pytest

from edgekiln.artifact import Manifest, ModelInfo, RuntimeRequirements, TensorSpec, Validation
from edgekiln.artifact.manifest import BackendSelection, CandidateRecord, GraphStats
from edgekiln.errors import IntegrityError

SELECTION = BackendSelection(
    mode="auto",
    chosen="litert",
    reason="fastest of 2 timed candidates",
    candidates=(
        CandidateRecord("tvm", "failed", reason="no toolchain"),
        CandidateRecord("litert", "built", p50_ms=1.5, ratio_to_onnxruntime=0.52, pairs=3),
    ),
)


def _manifest(**fields) -> Manifest:
    return Manifest(
        model=ModelInfo("m", "1", "onnx", "0" * 64),
        profile="generic/x86-64-avx2",
        backend="litert",
        backend_options={},
        target_triple="x86_64-linux-gnu",
        edgekiln_version="0",
        compiler={},
        runtime=RuntimeRequirements(arch="x86_64"),
        inputs=(TensorSpec("x", "float32", (1, 8)),),
        outputs=(TensorSpec("y", "float32", (1, 4)),),
        files=(),
        validation=Validation(status="skipped"),
        **fields,
    )


def test_build_facts_travel_in_extra_and_come_back_typed():
    manifest = _manifest(
        backend_selection=SELECTION,
        compile_seconds=3.25,
        extra={"note": "kept"},
        graph=GraphStats(params=32, macs=32, nodes=1, op_counts={"MatMul": 1}, opset=17),
    )
    data = json.loads(manifest.to_json())
    assert list(data)[-1] == "extra" and not {"backend_selection", "compile_seconds", "graph"} & set(data)
    assert data["extra"] == {
        "note": "kept",
        "backend_selection": {
            "mode": "auto",
            "chosen": "litert",
            "reason": "fastest of 2 timed candidates",
            "candidates": [
                {"backend": "tvm", "status": "failed", "reason": "no toolchain"},
                {"backend": "litert", "status": "built", "p50_ms": 1.5, "ratio_to_onnxruntime": 0.52, "pairs": 3},
            ],
        },
        "compile_seconds": 3.25,
        "graph": {"params": 32, "macs": 32, "nodes": 1, "op_counts": {"MatMul": 1}, "opset": 17},
    }
    again = Manifest.from_json(manifest.to_json())
    assert again == manifest and again.extra == {"note": "kept"}


def test_a_manifest_without_build_facts_writes_an_empty_extra():
    manifest = _manifest()
    assert json.loads(manifest.to_json())["extra"] == {}
    assert Manifest.from_json(manifest.to_json()) == manifest


def test_an_earlier_manifest_with_a_grab_bag_extra_loads():
    # As compile wrote it before the facts were typed: an empty graph when stats failed.
    data = json.loads(_manifest().to_json())
    data["extra"] = {
        "compile_seconds": 12,
        "graph": {},
        "backend_selection": {
            "mode": "auto",
            "chosen": "tvm",
            "reason": "the only backend that built",
            "candidates": [{"backend": "tvm", "status": "built"}],
        },
    }
    manifest = Manifest.from_dict(data)
    assert manifest.compile_seconds == 12.0 and manifest.graph == GraphStats()
    assert manifest.backend_selection == BackendSelection(
        "auto", "tvm", "the only backend that built", (CandidateRecord("tvm", "built"),)
    )
    assert manifest.extra == {}


@pytest.mark.parametrize(
    "extra,needle",
    [
        (
            {"backend_selection": {"mode": "auto", "chosen": "tvm", "reason": "r", "candidates": [{"backend": "tvm"}]}},
            "status",
        ),
        ({"backend_selection": "tvm"}, "BackendSelection must be an object"),
        ({"graph": {"flops": 1}}, "unknown fields ['flops']"),
    ],
)
def test_malformed_build_facts_are_integrity_errors(extra, needle):
    data = {**json.loads(_manifest().to_json()), "extra": extra}
    with pytest.raises(IntegrityError) as info:
        Manifest.from_dict(data)
    assert needle in str(info.value)


def test_replace_keeps_the_types():
    manifest = dataclasses.replace(_manifest(), backend_selection=SELECTION)
    assert manifest.backend_selection.candidates[1].ratio_to_onnxruntime == 0.52


def test_auto_evidence_and_timing_figures_round_trip_and_older_selections_still_load():
    selection = BackendSelection(
        mode="auto",
        chosen="onnxruntime",
        reason="tied within 5%",
        candidates=(
            CandidateRecord("tvm", "skipped", reason="untuned TVM is left out"),
            CandidateRecord(
                "onnxruntime", "built", p50_ms=2.5, ratio_to_onnxruntime=1.001, pairs=12, ci95_low=0.98, ci95_high=1.02
            ),
            CandidateRecord("litert", "dropped", reason="dropped after 3 pairs", ratio_to_onnxruntime=3.5, pairs=3),
        ),
        outcome="tied",
        evidence="x86_64-cpu/fp32",
        evidence_source="edgekiln bench",
        threads=2,
        tuning_coverage=0.5,
        timing_seconds=7.25,
    )
    manifest = _manifest(backend_selection=selection)
    data = json.loads(manifest.to_json())["extra"]["backend_selection"]
    assert data["evidence"] == "x86_64-cpu/fp32" and data["outcome"] == "tied" and data["threads"] == 2
    assert data["candidates"][1] == {
        "backend": "onnxruntime",
        "status": "built",
        "p50_ms": 2.5,
        "ratio_to_onnxruntime": 1.001,
        "pairs": 12,
        "ci95_low": 0.98,
        "ci95_high": 1.02,
    }
    assert Manifest.from_json(manifest.to_json()).backend_selection == selection
    # A selection written before these fields loads, and writes back exactly as it was.
    old = SELECTION.to_dict()
    assert set(old) == {"mode", "chosen", "reason", "candidates"}
    loaded = BackendSelection.from_dict(old)
    assert (loaded.evidence, loaded.outcome, loaded.threads) == (None, None, None) and loaded.to_dict() == old


def test_the_tuning_entry_travels_in_extra():
    entry = {
        "flops_share": 0.95,
        "tasks_tuned": 1,
        "tasks_total": 3,
        "sources": ["shipped"],
        "tasks": [{"name": "conv2d", "flops_share": 0.95, "source": "shipped", "run_ms": 1.5}],
    }
    manifest = _manifest(tuning=entry)
    data = json.loads(manifest.to_json())
    assert "tuning" not in data and data["extra"]["tuning"] == entry
    again = Manifest.from_json(manifest.to_json())
    assert again.tuning == entry and again.extra == {}
    assert Manifest.from_json(_manifest().to_json()).tuning is None
