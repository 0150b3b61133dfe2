"""Job arrays seen as one job: the tasks' states folded into the array's, and task-id specs counted.

Slurm lists an array as its tasks: each one that started has its own job id (``array_job_id`` names the
array), and the tasks still waiting share one entry whose ``array_task_string`` (``2-3%2``) says which they
are. A user asked for one job, so the gateway shows one: running while any task runs, finished when every
task has, and failed (or cancelled, ...) when any task did.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import TypeVar

import msgspec

from slurm.records import AccountingRecord, Job, JobState

T = TypeVar("T", int, datetime)

MAX_TASKS = 1_000_000
"""Slurm's MaxArraySize is at most 4,000,001; counting past a million is not worth the memory."""

_FINAL_PRECEDENCE = (
    JobState.FAILED,
    JobState.OUT_OF_MEMORY,
    JobState.TIMEOUT,
    JobState.NODE_FAIL,
    JobState.BOOT_FAIL,
    JobState.DEADLINE,
    JobState.PREEMPTED,
    JobState.SPECIAL_EXIT,
    JobState.REVOKED,
    JobState.CANCELLED,
)
"""Which task's ending names the array's, worst first; COMPLETED only when every task completed."""
_LIVE_PRECEDENCE = (
    JobState.RUNNING,
    JobState.COMPLETING,
    JobState.SUSPENDED,
    JobState.RESIZING,
    JobState.REQUEUED,
    JobState.PENDING,
)

_RANGE = re.compile(r"^(\d+)(?:-(\d+)(?::(\d+))?)?$")


def task_ids(spec: str) -> list[int]:
    """``0-15:4,20%2`` -> ``[0, 4, 8, 12, 20]`` (the ``%`` limit is not a task). Raises ValueError if malformed."""
    body = spec.split("%", 1)[0].strip()
    ids: list[int] = []
    for part in filter(None, body.split(",")):
        match = _RANGE.fullmatch(part.strip())
        if match is None:
            raise ValueError(f"not an array task list: {spec!r}")
        first = int(match[1])
        last = int(match[2]) if match[2] is not None else first
        step = int(match[3]) if match[3] is not None else 1
        if last < first or step < 1:
            raise ValueError(f"not an array task list: {spec!r}")
        if len(ids) + (last - first) // step + 1 > MAX_TASKS:
            raise ValueError(f"more than {MAX_TASKS} array tasks: {spec!r}")
        ids.extend(range(first, last + 1, step))
    return ids


def combined_state(states: Iterable[JobState]) -> JobState:
    """The array's state from its tasks' (see the module's docstring)."""
    present = set(states)
    if not present:
        return JobState.UNKNOWN
    live = present - {s for s in JobState if s.is_terminal}
    if live:
        return next((s for s in _LIVE_PRECEDENCE if s in live), JobState.UNKNOWN)
    if present == {JobState.COMPLETED}:
        return JobState.COMPLETED
    return next((s for s in _FINAL_PRECEDENCE if s in present), JobState.UNKNOWN)


def _waiting(task: Job) -> list[int]:
    """The task ids an array's shared entry of waiting tasks stands for (none for a task of its own)."""
    if task.array_task_id is not None or not task.array_task_string:
        return []
    try:
        return task_ids(task.array_task_string)
    except ValueError:
        return []


def task_counts(tasks: Sequence[Job], finished: Sequence[AccountingRecord] = ()) -> dict[str, int]:
    """How many tasks are in each state; the shared entry of waiting tasks counts as all of them.

    ``finished``: accounting records of tasks no longer in ``tasks`` (squeue forgets finished ones), or all
    of them once the array has left squeue.
    """
    counts: Counter[str] = Counter(r.state.value for r in finished)
    for task in tasks:
        counts[task.state.value] += max(1, len(_waiting(task)))
    return dict(sorted(counts.items()))


def listed_task_ids(tasks: Sequence[Job]) -> set[int]:
    """The task ids squeue's entries stand for (started tasks, and the waiting ones of the shared entry)."""
    ids: set[int] = set()
    for task in tasks:
        if task.array_task_id is not None:
            ids.add(task.array_task_id)
        ids.update(_waiting(task))
    return ids


def _known(pick: Callable[[list[T]], T], values: Iterable[T | None]) -> T | None:
    """``pick`` (min, max) of the values that are known; None if none is."""
    known = [v for v in values if v is not None]
    return pick(known) if known else None


def combine_jobs(array_job_id: int, tasks: Sequence[Job], finished: Sequence[AccountingRecord] = ()) -> Job:
    """One Job standing for the whole array: ``tasks`` are its squeue entries (at least one), ``finished`` the
    accounting records of its tasks squeue no longer lists.

    Its id is the array's; nodes are every listed task's; it started when the first task did and ended when
    the last did, if all have; reason and exit code are those of the task that names the state. ``allocated``
    is what the running tasks hold together, and one task's once none runs.
    """
    if not tasks:
        raise ValueError("an array without tasks")
    state = combined_state([*(t.state for t in tasks), *(r.state for r in finished)])
    naming = next((t for t in tasks if t.state == state), tasks[0])
    nodes = tuple(dict.fromkeys(n for t in tasks for n in t.nodes))
    allocated: dict[str, int] = {}
    for task in tasks:
        if task.state.is_active:
            for key, value in task.allocated.items():
                allocated[key] = allocated.get(key, 0) + value
    return msgspec.structs.replace(
        naming,
        job_id=array_job_id,
        array_job_id=array_job_id,
        array_task_id=None,
        array_task_string="",
        state=state,
        reason=naming.reason if naming.state == state else None,
        nodes=nodes,
        start_time=_known(min, [*(t.start_time for t in tasks), *(r.start_time for r in finished)]),
        end_time=_known(max, [*(t.end_time for t in tasks), *(r.end_time for r in finished)])
        if state.is_terminal
        else None,
        exit_code=(
            _known(max, [*(t.exit_code for t in tasks), *(r.exit_code for r in finished)])
            if state.is_terminal
            else None
        ),
        allocated=allocated or naming.allocated,
        allocation=None,
    )


def combine_records(array_job_id: int, records: Sequence[AccountingRecord]) -> AccountingRecord:
    """One allocation record standing for the whole array (``records``: its tasks' allocations, not steps)."""
    if not records:
        raise ValueError("an array without records")
    state = combined_state(r.state for r in records)
    naming = next((r for r in records if r.state == state), records[0])
    allocated: dict[str, int] = {}
    for record in records:
        for key, value in record.allocated.items():
            allocated[key] = max(allocated.get(key, 0), value)
    return msgspec.structs.replace(
        naming,
        job_id=array_job_id,
        array_task_id=None,
        state=state,
        elapsed_seconds=sum(r.elapsed_seconds for r in records),
        start_time=_known(min, [r.start_time for r in records]),
        end_time=_known(max, [r.end_time for r in records]) if state.is_terminal else None,
        exit_code=_known(max, [r.exit_code for r in records]) if state.is_terminal else None,
        allocated=allocated,
    )
