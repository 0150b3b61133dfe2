"""GET /api/v1/cluster (the shape the CLI's ``remotegpu cluster`` reads: /work/brief/cluster-api.md)."""

from __future__ import annotations

from datetime import datetime

import msgspec


class GpuTypeOut(msgspec.Struct, kw_only=True):
    type: str
    total: int
    allocated: int
    free: int
    """Not allocated, on nodes that take work (not down, drained, ...)."""


class PartitionOut(msgspec.Struct, kw_only=True):
    name: str
    default: bool
    state: str
    nodes: list[str]
    max_time_minutes: int | None
    """None: no limit."""
    gpu_types: list[str]
    total_gpus: int
    free_gpus: int
    total_cpus: int
    free_cpus: int


class NodeGpusOut(msgspec.Struct, kw_only=True):
    type: str | None
    """None: GPUs configured without a type (``gpu:2``)."""
    total: int
    allocated: int


class NodeOut(msgspec.Struct, kw_only=True):
    name: str
    state: str
    """As scontrol writes it: ``IDLE``, ``MIXED``, ``ALLOCATED``, ``IDLE+DRAIN``, ``DOWN+NOT_RESPONDING``..."""
    partitions: list[str]
    reason: str | None
    cpus: int
    cpus_allocated: int
    memory_mib: int
    memory_allocated_mib: int
    gpus: list[NodeGpusOut]
    features: list[str]


class ClusterOut(msgspec.Struct, kw_only=True):
    cluster: str | None
    updated_at: datetime | None
    """When the poller last read the nodes; null if never."""
    stale: bool
    """Older than three poll intervals, or the last read failed."""
    error: str | None
    """Why the last read failed (null when it did not)."""
    gpu_types: list[GpuTypeOut]
    partitions: list[PartitionOut]
    nodes: list[NodeOut]
