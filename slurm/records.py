"""Typed records of what Slurm reports, independent of the JSON dialect they were parsed from."""

from __future__ import annotations

import enum
from datetime import datetime

import msgspec


class JobState(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUSPENDED = "SUSPENDED"
    COMPLETING = "COMPLETING"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"
    PREEMPTED = "PREEMPTED"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    REQUEUED = "REQUEUED"
    RESIZING = "RESIZING"
    REVOKED = "REVOKED"
    SPECIAL_EXIT = "SPECIAL_EXIT"
    UNKNOWN = "UNKNOWN"

    @classmethod
    def parse(cls, value: str | None) -> JobState:
        """Slurm writes e.g. ``CANCELLED by 1000`` or ``PENDING``; unknown words map to UNKNOWN."""
        word = (value or "").split(" ", 1)[0].upper()
        try:
            return cls(word)
        except ValueError:
            return cls.UNKNOWN

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def is_active(self) -> bool:
        return self in (JobState.RUNNING, JobState.COMPLETING, JobState.SUSPENDED)


_TERMINAL = frozenset(
    {
        JobState.COMPLETED,
        JobState.CANCELLED,
        JobState.FAILED,
        JobState.TIMEOUT,
        JobState.NODE_FAIL,
        JobState.PREEMPTED,
        JobState.BOOT_FAIL,
        JobState.DEADLINE,
        JobState.OUT_OF_MEMORY,
        JobState.REVOKED,
        JobState.SPECIAL_EXIT,
    }
)

Tres = dict[str, int]
"""e.g. ``{"cpu": 2, "mem": 2048, "node": 1, "gres/gpu": 1, "gres/gpu:a100": 1}``; ``mem`` in MiB."""


class Job(msgspec.Struct, frozen=True, kw_only=True):
    """A job as the controller sees it now (squeue)."""

    job_id: int
    name: str
    user: str
    account: str
    partition: str
    state: JobState
    reason: str | None = None
    array_job_id: int | None = None
    array_task_id: int | None = None
    qos: str | None = None
    nodes: tuple[str, ...] = ()
    node_count: int = 0
    cpus: int = 0
    tasks: int = 0
    time_limit_minutes: int | None = None
    submit_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    exit_code: int | None = None
    signal: int | None = None
    comment: str = ""
    work_dir: str = ""
    stdout: str = ""
    stderr: str = ""
    dependency: str = ""
    requested: Tres = msgspec.field(default_factory=dict)
    allocated: Tres = msgspec.field(default_factory=dict)


class AccountingRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A job as accounting recorded it (sacct): what billing reads. ``allocated`` is AllocTRES."""

    job_id: int
    array_job_id: int | None = None
    array_task_id: int | None = None
    name: str
    user: str
    account: str
    partition: str
    state: JobState
    elapsed_seconds: int
    submit_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    nodes: str = ""
    comment: str = ""
    allocated: Tres = msgspec.field(default_factory=dict)
    requested: Tres = msgspec.field(default_factory=dict)


class Association(msgspec.Struct, frozen=True, kw_only=True):
    cluster: str
    account: str
    user: str | None
    grp_tres: Tres = msgspec.field(default_factory=dict)
