"""What state an environment is in, derived from its current session's Slurm job and the supervisor's callback.

Nothing stores it: the job's row (kept by the one poller) and the session's row (the callback, a stop request)
are the truth, so the state can never disagree with them. ``unknown`` (the controller did not answer the last
poll) never ends anything: it shows the last known state's environment as unknown until Slurm answers again.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from gateway.jobs.models import STAGE_IN_FAILED, SUBMIT_FAILED, SUBMITTING
from slurm.records import JobState

FAILED_ENDS = frozenset({"FAILED", "NODE_FAIL", "BOOT_FAIL", "OUT_OF_MEMORY", SUBMIT_FAILED})
"""Ends of a session that make the environment ``failed`` (unless someone had asked it to stop)."""
_ENDS = {s.value for s in JobState if s.is_terminal} | {SUBMIT_FAILED}
_WHY = {
    "TIMEOUT": "time limit reached",
    "PREEMPTED": "preempted by Slurm",
    "DEADLINE": "deadline reached",
    "NODE_FAIL": "its node failed",
    "BOOT_FAIL": "its node failed to boot",
    "OUT_OF_MEMORY": "out of memory",
    "CANCELLED": "cancelled in Slurm",
    "COMPLETED": "its services exited",
    "FAILED": "its supervisor failed",
}


class Derived(msgspec.Struct, frozen=True):
    state: str
    reason: str | None = None


def derive(
    job_state: str | None,
    *,
    state_unknown: bool = False,
    job_reason: str | None = None,
    exit_code: int | None = None,
    reported_at: datetime | None = None,
    stop_requested_by: str | None = None,
    stop_requested: bool = False,
) -> Derived:
    """The environment's state from its session (``job_state`` None: never started)."""
    if job_state is None:
        return Derived("stopped")
    if job_state in _ENDS:
        why = _WHY.get(job_state, job_state.lower())
        if stop_requested:
            return Derived("stopped", f"stopped by {stop_requested_by}" if stop_requested_by else "stopped")
        if job_state == SUBMIT_FAILED:
            return Derived("failed", f"not submitted: {job_reason}" if job_reason else "not submitted")
        if job_state == "FAILED" and exit_code == STAGE_IN_FAILED and reported_at is None:
            return Derived("failed", "could not fetch its datasets or models (its events say why)")
        if job_state in FAILED_ENDS:
            return Derived("failed", f"{why} (Slurm: {job_state})")
        return Derived("stopped", f"{why} (Slurm: {job_state})")
    if state_unknown:
        return Derived("unknown", "the Slurm controller is not answering")
    if stop_requested:
        return Derived("stopping", f"stop asked by {stop_requested_by}" if stop_requested_by else None)
    if reported_at is not None and job_state != "SUSPENDED":
        return Derived("running")  # its services called back: running, whether or not the poller has seen it start
    if job_state in (SUBMITTING, "PENDING", "REQUEUED"):
        return Derived("pending", None if job_reason in (None, "None") else job_reason)
    if job_state == "SUSPENDED":
        return Derived("pending", "suspended by Slurm")
    return Derived("starting", "waiting for the session's services")


def is_active(job_state: str | None) -> bool:
    """Whether a session with this job state holds (or waits for) an allocation."""
    return job_state is not None and job_state not in _ENDS
