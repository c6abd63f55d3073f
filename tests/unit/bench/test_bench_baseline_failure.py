"""A baseline that cannot run (the torch baseline on an operator it lacks) is reported and
dropped; the artifact and the other baselines are still measured."""

from __future__ import annotations

import pytest

from edgekiln.bench import harness
from edgekiln.errors import BackendError


class FakeWorker:
    def __init__(self, label, fail):
        self.label, self.fail, self.aborted = label, fail, False

    def load(self, spec, samples):
        if self.fail:
            raise BackendError(f"{self.label}: the torch baseline cannot run operators ['Erf']")

    def abort(self):
        self.aborted = True


class FakeRunner:
    def __init__(self, failing=()):
        self.failing, self.workers = set(failing), []

    def describe(self):
        return "fake"

    def start(self, label):
        self.workers.append(FakeWorker(label, label in self.failing))
        return self.workers[-1]


def subject(name, role):
    return harness._Subject(name, None, role=role, spec={"kind": name})


def test_a_baseline_that_cannot_load_is_reported_and_dropped():
    runner, failed = FakeRunner(failing={"torch"}), {}
    assert harness._load(subject("onnxruntime", "baseline"), runner, [], harness.NullProgress(), failed)
    assert not harness._load(subject("torch", "baseline"), runner, [], harness.NullProgress(), failed)
    assert failed == {"torch": "torch: the torch baseline cannot run operators ['Erf']"}
    assert [w.aborted for w in runner.workers] == [False, True]  # the failed worker is stopped


def test_the_artifact_failing_to_load_fails_the_run():
    runner, failed = FakeRunner(failing={"tvm"}), {}
    with pytest.raises(BackendError, match="cannot run"):
        harness._load(subject("tvm", "candidate"), runner, [], harness.NullProgress(), failed)
    assert failed == {} and runner.workers[0].aborted


def test_the_failed_baselines_are_in_the_report_and_the_summary(make_bench, make_report):
    import dataclasses

    from edgekiln.bench.results import BenchReport
    from edgekiln.cli.bench import summary

    result = dataclasses.replace(make_bench(), baselines_failed={"torch": "cannot run operators ['Erf']"})
    report = BenchReport.from_dict(make_report(result).to_dict())
    assert report.results[0].baselines_failed == {"torch": "cannot run operators ['Erf']"}
    assert "  baseline torch not run: cannot run operators ['Erf']" in summary(report).splitlines()
