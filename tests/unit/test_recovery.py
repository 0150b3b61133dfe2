"""Which recorded jobs the poller hands to recovery (submitted again) and which it adopts or leaves alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.jobs.models import TrainingJob
from gateway.jobs.poller import REMEMBERED, Accounting, PollResult, Snapshot, Window, update_job
from gateway.jobs.schemas import JobCreate
from gateway.jobs.service import request_hash
from slurm.records import AccountingRecord, JobState
from tests.unit.test_poller_arrays import training_job

pytestmark = pytest.mark.unit
T0 = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
LATER = T0 + timedelta(seconds=1)
OPEN = Window(over=LATER, remembered=T0 - timedelta(seconds=1))
"""A lease after T0: an sbatch begun at T0 is over, and what it made would still be listed."""


def _unsubmitted(**fields: object) -> TrainingJob:
    values = {"state": "SUBMITTING", "slurm_job_id": None, "created_at": T0, "submit_attempt_at": T0}
    return training_job(**{**values, **fields})


def _record(comment: str) -> AccountingRecord:
    return AccountingRecord(
        job_id=77,
        name="sweep",
        user="alice",
        account="lab",
        partition="debug",
        state=JobState.COMPLETED,
        elapsed_seconds=1,
        start_time=T0,
        end_time=T0,
        exit_code=0,
        comment=comment,
    )


def test_a_job_slurm_lacks_is_resubmitted_only_once_its_last_sbatch_is_surely_over() -> None:
    empty = Snapshot([], "i1")
    windows: tuple[tuple[Window | None, list[str]], ...] = (
        (OPEN, ["abc"]),
        (Window(over=T0, remembered=T0), []),
        (Window.at(T0, timedelta(seconds=1)), []),
        (None, []),
    )
    for window, expected in windows:
        result = PollResult()
        job = _unsubmitted()
        assert update_job(job, empty, Accounting([]), result, window) is None
        assert result.unsubmitted == expected, window
        assert job.state == "SUBMITTING"  # never SUBMIT_FAILED for want of a retry


def test_a_job_whose_sbatch_began_before_slurm_forgets_ended_jobs_fails_rather_than_run_twice() -> None:
    result = PollResult()
    job = _unsubmitted()
    change = update_job(
        job, Snapshot([], "i1"), Accounting([]), result, Window.at(T0 + REMEMBERED * 2, timedelta(seconds=1))
    )
    assert result.unsubmitted == [] and job.state == "SUBMIT_FAILED" and change is not None
    assert "too long ago" in (job.reason or "")


def test_a_recorded_attempt_counts_from_its_latest_sbatch_or_else_from_the_row() -> None:
    result = PollResult()
    update_job(_unsubmitted(submit_attempt_at=LATER), Snapshot([], "i1"), Accounting([]), result, OPEN)
    assert result.unsubmitted == []  # claimed again just now by another recoverer
    update_job(_unsubmitted(submit_attempt_at=None), Snapshot([], "i1"), Accounting([]), result, OPEN)
    assert result.unsubmitted == ["abc"]  # a row from before attempts were recorded


def test_nothing_is_resubmitted_when_accounting_did_not_answer() -> None:
    result = PollResult()
    update_job(_unsubmitted(), Snapshot([], "i1"), Accounting([], complete=False), result, OPEN)
    assert result.unsubmitted == []  # it may have run and left squeue: no second sbatch on a guess


def test_a_job_that_ran_and_left_squeue_is_adopted_from_accounting_not_resubmitted() -> None:
    result = PollResult()
    job = _unsubmitted()
    update_job(job, Snapshot([], "i1"), Accounting([_record("rgpu:i1:abc")]), result, OPEN)
    assert result.unsubmitted == [] and result.adopted == 1
    assert job.slurm_job_id == 77 and job.state == "COMPLETED"
    other = _unsubmitted()
    update_job(other, Snapshot([], "i1"), Accounting([_record("rgpu:i1:zzz")]), result, OPEN)
    assert result.unsubmitted == ["abc"]  # another job's record is not this one's


def test_the_request_fingerprint_ignores_key_order_but_not_values() -> None:
    one = JobCreate(name="a", command=["true"], env={"A": "1", "B": "2"})
    same = JobCreate(name="a", command=["true"], env={"B": "2", "A": "1"})
    other = JobCreate(name="a", command=["false"], env={"A": "1", "B": "2"})
    assert request_hash(one) == request_hash(same) != request_hash(other)
