"""A test-only fault hook: the agent kills itself with SIGKILL at a named install step.

``EDGEKILN_DEPLOY_KILL_AT="STEP:N"`` (several, comma-separated) makes the N-th call of
:func:`checkpoint` for STEP in this process send SIGKILL to the agent's own process: a power
cut at that point, without the cooperation of any cleanup code. STEP is one of
:data:`STEPS`. Unset (always, outside tests) it costs one dictionary lookup per call. The
tests that kill the agent at every step use it; nothing else should.
"""

from __future__ import annotations

import os
import signal
import threading

from edgekiln.agents.deploy.spec import STEPS

KILL_ENV = "EDGEKILN_DEPLOY_KILL_AT"

_counts: dict[str, int] = {}
_lock = threading.Lock()


def _targets() -> dict[str, int]:
    found: dict[str, int] = {}
    for item in os.environ.get(KILL_ENV, "").split(","):
        step, _, count = item.strip().partition(":")
        if step in STEPS and count.isdigit():
            found[step] = int(count)
    return found


def checkpoint(step: str) -> None:
    """A point inside install step ``step`` where a power cut may be simulated."""
    if not os.environ.get(KILL_ENV):
        return
    target = _targets().get(step)
    if target is None:
        return
    with _lock:
        _counts[step] = _counts.get(step, 0) + 1
        hit = _counts[step] == target
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)
