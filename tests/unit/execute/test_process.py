"""ProcessChannel's error paths and the agent's relay, with small real child processes."""

from __future__ import annotations

import sys

import pytest

from edgekiln.errors import BackendError, DependencyError
from edgekiln.execute.runners import ProcessChannel, Worker, relay, worker_env

ECHO = "import sys\nfor line in sys.stdin:\n    print(line.strip().upper(), flush=True)\n"
DIE = (
    "import sys\nsys.stdin.readline()\nprint('first line', file=sys.stderr)\n"
    "print('RuntimeError: the model is gone', file=sys.stderr)\nsys.exit(3)\n"
)


def test_a_worker_that_dies_is_a_backend_error_with_its_last_stderr_line():
    channel = ProcessChannel([sys.executable, "-c", DIE], None, "tvm")
    gone = r"tvm: the worker process ended \(exit 3\): RuntimeError: the model is gone"
    with pytest.raises(BackendError, match=gone):
        Worker(channel, "tvm").run(1)
    assert channel.returncode == 3
    channel.close()


def test_a_worker_killed_by_a_signal_says_which():
    channel = ProcessChannel(
        [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], None, "tvm"
    )
    with pytest.raises(BackendError, match="died with signal 9"):
        channel.receive()
    channel.close()


def test_a_program_that_cannot_start_is_a_dependency_error(tmp_path):
    with pytest.raises(DependencyError, match="cannot start"):
        ProcessChannel([str(tmp_path / "no-python")], None, "tvm")


def test_relay_feeds_lines_and_returns_replies_until_the_worker_exits():
    channel = ProcessChannel([sys.executable, "-c", ECHO], worker_env(), "relay")
    replies = list(relay(channel, iter(["one", "two\n", "three"])))
    assert replies == ["ONE", "TWO", "THREE"]
    info = channel.close()
    assert channel.returncode == 0 and channel.failure() is None and info.ru_maxrss_kb > 0


def test_relay_reports_how_a_failing_worker_ended():
    channel = ProcessChannel([sys.executable, "-c", DIE], None, "relay")
    assert list(relay(channel, iter(["load"]))) == []
    assert channel.failure() == "the worker process ended (exit 3): RuntimeError: the model is gone"
    channel.close()


def test_relay_kills_the_worker_when_the_request_stream_fails():
    def broken():
        yield "one"
        raise ConnectionError("client gone")

    channel = ProcessChannel(
        [sys.executable, "-c", "import time, sys\nsys.stdin.readline()\ntime.sleep(60)\n"], None, "relay"
    )
    assert list(relay(channel, broken())) == []
    assert channel.returncode == -9 and "signal 9" in channel.failure()
    channel.close()
