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
        """Slurm writes e.g. ``CANCELLED by 1000``, ``PENDING`` or, in narrow columns, ``CANCELLED+``.

        Unknown words map to UNKNOWN: a newer Slurm's new state must not break the poller.
        """
        word = (value or "").split(" ", 1)[0].rstrip("+").upper()
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


class NodeAllocation(msgspec.Struct, frozen=True, kw_only=True):
    """What one node gives a running job."""

    node: str
    cores: int = 0
    memory_mib: int | None = None
    gpu_indices: tuple[int, ...] = ()
    """Device indices on that node (``CUDA_VISIBLE_DEVICES`` as Slurm's cgroup numbers them)."""
    gpu_type: str | None = None


class Allocation(msgspec.Struct, frozen=True, kw_only=True):
    """Where a running job's resources are, node by node (squeue's ``job_resources`` and ``gres_detail``)."""

    job_id: int
    nodes: tuple[NodeAllocation, ...] = ()

    @property
    def gpus(self) -> int:
        return sum(len(n.gpu_indices) for n in self.nodes)


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
    array_task_string: str = ""
    """The tasks an array's shared entry stands for (``2-3%2``: tasks still waiting); empty for one task."""
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
    allocation: Allocation | None = None
    """Per-node detail while the job holds resources; None when pending or finished."""

    @property
    def memory_mib(self) -> int | None:
        """Memory of the whole job (allocated once running, else requested)."""
        return self.allocated.get("mem", self.requested.get("mem"))


class AccountingRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A job (or one of its steps) as accounting recorded it (sacct): what billing reads.

    ``job_id`` is Slurm's unique id (``JobIDRaw``: an array task has its own); ``step`` is None for the job's
    allocation and e.g. ``"batch"``, ``"extern"``, ``"0"`` for steps. ``allocated`` is AllocTRES.
    ``exit_code``/``signal`` are None where Slurm does not report them reliably (22.05's JSON).
    """

    job_id: int
    step: str | None = None
    array_job_id: int | None = None
    array_task_id: int | None = None
    name: str
    user: str
    account: str
    partition: str
    state: JobState
    qos: str | None = None
    elapsed_seconds: int
    exit_code: int | None = None
    signal: int | None = None
    time_limit_minutes: int | None = None
    submit_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    nodes: str = ""
    comment: str = ""
    allocated: Tres = msgspec.field(default_factory=dict)
    requested: Tres = msgspec.field(default_factory=dict)

    @property
    def display_id(self) -> str:
        """The id as sacct's ``JobID`` shows it: ``446``, ``7_1``, ``446.batch``."""
        base = f"{self.array_job_id}_{self.array_task_id}" if self.array_task_id is not None else str(self.job_id)
        return f"{base}.{self.step}" if self.step is not None else base


class Association(msgspec.Struct, frozen=True, kw_only=True):
    """An account (``user`` None) or a user's association with it; ``grp_tres`` is the GrpTRES limit."""

    cluster: str
    account: str
    user: str | None
    partition: str | None = None
    grp_tres: Tres = msgspec.field(default_factory=dict)
    qos: tuple[str, ...] = ()


class NodeGpus(msgspec.Struct, frozen=True, kw_only=True):
    """A node's GPUs of one type (``type`` None: configured without one, ``gpu:2``)."""

    type: str | None
    total: int
    allocated: int = 0


class Node(msgspec.Struct, frozen=True, kw_only=True):
    """A compute node as the controller sees it now (``sinfo --json``, slurmrestd ``/nodes``)."""

    name: str
    state: str
    """Base state and flags as scontrol writes them: ``IDLE``, ``MIXED``, ``IDLE+DRAIN``, ``DOWN+NOT_RESPONDING``."""
    partitions: tuple[str, ...] = ()
    reason: str | None = None
    cpus: int = 0
    cpus_allocated: int = 0
    memory_mib: int = 0
    memory_allocated_mib: int = 0
    gpus: tuple[NodeGpus, ...] = ()
    features: tuple[str, ...] = ()

    @property
    def schedulable(self) -> bool:
        """Whether new work may start here: not down, drained, failing, in maintenance or powered off."""
        words = set(self.state.split("+"))
        return not words & _UNSCHEDULABLE


_UNSCHEDULABLE = frozenset(
    {"DOWN", "DRAIN", "DRAINED", "DRAINING", "FAIL", "FAILING", "MAINT", "NOT_RESPONDING", "FUTURE",
     "POWERED_DOWN", "POWER_DOWN", "POWERING_DOWN", "REBOOT_ISSUED", "REBOOT_REQUESTED", "UNKNOWN", "INVALID"}
)  # fmt: skip


class Partition(msgspec.Struct, frozen=True, kw_only=True):
    """A partition (``scontrol show partition``, slurmrestd ``/partitions``)."""

    name: str
    default: bool = False
    state: str = "UP"
    nodes: tuple[str, ...] = ()
    max_time_minutes: int | None = None
    """None: unlimited."""
    total_cpus: int = 0
