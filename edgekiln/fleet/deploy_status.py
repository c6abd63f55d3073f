"""How a stage of a deployment plan stands, from its rows and its devices' latest results.

Pure functions over plain values, so that the rules are stated once and tested without a
database:

* a device is PENDING until it fetches the deployment, then IN_PROGRESS until it reports a
  final status; SUCCEEDED, FAILED (FAILED or FAILED_UNABLE_TO_ROLLBACK) and ROLLED_BACK
  follow its report; a device that never fetched it from a stopped stage or a halted plan
  is STOPPED (it will not get the package);
* a stage is READYTODEPLOY until started, STOPPED when stopped, FAILED as soon as a device
  fails under ROLLBACK_ON_FAILURE (or, under DO_NOTHING, once every device is final and one
  failed), DEPLOYED when every device succeeded, INPROGRESS otherwise (Edge Manager's
  StageStatus values);
* a stage has *finished* when it is DEPLOYED, or FAILED under DO_NOTHING with every device
  final: only then may the next stage start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

FINAL = frozenset({"SUCCEEDED", "FAILED", "ROLLED_BACK", "FAILED_UNABLE_TO_ROLLBACK"})
FAILURES = frozenset({"FAILED", "ROLLED_BACK", "FAILED_UNABLE_TO_ROLLBACK"})
DEVICE_STATES = ("pending", "in_progress", "succeeded", "failed", "rolled_back", "stopped")


def device_state(result_status: str | None, delivered: bool, withheld: bool) -> str:
    """One device's state in a stage (one of DEVICE_STATES)."""
    if result_status == "SUCCEEDED":
        return "succeeded"
    if result_status == "ROLLED_BACK":
        return "rolled_back"
    if result_status in FAILURES:
        return "failed"
    if result_status == "DEPLOYING" or delivered:
        return "in_progress"
    return "stopped" if withheld else "pending"


# Edge Manager's DeviceDeploymentStatus for each device state (ListStageDevices).
EDGE_DEVICE_STATUS = {
    "pending": "READYTODEPLOY",
    "in_progress": "INPROGRESS",
    "succeeded": "DEPLOYED",
    "failed": "FAILED",
    "rolled_back": "FAILED",
    "stopped": "STOPPED",
}


@dataclass(frozen=True)
class StageView:
    """A stage's status, its device counts, and whether the next stage may start."""

    status: str
    counts: dict[str, int]
    finished: bool
    message: str


def stage_view(
    *, started: bool, stopped: bool, policy: str, states: Iterable[str], plan_halted: bool = False
) -> StageView:
    """The stage's status from its devices' states (see the module's rules)."""
    counts = dict.fromkeys(DEVICE_STATES, 0)
    for state in states:
        counts[state] += 1
    total = sum(counts.values())
    failures = counts["failed"] + counts["rolled_back"]
    open_ = counts["pending"] + counts["in_progress"]
    if not started:
        message = "the plan was halted by a failure; this stage cannot start" if plan_halted else ""
        return StageView("READYTODEPLOY", counts, False, message)
    if failures and policy == "ROLLBACK_ON_FAILURE":
        return StageView("FAILED", counts, False, f"{failures} of {total} devices failed; the plan is halted")
    if stopped:
        return StageView("STOPPED", counts, False, "stopped; start the stage again to resume")
    if open_:
        return StageView("INPROGRESS", counts, False, f"{counts['succeeded']} of {total} devices deployed")
    if failures:
        return StageView("FAILED", counts, True, f"{failures} of {total} devices failed (DO_NOTHING: the plan goes on)")
    return StageView(
        "DEPLOYED", counts, True, f"{total} of {total} devices deployed" if total else "no device to deploy"
    )
