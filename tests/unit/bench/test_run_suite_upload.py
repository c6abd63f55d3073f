"""benchmarks/run_suite.py's upload option: where the admin token comes from (the fleet
operator commands' rule), what is sent."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from edgekiln.bench.results import BenchReport
from edgekiln.cli.fleet import admin_token
from edgekiln.errors import UserError

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def run_suite():
    spec = importlib.util.spec_from_file_location("run_suite", ROOT / "benchmarks" / "run_suite.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("run_suite", module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_upload_needs_an_admin_token(run_suite, monkeypatch, tmp_path):
    monkeypatch.delenv("EDGEKILN_FLEET_ADMIN_TOKEN", raising=False)
    with pytest.raises(UserError, match="EDGEKILN_FLEET_ADMIN_TOKEN"):
        admin_token(None)
    with pytest.raises(UserError, match="admin token file"):
        admin_token(tmp_path / "missing")
    (tmp_path / "token").write_text("from-file\n")
    monkeypatch.setenv("EDGEKILN_FLEET_ADMIN_TOKEN", "from-env")
    assert admin_token(None) == "from-env"
    assert admin_token(tmp_path / "token") == "from-file"
    # Checked before the suite runs: a CI job without the token fails at once.
    monkeypatch.delenv("EDGEKILN_FLEET_ADMIN_TOKEN")
    assert run_suite.main(["--suite", "x86_64", "--upload", "http://127.0.0.1:9", "--out", str(tmp_path)]) == 2


def test_upload_sends_results_without_per_query_timings(run_suite, monkeypatch):
    sent = {}

    def call(self, method, path, body=None):
        sent.update(method=method, path=path, endpoint=self.endpoint, token=self.token, body=body)
        return {"results": len(body["report"]["results"])}

    monkeypatch.setattr("edgekiln.cli.fleet.FleetAdmin.call", call)
    report = BenchReport.load(ROOT / "benchmarks" / "results" / "x86_64" / "results.json")
    answer = run_suite.upload_results(report, None, endpoint="http://fleet:8080/", token="t" * 20, target="x86_64")
    assert answer == {"results": len(report.results)}
    assert (sent["method"], sent["path"], sent["endpoint"]) == ("POST", "/v1/benchmarks", "http://fleet:8080")
    body = sent["body"]
    assert body["target"] == "x86_64" and body["gate"] is None
    subjects = [s for r in body["report"]["results"] for s in r["subjects"]]
    assert subjects and not any("times_ms" in s or "pair_ms" in s for s in subjects)
    assert subjects[0]["latency"]["p50_ms"] == report.results[0].subjects[0].latency.p50_ms
    assert len(json.dumps(body)) < 64_000  # well under the service's 4 MiB body cap
