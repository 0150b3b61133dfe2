from __future__ import annotations

from gateway.workspaces.models import Quota
from gateway.workspaces.slurm_sync import grp_tres_for, limit_changes


def test_quota_becomes_grptres() -> None:
    quota = Quota(
        workspace_id=1,
        gpus=8,
        gpus_by_type={"a100": 4},
        cpus=64,
        memory_bytes=512 * 2**30,
        storage_bytes=10**12,
        concurrent_environments=3,
    )
    assert grp_tres_for(quota) == {"gres/gpu": 8, "gres/gpu:a100": 4, "cpu": 64, "mem": 512 * 1024}
    assert grp_tres_for(None) == {}


def test_only_differences_are_set_and_dropped_limits_are_lifted() -> None:
    current = {"gres/gpu": 8, "cpu": 64, "node": 4}
    assert limit_changes(current, {"gres/gpu": 8, "cpu": 32}) == {"cpu": 32}
    assert limit_changes(current, {}) == {"gres/gpu": None, "cpu": None}  # node is not ours to lift
    assert limit_changes(current, {"gres/gpu": 8, "cpu": 64}) == {}


def test_quota_patch_merges() -> None:
    from gateway.workspaces.schemas import QuotaIn, QuotaPatch

    current = QuotaIn(gpus=8, gpus_by_type={"a100": 4, "h100": 2}, cpus=64)
    patched = QuotaPatch(gpus_by_type={"h100": None, "v100": 1}, cpus=None).applied_to(current)
    assert patched == QuotaIn(gpus=8, gpus_by_type={"a100": 4, "v100": 1}, cpus=None)
    assert QuotaPatch().applied_to(current) == current
