"""How the poller folds an array whose early tasks squeue has already forgotten (MinJobAge) back in."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.jobs.models import TrainingJob
from gateway.jobs.poller import Accounting, PollResult, Snapshot, update_job
from slurm.records import AccountingRecord, Job, JobState

pytestmark = pytest.mark.unit
S = JobState
ARRAY = 50
T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def _entry(job_id: int, state: JobState, task: int | None = None, waiting: str = "") -> Job:
    return Job(
        job_id=job_id,
        name="sweep",
        user="alice",
        account="lab",
        partition="debug",
        state=state,
        array_job_id=ARRAY,
        array_task_id=task,
        array_task_string=waiting,
        comment="rgpu:i1:abc",
        nodes=("n1",) if state == S.RUNNING else (),
        start_time=T0 if state == S.RUNNING else None,
        allocated={"cpu": 1} if state == S.RUNNING else {},
    )


def _record(job_id: int, task: int, state: JobState, exit_code: int = 0) -> AccountingRecord:
    return AccountingRecord(
        job_id=job_id,
        array_job_id=ARRAY,
        array_task_id=task,
        name="sweep",
        user="alice",
        account="lab",
        partition="debug",
        state=state,
        elapsed_seconds=60,
        start_time=T0,
        end_time=T0,
        exit_code=exit_code,
    )


def training_job(**fields: Any) -> TrainingJob:
    """An unsaved job row as the poller loads it: PENDING, no Slurm data yet, unless ``fields`` say otherwise."""
    values: dict[str, Any] = {
        "id": "abc",
        "workspace_id": 1,
        "user_id": 1,
        "name": "sweep",
        "state": "PENDING",
        "reason": None,
        "state_unknown": False,
        "slurm_job_id": ARRAY,
        "spec": {},
        "nodes": [],
        "allocated": {},
        "exit_code": None,
        "array_tasks": None,
        "started_at": None,
        "ended_at": None,
    }
    return TrainingJob(**{**values, **fields})


def _job(state: str = "RUNNING") -> TrainingJob:
    return training_job(state=state, spec={"array": "0-3%1"})


def test_tasks_squeue_forgot_come_from_accounting() -> None:
    # tasks 0 (failed) and 1 left squeue long ago; 2 runs; 3 waits in the array's own entry
    snapshot = Snapshot(instance="i1", jobs=[_entry(53, S.RUNNING, task=2), _entry(ARRAY, S.PENDING, waiting="3%1")])
    assert snapshot.missing_tasks(ARRAY, "0-3%1") and not snapshot.missing_tasks(ARRAY, "2-3")
    accounting = Accounting([_record(51, 0, S.FAILED, 3), _record(52, 1, S.COMPLETED), _record(53, 2, S.RUNNING)])
    job = _job()
    change = update_job(job, snapshot, accounting, PollResult())
    assert change is None and job.state == "RUNNING"  # still running; nothing counted twice:
    assert job.array_tasks == {"COMPLETED": 1, "FAILED": 1, "PENDING": 1, "RUNNING": 1}

    # all gone from squeue: accounting alone, and the early failure names the end
    everything = Accounting(
        [
            _record(51, 0, S.FAILED, 3),
            _record(52, 1, S.COMPLETED),
            _record(53, 2, S.COMPLETED),
            _record(ARRAY, 3, S.COMPLETED),
        ]
    )
    change = update_job(job, Snapshot(instance="i1", jobs=[]), everything, PollResult())
    assert change is not None and (change.old, change.new) == ("RUNNING", "FAILED")
    assert job.array_tasks == {"COMPLETED": 3, "FAILED": 1} and job.exit_code == 3


def test_an_array_is_adopted_by_its_comment_under_the_arrays_id() -> None:
    job = _job("SUBMITTING")
    job.slurm_job_id = None
    result = PollResult()
    update_job(
        job,
        Snapshot(instance="i1", jobs=[_entry(53, S.RUNNING, task=2), _entry(ARRAY, S.PENDING, waiting="3")]),
        Accounting([]),
        result,
    )
    assert job.slurm_job_id == ARRAY and result.adopted == 1
