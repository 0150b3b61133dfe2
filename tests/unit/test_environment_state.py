"""The environment's state is derived from its session's Slurm job and callback: every case, and tokens."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.environments import tokens
from gateway.environments.state import derive, is_active

pytestmark = pytest.mark.unit
NOW = datetime(2026, 12, 2, tzinfo=UTC)


@pytest.mark.parametrize(
    ("job_state", "kwargs", "state", "reason_has"),
    [
        (None, {}, "stopped", None),
        ("SUBMITTING", {}, "pending", None),
        ("PENDING", {"job_reason": "QOSGrpGRES"}, "pending", "QOSGrpGRES"),
        ("PENDING", {"job_reason": "None"}, "pending", None),
        ("RUNNING", {}, "starting", "waiting"),
        ("RUNNING", {"reported_at": NOW}, "running", None),
        ("PENDING", {"reported_at": NOW}, "running", None),  # the callback came before the poller saw it start
        ("RUNNING", {"reported_at": NOW, "state_unknown": True}, "unknown", "not answering"),
        ("RUNNING", {"stop_requested": True, "stop_requested_by": "alice"}, "stopping", "alice"),
        ("CANCELLED", {"stop_requested": True, "stop_requested_by": "alice"}, "stopped", "stopped by alice"),
        ("CANCELLED", {}, "stopped", "cancelled in Slurm"),
        ("TIMEOUT", {"reported_at": NOW}, "stopped", "time limit"),
        ("PREEMPTED", {}, "stopped", "preempted"),
        ("COMPLETED", {}, "stopped", "services exited"),
        ("NODE_FAIL", {}, "failed", "node failed"),
        ("FAILED", {"stop_requested": True}, "stopped", "stopped"),
        ("OUT_OF_MEMORY", {}, "failed", "out of memory"),
        ("FAILED", {"exit_code": 75}, "failed", "could not fetch its datasets"),  # the stage-in's exit
        ("FAILED", {"exit_code": 75, "reported_at": NOW}, "failed", "supervisor failed"),  # the supervisor's own
        ("FAILED", {"exit_code": 1}, "failed", "supervisor failed"),
        ("SUBMIT_FAILED", {"job_reason": "Invalid partition"}, "failed", "Invalid partition"),
        ("TIMEOUT", {"state_unknown": True}, "stopped", "time limit"),  # an end is an end
    ],
)
def test_derived_states(job_state: str | None, kwargs: dict[str, object], state: str, reason_has: str | None) -> None:
    derived = derive(job_state, **kwargs)  # type: ignore[arg-type]
    assert derived.state == state
    if reason_has is None:
        assert derived.reason is None
    else:
        assert derived.reason is not None and reason_has in derived.reason


def test_unknown_never_ends_anything() -> None:
    for job_state in ("PENDING", "RUNNING", "SUSPENDED", "COMPLETING"):
        assert derive(job_state, state_unknown=True).state == "unknown"
        assert is_active(job_state)


def test_tokens_name_their_job_and_only_with_the_key() -> None:
    job = "a" * 32
    token = tokens.make("key", job)
    assert tokens.verified_job_id("key", token) == job
    assert tokens.verified_job_id("other", token) is None
    assert tokens.verified_job_id("key", token[:-1] + ("0" if token[-1] != "0" else "1")) is None
    assert tokens.verified_job_id("key", tokens.make("key", "b" * 32).replace("b" * 32, job)) is None
    assert tokens.verified_job_id("key", "garbage") is None
    assert tokens.verified_job_id("key", token + "\n") is None
