"""The rules of a stage's status, without a database."""

from __future__ import annotations

import pytest

from edgekiln.fleet.deploy_status import device_state, stage_view


@pytest.mark.parametrize(
    ("result", "delivered", "withheld", "state"),
    [
        (None, False, False, "pending"),
        (None, False, True, "stopped"),
        (None, True, True, "in_progress"),  # handed out before the stop: it goes on
        ("DEPLOYING", False, False, "in_progress"),
        ("SUCCEEDED", True, False, "succeeded"),
        ("FAILED", True, False, "failed"),
        ("FAILED_UNABLE_TO_ROLLBACK", True, True, "failed"),
        ("ROLLED_BACK", True, False, "rolled_back"),
    ],
)
def test_device_states(result, delivered, withheld, state):
    assert device_state(result, delivered, withheld) == state


def test_stage_status_and_whether_the_next_may_start():
    view = lambda states, **kw: stage_view(  # noqa: E731
        **{"started": True, "stopped": False, "policy": "ROLLBACK_ON_FAILURE", **kw}, states=states
    )
    assert (view([], started=False).status, view([], started=False).finished) == ("READYTODEPLOY", False)
    assert "cannot start" in view([], started=False, plan_halted=True).message
    assert (view(["succeeded", "in_progress"]).status, view(["succeeded"]).status) == ("INPROGRESS", "DEPLOYED")
    assert view(["succeeded"]).finished and view([]).finished and view([]).message == "no device to deploy"
    failed = view(["rolled_back", "pending"])
    assert (failed.status, failed.finished, failed.counts["rolled_back"]) == ("FAILED", False, 1)
    assert view(["failed", "in_progress"], policy="DO_NOTHING").status == "INPROGRESS"
    done = view(["failed", "succeeded"], policy="DO_NOTHING")
    assert (done.status, done.finished) == ("FAILED", True)
    stopped = view(["in_progress", "stopped"], stopped=True)
    assert (stopped.status, stopped.finished) == ("STOPPED", False)
    # A failure under ROLLBACK_ON_FAILURE shows even once the stage was stopped.
    assert view(["failed"], stopped=True).status == "FAILED"
