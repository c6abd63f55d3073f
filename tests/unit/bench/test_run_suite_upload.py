"""``edgekiln suite --upload``: where the admin token comes from (the fleet operator
commands' rule), what is sent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgekiln.bench.results import BenchReport
from edgekiln.cli import suite as suite_cli
from edgekiln.cli.fleet import admin_token
from edgekiln.cli.main import main
from edgekiln.errors import UserError

ROOT = Path(__file__).resolve().parents[3]


def test_upload_needs_an_admin_token(monkeypatch, tmp_path, capsys):
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
    suite = str(ROOT / "benchmarks" / "suite.toml")
    args = ["suite", suite, "--suite", "x86_64", "--upload", "http://127.0.0.1:9", "--out", str(tmp_path)]
    assert main(args) == 2
    assert "no admin token" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()


def test_upload_sends_results_without_per_query_timings(monkeypatch):
    sent = {}

    def call(self, method, path, body=None):
        sent.update(method=method, path=path, endpoint=self.endpoint, token=self.token, body=body)
        return {"results": len(body["report"]["results"])}

    monkeypatch.setattr("edgekiln.cli.fleet.FleetAdmin.call", call)
    report = BenchReport.load(ROOT / "benchmarks" / "results" / "x86_64" / "results.json")
    answer = suite_cli.upload_results(report, None, endpoint="http://fleet:8080/", token="t" * 20, target="x86_64")
    assert answer == {"results": len(report.results)}
    assert (sent["method"], sent["path"], sent["endpoint"]) == ("POST", "/v1/benchmarks", "http://fleet:8080")
    body = sent["body"]
    assert body["target"] == "x86_64" and body["gate"] is None
    subjects = [s for r in body["report"]["results"] for s in r["subjects"]]
    assert subjects and not any("times_ms" in s or "pair_ms" in s for s in subjects)
    assert subjects[0]["latency"]["p50_ms"] == report.results[0].subjects[0].latency.p50_ms
    assert len(json.dumps(body)) < 64_000  # well under the service's 4 MiB body cap
