"""The API's view of a cluster snapshot: free counts only on nodes that take work, staleness."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.cluster.models import ClusterSnapshot
from gateway.cluster.service import view
from slurm.records import Node, NodeGpus, Partition

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
STALE = timedelta(seconds=15)


def _row(updated: datetime | None, error: str | None = None) -> ClusterSnapshot:
    return ClusterSnapshot(singleton=1, cluster="c", updated_at=updated, checked_at=NOW, error=error)


NODES = [
    Node(name="n1", state="MIXED", cpus=4, cpus_allocated=1, gpus=(NodeGpus(type="a100", total=2, allocated=1),)),
    Node(name="n2", state="IDLE+DRAIN", cpus=4, gpus=(NodeGpus(type="a100", total=2),)),
    Node(name="n3", state="IDLE", cpus=8, gpus=(NodeGpus(type="h100", total=4), NodeGpus(type=None, total=1))),
]
PARTITIONS = [
    Partition(name="gpu", default=True, nodes=("n1", "n2"), max_time_minutes=60, total_cpus=8),
    Partition(name="big", nodes=("n3", "gone")),
]


def test_free_counts_leave_out_drained_nodes() -> None:
    out = view(_row(NOW), NODES, PARTITIONS, now=NOW, stale_after=STALE)
    assert [(g.type, g.total, g.allocated, g.free) for g in out.gpu_types] == [("a100", 4, 1, 1), ("h100", 4, 0, 4)]
    gpu, big = out.partitions
    assert (gpu.gpu_types, gpu.total_gpus, gpu.free_gpus, gpu.total_cpus, gpu.free_cpus) == (["a100"], 4, 1, 8, 3)
    assert (big.gpu_types, big.total_gpus, big.free_gpus, big.total_cpus, big.free_cpus) == (["h100"], 5, 5, 8, 8)
    assert [n.name for n in out.nodes] == ["n1", "n2", "n3"] and not out.stale


def test_staleness() -> None:
    assert view(None, [], [], now=NOW, stale_after=STALE).stale
    assert view(_row(None), [], [], now=NOW, stale_after=STALE).stale
    assert view(_row(NOW - STALE - timedelta(seconds=1)), [], [], now=NOW, stale_after=STALE).stale
    failed = view(_row(NOW, error="Unable to contact slurm controller"), NODES, [], now=NOW, stale_after=STALE)
    assert failed.stale and failed.error and failed.gpu_types  # the last good read is kept
