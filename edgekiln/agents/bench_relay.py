"""The Bench relay: one Bench stream of the local API run by a benchmark worker process."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from edgekiln.errors import DependencyError

log = logging.getLogger(__name__)


def _relay_bench(
    requests: Any, context: Any, model_dir: Path, line_type: Any, abort: Callable[[Any, str, str], None]
) -> Any:
    """Relay one Bench stream to a worker process (:mod:`edgekiln.execute.worker`).

    The worker is a process of its own (not a thread of the agent) so that its peak RSS is
    the model's and a crash takes only the worker.  Lines go to its stdin as they come; its
    stdout lines go back unchanged; the stream ends when it exits, with trailing metadata
    ``exit-code`` and ``ru-maxrss-kb``.  The client going away kills it.
    """
    from edgekiln.execute.runners import relay, start_local_worker

    try:
        first = next(requests)
    except StopIteration:
        return  # the client closed before sending anything: no worker to start
    try:
        channel = start_local_worker("the benchmark worker", cwd=model_dir if Path(model_dir).is_dir() else None)
    except DependencyError as exc:
        abort(context, "UNAVAILABLE", exc.one_line())
    log.info("bench: worker %d started", channel.pid)
    context.add_callback(channel.kill)  # the call ended (client gone, cancelled, deadline): stop the worker
    try:
        for line in relay(channel, (m.json for m in _chain(first, requests))):
            yield line_type(json=line)
        info = channel.close()
        code, failure = channel.returncode, channel.failure()
        log.info("bench: worker %d exited with %s", channel.pid, code)
        context.set_trailing_metadata((("exit-code", str(code)), ("ru-maxrss-kb", str(info.ru_maxrss_kb or 0))))
        if failure:
            abort(context, "INTERNAL", f"the benchmark worker failed: {failure}")
    finally:
        channel.kill()
        channel.close()


def _chain(first: Any, rest: Any) -> Any:
    yield first
    yield from rest
