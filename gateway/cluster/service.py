"""The cluster snapshot: the poller reads nodes and partitions (two Slurm calls) each cycle and stores them in
one row; ``GET /api/v1/cluster`` and quota validation read that row, never Slurm.

Free counts are derived when read (:func:`view`): a GPU or CPU is free when it is not allocated and its node
takes work (not down, drained, failing, ...: :attr:`slurm.records.Node.schedulable`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import partial

import msgspec
import structlog
from prometheus_client import Counter, Gauge
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from gateway.cluster.models import ClusterSnapshot
from gateway.cluster.schemas import ClusterOut, GpuTypeOut, NodeGpusOut, NodeOut, PartitionOut
from gateway.db.base import utcnow
from gateway.db.session import Database
from slurm.client import SlurmClient
from slurm.errors import SlurmError
from slurm.records import Node, Partition

log = structlog.get_logger("gateway.cluster")
READ_FAILURES = Counter("remotegpu_cluster_snapshot_failures_total", "Cluster snapshots Slurm did not answer")
SNAPSHOT_AGE = Gauge("remotegpu_cluster_snapshot_updated", "Unix time of the last cluster snapshot")
STALE_AFTER_INTERVALS = 3
"""A snapshot older than this many poll intervals is reported stale."""


class ClusterReader:
    """The poller's snapshot step (gateway.jobs.poller): read the cluster, store it; a failure is recorded,
    never raised (the jobs' poll goes on, and the last good snapshot stays, marked stale)."""

    def __init__(self, database: Database, slurm: SlurmClient) -> None:
        self.database = database
        self.slurm = slurm
        self._name: str | None = None

    async def refresh(self) -> bool:
        asked = utcnow()
        if self._name is None:
            try:  # asked once (slurmrestd asks slurmdbd): its absence must not cost the nodes
                self._name = await self.slurm.cluster_name()
            except SlurmError as exc:
                log.warning("cluster_name_unknown", error=exc.message)
        try:
            nodes = await self.slurm.nodes()
            partitions = await self.slurm.partitions()
        except SlurmError as exc:
            READ_FAILURES.inc()
            log.warning("cluster_snapshot_failed", error=exc.message)
            await self.database.run(partial(_store, asked, self._name, None, exc.message))
            return False
        await self.database.run(partial(_store, asked, self._name, (nodes, partitions), None))
        SNAPSHOT_AGE.set(asked.timestamp())
        return True


def _store(
    at: datetime,
    name: str | None,
    read: tuple[Sequence[Node], Sequence[Partition]] | None,
    error: str | None,
    session: Session,
) -> None:
    """Unit of work: the snapshot row updated with what was read (or only the failure, keeping the last read)."""
    row = session.get(ClusterSnapshot, 1)
    if row is None:
        row = ClusterSnapshot(singleton=1, nodes=[], partitions=[], checked_at=at)
        session.add(row)
    row.cluster, row.checked_at, row.error = name, at, error
    if read is not None:
        nodes, partitions = read
        row.nodes = msgspec.to_builtins(list(nodes))
        row.partitions = msgspec.to_builtins(list(partitions))
        row.updated_at = at
    try:
        session.flush()
    except IntegrityError:  # another poller made the row first (a start-up recovery beside a worker): next time
        session.rollback()


async def load(session: AsyncSession) -> tuple[ClusterSnapshot | None, list[Node], list[Partition]]:
    row = await session.scalar(select(ClusterSnapshot).where(ClusterSnapshot.singleton == 1))
    if row is None:
        return None, [], []
    return row, msgspec.convert(row.nodes, list[Node]), msgspec.convert(row.partitions, list[Partition])


async def gpu_types(session: AsyncSession) -> set[str] | None:
    """The GPU types the cluster has, from the last snapshot that was read; None when none ever was."""
    row, nodes, _ = await load(session)
    if row is None or row.updated_at is None:
        return None
    return {g.type for node in nodes for g in node.gpus if g.type is not None}


async def cluster(session: AsyncSession, poll_interval: float) -> ClusterOut:
    row, nodes, partitions = await load(session)
    return view(
        row, nodes, partitions, now=utcnow(), stale_after=timedelta(seconds=STALE_AFTER_INTERVALS * poll_interval)
    )


def _free(node: Node, total: int, allocated: int) -> int:
    return max(0, total - allocated) if node.schedulable else 0


def view(
    row: ClusterSnapshot | None,
    nodes: Sequence[Node],
    partitions: Sequence[Partition],
    *,
    now: datetime,
    stale_after: timedelta,
) -> ClusterOut:
    """The API's view of a snapshot: GPU types and partitions with totals and free counts, and the nodes."""
    updated = row.updated_at if row is not None else None
    stale = updated is None or (row is not None and row.error is not None) or now - updated > stale_after
    by_type: dict[str, list[int]] = {}
    for node in nodes:
        for g in node.gpus:
            if g.type is not None:
                totals = by_type.setdefault(g.type, [0, 0, 0])
                totals[0] += g.total
                totals[1] += g.allocated
                totals[2] += _free(node, g.total, g.allocated)
    by_name = {n.name: n for n in nodes}
    out_partitions = []
    for p in partitions:
        members = [by_name[name] for name in p.nodes if name in by_name]
        gpus = [(n, g) for n in members for g in n.gpus]
        out_partitions.append(
            PartitionOut(
                name=p.name,
                default=p.default,
                state=p.state,
                nodes=list(p.nodes),
                max_time_minutes=p.max_time_minutes,
                gpu_types=sorted({g.type for _, g in gpus if g.type is not None}),
                total_gpus=sum(g.total for _, g in gpus),
                free_gpus=sum(_free(n, g.total, g.allocated) for n, g in gpus),
                total_cpus=p.total_cpus or sum(n.cpus for n in members),
                free_cpus=sum(_free(n, n.cpus, n.cpus_allocated) for n in members),
            )
        )
    return ClusterOut(
        cluster=row.cluster if row is not None else None,
        updated_at=updated,
        stale=stale,
        error=row.error if row is not None else None,
        gpu_types=[GpuTypeOut(type=t, total=v[0], allocated=v[1], free=v[2]) for t, v in sorted(by_type.items())],
        partitions=out_partitions,
        nodes=[
            NodeOut(
                name=n.name,
                state=n.state,
                partitions=list(n.partitions),
                reason=n.reason,
                cpus=n.cpus,
                cpus_allocated=n.cpus_allocated,
                memory_mib=n.memory_mib,
                memory_allocated_mib=n.memory_allocated_mib,
                gpus=[NodeGpusOut(type=g.type, total=g.total, allocated=g.allocated) for g in n.gpus],
                features=list(n.features),
            )
            for n in nodes
        ],
    )
