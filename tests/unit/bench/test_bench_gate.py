"""The regression gate on reports with known figures (the real-run check is in tests/e2e/bench)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from edgekiln.bench import gate
from edgekiln.bench.results import Skipped
from edgekiln.errors import UserError
from edgekiln.execute.statistics import LatencyStats, RatioStats


def faster(bench, factor):
    """``bench`` as if everything of the candidate had been ``factor`` times the time."""
    cand = bench.candidate
    lat = LatencyStats(**{k: (v * factor if k.endswith("_ms") else v) for k, v in cand.latency.to_dict().items()})
    cand = dataclasses.replace(
        cand,
        latency=lat,
        times_ms=tuple(t * factor for t in cand.times_ms),
        pair_ms=tuple(t * factor for t in cand.pair_ms),
        throughput_samples_per_s=cand.throughput_samples_per_s / factor,
    )
    comparisons = tuple(
        dataclasses.replace(
            c,
            ratio=RatioStats(
                **{k: (v * factor if k not in ("n", "spread") else v) for k, v in c.ratio.to_dict().items()}
            ),
        )
        for c in bench.comparisons
    )
    return dataclasses.replace(bench, subjects=(cand, *bench.subjects[1:]), comparisons=comparisons)


def test_identical_reports_pass(make_bench, make_report):
    report = make_report(make_bench())
    result = gate.check(report, report)
    assert result.passed
    assert {f.metric for f in result.checked} == {
        "ratio to onnxruntime",
        "p50 latency",
        "top-1 agreement",
        "max abs diff",
    }
    assert "passed" in result.summary()


def test_a_stored_baseline_30_percent_faster_fails_on_ratio_and_latency(make_bench, make_report):
    current = make_report(make_bench())
    stored = make_report(faster(make_bench(), 0.7))
    result = gate.check(current, stored)
    assert not result.passed
    assert {f.metric for f in result.regressions} == {"ratio to onnxruntime", "p50 latency"}
    text = result.summary()
    assert "REGRESSED mobilenet_v2/generic/x86-64-avx2/tvm/fp32/cpu/single-stream/b1 ratio to onnxruntime" in text
    assert "+43%" in text  # 1 / 0.7 - 1


def test_each_check_catches_its_own_edit(make_bench, make_report):
    current = make_report(make_bench())
    base = make_bench()
    only_ratio = dataclasses.replace(faster(base, 0.7), subjects=base.subjects)
    only_latency = dataclasses.replace(faster(base, 0.7), comparisons=base.comparisons)
    assert [f.metric for f in gate.check(current, make_report(only_ratio)).regressions] == ["ratio to onnxruntime"]
    assert [f.metric for f in gate.check(current, make_report(only_latency)).regressions] == ["p50 latency"]


def test_within_threshold_passes_and_thresholds_are_configurable(make_bench, make_report):
    current = make_report(make_bench())
    stored = make_report(faster(make_bench(), 0.9))  # current is 11% slower
    assert gate.check(current, stored).passed
    strict = gate.GateThresholds(ratio=0.05, latency=0.05)
    assert not gate.check(current, stored, strict).passed
    with pytest.raises(UserError):
        gate.GateThresholds(ratio=-1)
    with pytest.raises(UserError):
        gate.GateThresholds.from_dict({"ratio": 0.1, "speed": 2})


def test_accuracy_regressions(make_bench, make_report):
    stored = make_report(make_bench())
    worse_top1 = make_report(make_bench(top1=0.9))
    worse_diff = make_report(make_bench(diff=1e-2))
    assert [f.metric for f in gate.check(worse_top1, stored).regressions] == ["top-1 agreement"]
    assert [f.metric for f in gate.check(worse_diff, stored).regressions] == ["max abs diff"]


def test_offline_throughput(make_bench, make_report):
    stored = make_report(make_bench(scenario="offline", batch=8))
    slower = make_report(
        make_bench(
            scenario="offline",
            batch=8,
            cand_ms=(140.0, 150.0, 160.0, 145.0, 155.0),
            base_ms=(14.0, 15.0, 16.0, 14.5, 15.5),
        )
    )
    result = gate.check(slower, stored)
    assert [f.metric for f in result.regressions] == ["throughput"]  # ratio unchanged: both slowed down


def test_missing_and_failed_measurements(make_bench, make_report):
    stored = make_report(make_bench(), make_bench(model="resnet18"))
    key = make_bench(model="resnet18").key
    current = make_report(make_bench(), skipped=[Skipped(key, "failed", "compile failed: boom")])
    result = gate.check(current, stored)
    assert [(f.key, f.metric) for f in result.regressions] == [(key, "present")]
    assert "compile failed: boom" in result.regressions[0].message
    relaxed = gate.check(current, stored, gate.GateThresholds(allow_missing=True))
    assert relaxed.passed and any(key in n for n in relaxed.not_compared)


def test_emulated_results_are_compared_on_accuracy_only(make_bench, make_report):
    stored = make_report(make_bench(meaningful=False))
    current = make_report(make_bench(meaningful=False, top1=0.5))
    result = gate.check(current, stored)
    assert [f.metric for f in result.regressions] == ["top-1 agreement"]


def test_gate_command_exit_codes(tmp_path, make_bench, make_report, capsys):
    current, stored = tmp_path / "current.json", tmp_path / "stored.json"
    make_report(make_bench()).save(current)
    make_report(faster(make_bench(), 0.7)).save(stored)
    assert gate.main([str(current), str(current)]) == 0
    assert gate.main([str(current), str(stored), "--json", str(tmp_path / "gate.json")]) == 1
    out = capsys.readouterr().out
    assert "REGRESSED" in out and "mobilenet_v2" in out
    verdict = json.loads((tmp_path / "gate.json").read_text())
    assert verdict["passed"] is False and len(verdict["regressions"]) == 2
    (tmp_path / "foreign.json").write_text('{"schema": "other"}')
    assert gate.main([str(current), str(tmp_path / "foreign.json")]) == 2
