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


# Answers each line, then keeps a thread busy for 0.3 s, as a runtime's spinning pool does.
SPIN_AFTER_REPLY = (
    "import sys, threading, time\n"
    "def spin():\n"
    "    end = time.monotonic() + 0.3\n"
    "    while time.monotonic() < end:\n"
    "        pass\n"
    "for line in sys.stdin:\n"
    '    print(\'{"ok": true, "seconds": [0.001]}\', flush=True)\n'
    "    threading.Thread(target=spin).start()\n"
)


def test_settle_waits_while_the_worker_still_burns_cpu_and_not_after():
    channel = ProcessChannel([sys.executable, "-c", SPIN_AFTER_REPLY], None, "spinner")
    worker = Worker(channel, "spinner")
    try:
        worker.run(1)
        waited = worker.settle(limit_s=2.0)
        # The thread spins 0.3 s from the reply; settle returns once it has stopped.
        assert 0.15 <= waited < 1.5
        assert worker.settle(limit_s=2.0) < 0.1  # idle now: one or two polls
        worker.run(1)
        assert worker.settle(limit_s=0.05) < 0.1  # the limit holds while it spins
    finally:
        channel.close()


def test_settle_does_not_wait_for_a_worker_it_cannot_see():
    class Remote:  # a device's agent: no /proc to read
        def send(self, line: str) -> None: ...

        def receive(self) -> str:
            return ""

        def close(self):  # noqa: ANN201
            return None

    assert Worker(Remote(), "device").settle() == 0.0
