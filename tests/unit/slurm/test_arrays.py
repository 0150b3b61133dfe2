"""Arrays seen as one job: states folded, task lists counted, on real squeue/sacct samples."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from slurm.arrays import combine_jobs, combine_records, combined_state, task_counts, task_ids
from slurm.dialects import v22_05
from slurm.records import Job, JobState
from tests.unit.slurm.test_parsing import sample

pytestmark = pytest.mark.unit

S = JobState


@pytest.mark.parametrize(
    ("spec", "ids"),
    [
        ("0", [0]),
        ("2-3%2", [2, 3]),
        ("0-15:4,20%2", [0, 4, 8, 12, 20]),
        ("1,3,5-6", [1, 3, 5, 6]),
        ("", []),
    ],
)
def test_task_ids(spec: str, ids: list[int]) -> None:
    assert task_ids(spec) == ids


@pytest.mark.parametrize("spec", ["a", "3-1", "1-5:0", "1--2", "0-99999999"])
def test_task_ids_refuses_what_slurm_would_not_write(spec: str) -> None:
    with pytest.raises(ValueError, match=r"array task"):
        task_ids(spec)


@given(st.lists(st.integers(0, 5000), min_size=1, max_size=30, unique=True))
def test_task_ids_read_back_a_list_of_ids(ids: list[int]) -> None:
    assert task_ids(",".join(map(str, ids))) == ids


@pytest.mark.parametrize(
    ("states", "combined"),
    [
        ([S.COMPLETED, S.RUNNING, S.PENDING], S.RUNNING),
        ([S.COMPLETED, S.PENDING], S.PENDING),
        ([S.FAILED, S.PENDING], S.PENDING),  # not over while a task waits
        ([S.COMPLETED, S.COMPLETED], S.COMPLETED),
        ([S.COMPLETED, S.FAILED, S.CANCELLED], S.FAILED),
        ([S.COMPLETED, S.CANCELLED], S.CANCELLED),
        ([S.TIMEOUT, S.COMPLETED], S.TIMEOUT),
        ([S.SUSPENDED, S.PENDING], S.SUSPENDED),
        ([], S.UNKNOWN),
    ],
)
def test_combined_state(states: list[JobState], combined: JobState) -> None:
    assert combined_state(states) == combined


def test_a_running_array_from_squeue() -> None:
    """Array 7 (``--array=0-3%2``): tasks 0 and 1 run as jobs 12 and 13, tasks 2-3 wait in entry 7."""
    tasks = [j for j in v22_05.parse_squeue(sample("squeue_array_dep.json")) if j.array_job_id == 7]
    assert sorted((t.job_id, t.array_task_id, t.array_task_string) for t in tasks) == [
        (7, None, "2-3%2"),
        (12, 0, ""),
        (13, 1, ""),
    ]
    assert task_counts(tasks) == {"PENDING": 2, "RUNNING": 2}
    array = combine_jobs(7, tasks)
    assert (array.job_id, array.state, array.end_time, array.exit_code) == (7, S.RUNNING, None, None)
    assert array.start_time == min(t.start_time for t in tasks if t.state == S.RUNNING and t.start_time)
    assert array.allocated["cpu"] == sum(t.allocated["cpu"] for t in tasks if t.state == S.RUNNING)


def _task(job_id: int, task: int, state: JobState, exit_code: int | None, end: int) -> Job:
    return Job(
        job_id=job_id,
        name="a",
        user="u",
        account="ws",
        partition="debug",
        state=state,
        array_job_id=7,
        array_task_id=task,
        nodes=(f"n{task % 2 + 1}",),
        start_time=datetime.fromtimestamp(end - 10, UTC),
        end_time=datetime.fromtimestamp(end, UTC),
        exit_code=exit_code,
        allocated={"cpu": 1},
    )


def test_a_finished_array_takes_its_worst_task() -> None:
    tasks = [_task(7, 0, S.COMPLETED, 0, 100), _task(8, 1, S.FAILED, 3, 90), _task(9, 2, S.COMPLETED, 0, 120)]
    array = combine_jobs(7, tasks)
    assert (array.state, array.exit_code, array.nodes) == (S.FAILED, 3, ("n1", "n2"))
    assert array.end_time == datetime.fromtimestamp(120, UTC)
    assert array.start_time == datetime.fromtimestamp(80, UTC)
    assert array.allocated == {"cpu": 1}  # none runs: one task's


def test_a_finished_array_from_sacct() -> None:
    records = [r for r in v22_05.parse_sacct(sample("sacct_array.json")) if r.array_job_id == 7]
    assert task_counts((), records) == {"COMPLETED": 4}
    array = combine_records(7, records)
    assert (array.job_id, array.state, array.array_task_id) == (7, S.COMPLETED, None)
    assert array.elapsed_seconds == sum(r.elapsed_seconds for r in records)
    assert array.end_time == max(r.end_time for r in records if r.end_time)
    failed = msgspec.structs.replace(records[0], state=S.FAILED)
    assert combine_records(7, [failed, *records[1:]]).state == S.FAILED


def test_an_array_needs_tasks() -> None:
    with pytest.raises(ValueError, match="without"):
        combine_jobs(7, [])
    with pytest.raises(ValueError, match="without"):
        combine_records(7, [])
