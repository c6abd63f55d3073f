"""The agent's Bench relay: lines to a worker process and back, its end as trailing metadata."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest

from edgekiln.agents.bench_relay import _relay_bench
from edgekiln.execute import runners


class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self):
        self.callbacks, self.trailing = [], None

    def add_callback(self, fn):
        self.callbacks.append(fn)
        return True

    def set_trailing_metadata(self, items):
        self.trailing = dict(items)


def _abort(context, code, message):
    raise Aborted(f"{code}: {message}")


def _lines(*requests):
    return iter([SimpleNamespace(json=json.dumps(r)) for r in requests])


def test_the_relay_runs_a_real_worker_and_ends_with_its_exit_code(tmp_path):
    context = FakeContext()
    replies = [
        json.loads(m.json)
        for m in _relay_bench(
            _lines({"op": "run"}, {"op": "exit"}), context, tmp_path, lambda json: SimpleNamespace(json=json), _abort
        )
    ]
    assert replies[0]["ok"] is False and "run before load" in replies[0]["error"]
    assert replies[1]["ok"] is True and replies[1]["vm_hwm_kb"] > 0
    assert context.trailing["exit-code"] == "0" and int(context.trailing["ru-maxrss-kb"]) > 0
    assert len(context.callbacks) == 1  # the kill switch for a client that goes away


def test_a_worker_that_fails_aborts_the_call_with_its_last_stderr_line(tmp_path, monkeypatch):
    die = "import sys\nsys.stdin.readline()\nprint('MemoryError: no room', file=sys.stderr)\nsys.exit(2)\n"
    monkeypatch.setattr(
        runners,
        "start_local_worker",
        lambda label, cwd=None: runners.ProcessChannel([sys.executable, "-c", die], None, label),
    )
    context = FakeContext()
    with pytest.raises(Aborted, match=r"INTERNAL: .*ended \(exit 2\): MemoryError: no room"):
        list(_relay_bench(_lines({"op": "exit"}), context, tmp_path, lambda json: SimpleNamespace(json=json), _abort))
    assert context.trailing["exit-code"] == "2"


def test_a_stream_without_a_message_starts_no_worker(tmp_path):
    context = FakeContext()
    assert list(_relay_bench(iter([]), context, tmp_path, None, _abort)) == []
    assert context.callbacks == [] and context.trailing is None
