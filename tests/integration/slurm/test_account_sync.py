"""Workspaces, members and quotas reach Slurm as accounts, associations and GrpTRES, and follow changes."""

from __future__ import annotations

from gateway.app import create_app
from gateway.config import Settings
from gateway.db.session import Database
from gateway.workspaces.slurm_sync import AccountSync
from slurm.cli import CliSlurmClient
from tests.conftest import UserFactory, asgi_client
from tests.integration.slurm.conftest import PosixUserFactory


async def test_reconcile_follows_workspace_changes(
    settings: Settings,
    clean_database: Database,
    cli_client: CliSlurmClient,
    make_user: UserFactory,
    posix_user: PosixUserFactory,
    slurm_account: str,
) -> None:
    sync = AccountSync(clean_database, cli_client)
    names = [posix_user(), posix_user()]
    owner = await make_user(names[0])
    await make_user(names[1])
    async with asgi_client(create_app(settings, database=clean_database, slurm=cli_client)) as api:
        root = await make_user("root", admin=True)
        await api.post(
            "/api/v1/workspaces",
            json={"slug": "synced", "name": "S", "slurm_account": slurm_account, "owner": names[0]},
            headers=root,
        )
        await api.post("/api/v1/workspaces/synced/members", json={"username": names[1]}, headers=owner)
        await api.put(
            "/api/v1/workspaces/synced/quota", json={"gpus": 4, "gpus_by_type": {"a100": 2}, "cpus": 16}, headers=owner
        )
        first = await sync.reconcile()
        assert first.associations_added == 2 and first.limits_changed == 1
        assocs = {a.user: a for a in await cli_client.associations(slurm_account)}
        assert assocs[None].grp_tres == {"cpu": 16, "gres/gpu": 2 * 2, "gres/gpu:a100": 2}
        assert set(assocs) == {None, *names}

        assert (await sync.reconcile()).associations_added == 0  # nothing to do twice

        await api.delete(f"/api/v1/workspaces/synced/members/{names[1]}", headers=owner)
        await api.put("/api/v1/workspaces/synced/quota", json={"gpus": 2}, headers=owner)
        second = await sync.reconcile()
        assert second.associations_removed == 1, second
        assocs = {a.user: a for a in await cli_client.associations(slurm_account)}
        assert set(assocs) == {None, names[0]}
        assert assocs[None].grp_tres == {"gres/gpu": 2}
