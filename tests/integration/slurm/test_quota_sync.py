"""Quotas against the real cluster: GPU types checked against the poller's snapshot, partial updates, and an
account sync that one broken workspace cannot stop."""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from gateway.app import create_app
from gateway.cluster.service import ClusterReader
from gateway.config import Settings
from gateway.db.session import Database
from gateway.jobs.poller import Poller
from gateway.workspaces.slurm_sync import AccountSync
from slurm.cli import CliSlurmClient
from slurm.client import SlurmClient
from tests.conftest import UserFactory, asgi_client
from tests.integration.slurm.conftest import BOTH_BACKENDS, Cluster, PosixUserFactory

WS = "/api/v1/workspaces"


@pytest.fixture
def two_accounts(slurm_cluster: Cluster) -> Iterator[list[str]]:
    names = [f"t{uuid.uuid4().hex[:10]}" for _ in range(2)]
    yield names
    for name in names:
        with contextlib.suppress(subprocess.CalledProcessError):  # never made
            slurm_cluster.run("sacctmgr", "-i", "remove", "account", name)


async def test_one_broken_quota_leaves_the_others_syncing(
    settings: Settings,
    clean_database: Database,
    cli_client: CliSlurmClient,
    make_user: UserFactory,
    posix_user: PosixUserFactory,
    two_accounts: list[str],
) -> None:
    owner = posix_user()
    owner_headers = await make_user(owner)
    root = await make_user("root", admin=True)
    sync = AccountSync(clean_database, cli_client)
    async with asgi_client(create_app(settings, database=clean_database, slurm=cli_client)) as api:
        for slug, account in zip(("broken", "fine"), two_accounts, strict=True):
            r = await api.post(
                WS, json={"slug": slug, "name": slug, "slurm_account": account, "owner": owner}, headers=root
            )
            assert r.status_code == 201, r.text
        # no cluster snapshot yet: any well-formed type is taken, and Slurm (which tracks no h100) refuses it
        r = await api.put(f"{WS}/broken/quota", json={"gpus": 2, "gpus_by_type": {"h100": 1}}, headers=owner_headers)
        assert r.status_code == 200, r.text
        assert r.json()["slurm_sync"]["state"] == "pending"
        r = await api.put(f"{WS}/fine/quota", json={"gpus_by_type": {"a100": 1}, "cpus": 3}, headers=owner_headers)
        assert r.status_code == 200, r.text

        result = await sync.reconcile()
        assert result.failed == ["broken"]
        assocs = {(a.account, a.user): a for a in await cli_client.associations()}
        assert assocs[(two_accounts[1], None)].grp_tres == {"cpu": 3, "gres/gpu:a100": 1}
        assert (two_accounts[1], owner) in assocs  # the member's association, after the broken one failed

        broken = (await api.get(f"{WS}/broken", headers=owner_headers)).json()["slurm_sync"]
        assert broken["state"] == "error" and "h100" in broken["error"] and broken["failures"] == 1
        assert (await api.get(f"{WS}/fine", headers=owner_headers)).json()["slurm_sync"]["state"] == "ok"

        assert (await sync.reconcile()).failed == ["broken"]  # tried again next cycle
        quota = (await api.get(f"{WS}/broken/quota", headers=owner_headers)).json()
        assert quota["slurm_sync"]["failures"] == 2

        # fixed with a partial update: the h100 limit lifted, the total kept
        r = await api.patch(f"{WS}/broken/quota", json={"gpus_by_type": {"h100": None}}, headers=owner_headers)
        assert r.status_code == 200, r.text
        assert (r.json()["gpus"], r.json()["gpus_by_type"]) == (2, {})
        assert (await sync.reconcile()).failed == []
        assocs = {(a.account, a.user): a for a in await cli_client.associations(two_accounts[0])}
        assert assocs[(two_accounts[0], None)].grp_tres == {"gres/gpu": 2}
        quota = (await api.get(f"{WS}/broken/quota", headers=owner_headers)).json()
        assert quota["slurm_sync"] == {**quota["slurm_sync"], "state": "ok", "error": None, "failures": 0}


@BOTH_BACKENDS
async def test_cluster_snapshot_and_gpu_types_from_it(
    settings: Settings,
    clean_database: Database,
    slurm_client: SlurmClient,
    make_user: UserFactory,
    posix_user: PosixUserFactory,
    slurm_account: str,
) -> None:
    owner = posix_user()
    owner_headers = await make_user(owner)
    root = await make_user("root", admin=True)
    async with asgi_client(create_app(settings, database=clean_database, slurm=slurm_client)) as api:
        empty = (await api.get("/api/v1/cluster", headers=owner_headers)).json()
        assert (empty["updated_at"], empty["stale"], empty["nodes"]) == (None, True, [])

        await Poller(clean_database, slurm_client).poll_once()  # its snapshot step
        seen = (await api.get("/api/v1/cluster", headers=owner_headers)).json()
        assert seen["cluster"] == "remotegpu" and not seen["stale"] and seen["error"] is None
        assert [(g["type"], g["total"]) for g in seen["gpu_types"]] == [("a100", 4)]
        gpu = next(p for p in seen["partitions"] if p["name"] == "gpu")
        assert (gpu["default"], gpu["state"], gpu["nodes"], gpu["max_time_minutes"]) == (
            True,
            "UP",
            ["n1", "n2"],
            7 * 24 * 60,
        )
        assert (gpu["gpu_types"], gpu["total_gpus"], gpu["total_cpus"]) == (["a100"], 4, 8)
        assert {n["name"] for n in seen["nodes"]} == {"n1", "n2"}
        assert all(n["gpus"][0]["type"] == "a100" and n["gpus"][0]["total"] == 2 for n in seen["nodes"])

        r = await api.post(
            WS, json={"slug": "lab", "name": "Lab", "slurm_account": slurm_account, "owner": owner}, headers=root
        )
        assert r.status_code == 201, r.text
        r = await api.put(f"{WS}/lab/quota", json={"gpus_by_type": {"h100": 1}}, headers=owner_headers)
        assert r.status_code == 400, r.text
        assert r.json()["errors"][0]["field"] == "gpus_by_type.h100" and "a100" in r.json()["detail"]
        r = await api.patch(f"{WS}/lab/quota", json={"gpus_by_type": {"a100": 2}}, headers=owner_headers)
        assert r.status_code == 200 and r.json()["gpus_by_type"] == {"a100": 2}, r.text
        r = await api.patch(f"{WS}/lab/quota", json={"cpus": 4}, headers=owner_headers)
        assert (r.json()["cpus"], r.json()["gpus_by_type"]) == (4, {"a100": 2})  # the rest kept


async def test_a_failed_read_keeps_the_last_snapshot_marked_stale(
    settings: Settings, clean_database: Database, cli_client: CliSlurmClient, make_user: UserFactory
) -> None:
    headers = await make_user("reader")
    assert await ClusterReader(clean_database, cli_client).refresh()
    unreachable = CliSlurmClient(slurm_conf="/nonexistent/slurm.conf", timeout=2)  # sinfo hangs looking for one
    assert not await ClusterReader(clean_database, unreachable).refresh()
    async with asgi_client(create_app(settings, database=clean_database, slurm=cli_client)) as api:
        seen = (await api.get("/api/v1/cluster", headers=headers)).json()
    assert seen["stale"] and seen["error"]
    assert [g["type"] for g in seen["gpu_types"]] == ["a100"] and len(seen["nodes"]) == 2  # the last good read
