from __future__ import annotations

import msgspec
import pytest

from slurm.records import AccountingRecord, Allocation, JobState, NodeAllocation


@pytest.mark.parametrize(
    ("text", "state"),
    [
        ("PENDING", JobState.PENDING),
        ("CANCELLED by 1100", JobState.CANCELLED),
        ("CANCELLED+", JobState.CANCELLED),
        ("out_of_memory", JobState.OUT_OF_MEMORY),
        ("SOMETHING_NEW", JobState.UNKNOWN),
        (None, JobState.UNKNOWN),
    ],
)
def test_states_parse(text: str | None, state: JobState) -> None:
    assert JobState.parse(text) is state


def test_terminal_states() -> None:
    live = {JobState.PENDING, JobState.RUNNING, JobState.SUSPENDED, JobState.COMPLETING, JobState.REQUEUED}
    live |= {JobState.RESIZING, JobState.UNKNOWN}
    assert {s for s in JobState if not s.is_terminal} == live
    assert JobState.RUNNING.is_active and not JobState.PENDING.is_active


def test_display_ids_and_gpu_totals() -> None:
    job = AccountingRecord(
        job_id=446, name="", user="", account="", partition="", state=JobState.COMPLETED, elapsed_seconds=0
    )
    assert job.display_id == "446" and msgspec.structs.replace(job, step="batch").display_id == "446.batch"
    assert msgspec.structs.replace(job, job_id=13, array_job_id=7, array_task_id=1).display_id == "7_1"
    nodes = (NodeAllocation(node="n1", gpu_indices=(0, 1)), NodeAllocation(node="n2", gpu_indices=(3,)))
    assert Allocation(job_id=1, nodes=nodes).gpus == 3
