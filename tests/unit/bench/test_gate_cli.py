"""``edgekiln gate``: a 30% slowdown against the stored report fails with one line per
regression; a slowdown within the thresholds passes."""

from __future__ import annotations

import json

from edgekiln.cli.main import main

STORED_MS = (100.0, 110.0, 120.0, 105.0, 115.0)
BASE_MS = (10.0, 11.0, 12.0, 10.5, 11.5)


def _reports(tmp_path, make_bench, make_report, factor):
    """The stored report and one whose artifact takes ``factor`` times as long (the baseline as before)."""
    stored, current = tmp_path / "stored.json", tmp_path / "current.json"
    make_report(make_bench(cand_ms=STORED_MS, base_ms=BASE_MS)).save(stored)
    make_report(make_bench(cand_ms=tuple(t * factor for t in STORED_MS), base_ms=BASE_MS)).save(current)
    return current, stored


def test_gate_fails_on_a_30_percent_slowdown(tmp_path, make_bench, make_report, capsys):
    current, stored = _reports(tmp_path, make_bench, make_report, 1.3)
    code = main(["gate", str(current), str(stored), "--json", str(tmp_path / "verdict.json")])
    out = capsys.readouterr().out
    assert code == 1
    lines = out.strip().splitlines()
    assert lines[0] == f"regression gate FAILED against {stored}: 2 regression(s)"
    regressed = [line for line in lines if line.strip().startswith("REGRESSED")]
    assert len(regressed) == 2 == len(lines) - 1  # one line per regression, nothing else
    key = "mobilenet_v2/generic/x86-64-avx2/tvm/fp32/cpu/single-stream/b1"
    assert any(f"{key} ratio to onnxruntime" in line and "+30%" in line for line in regressed)
    assert any(f"{key} p50 latency: 143 ms against 110 ms stored (+30%" in line for line in regressed)
    verdict = json.loads((tmp_path / "verdict.json").read_text())
    assert verdict["passed"] is False
    assert sorted(r["metric"] for r in verdict["regressions"]) == ["p50 latency", "ratio to onnxruntime"]


def test_gate_passes_a_slowdown_within_the_thresholds(tmp_path, make_bench, make_report, capsys):
    current, stored = _reports(tmp_path, make_bench, make_report, 1.1)
    assert main(["gate", str(current), str(stored)]) == 0
    assert capsys.readouterr().out.strip() == f"regression gate passed: 4 checks against {stored}"


def test_gate_thresholds_are_flags(tmp_path, make_bench, make_report, capsys):
    current, stored = _reports(tmp_path, make_bench, make_report, 1.3)
    assert main(["gate", str(current), str(stored), "--ratio", "0.5", "--latency", "0.5"]) == 0
    current, stored = _reports(tmp_path, make_bench, make_report, 1.1)
    assert main(["gate", str(current), str(stored), "--ratio", "0.05"]) == 1
    assert "ratio to onnxruntime" in capsys.readouterr().out


def test_gate_on_a_missing_report_is_a_one_line_user_error(tmp_path, make_bench, make_report, capsys):
    current, _ = _reports(tmp_path, make_bench, make_report, 1.0)
    assert main(["gate", str(current), str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edgekiln gate: error: ")
