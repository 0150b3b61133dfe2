"""Keep Slurm's accounts in step with the workspaces: a workspace is an account, each member an association,
the quota the account's GrpTRES. Reconciled from the database (the intent) in one pass, so it also repairs
drift and survives crashes; the worker runs it every cycle.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec
import structlog
from sqlalchemy import select

from gateway.db.session import Database
from gateway.users.models import User
from gateway.workspaces.models import Member, Quota, Workspace
from slurm.client import SlurmClient

log = structlog.get_logger("gateway.slurm_sync")
MANAGED_TRES_PREFIXES = ("cpu", "mem", "gres/gpu")


def grp_tres_for(quota: Quota | None) -> dict[str, int]:
    """The GrpTRES a quota means (memory in MiB); limits not set are absent."""
    if quota is None:
        return {}
    tres: dict[str, int] = {}
    if quota.gpus is not None:
        tres["gres/gpu"] = quota.gpus
    for gpu_type, count in quota.gpus_by_type.items():
        tres[f"gres/gpu:{gpu_type}"] = int(count)
    if quota.cpus is not None:
        tres["cpu"] = quota.cpus
    if quota.memory_bytes is not None:
        tres["mem"] = quota.memory_bytes // (1024 * 1024)
    return tres


def limit_changes(current: Mapping[str, int], desired: Mapping[str, int]) -> dict[str, int | None]:
    """What to set so ``current`` becomes ``desired``: None lifts a limit we no longer want."""
    changes: dict[str, int | None] = {k: v for k, v in desired.items() if current.get(k) != v}
    for key in current:
        if key not in desired and key.startswith(MANAGED_TRES_PREFIXES):
            changes[key] = None
    return changes


class SyncResult(msgspec.Struct):
    accounts_created: int = 0
    associations_added: int = 0
    associations_removed: int = 0
    limits_changed: int = 0


class AccountSync:
    def __init__(self, database: Database, slurm: SlurmClient) -> None:
        self.database = database
        self.slurm = slurm

    async def reconcile(self) -> SyncResult:
        result = SyncResult()
        async with self.database.session(write=False) as session:
            workspaces = list(await session.scalars(select(Workspace).where(Workspace.deleted_at.is_(None))))
            quotas = {q.workspace_id: q for q in await session.scalars(select(Quota))}
            members = (
                await session.execute(
                    select(Member.workspace_id, User.posix_name)
                    .join(User, User.id == Member.user_id)
                    .where(Member.deleted_at.is_(None), User.deleted_at.is_(None))
                )
            ).all()
        wanted_users: dict[int, set[str]] = {}
        for ws_id, posix_name in members:
            wanted_users.setdefault(ws_id, set()).add(posix_name)
        existing = await self.slurm.associations()  # one call for the whole cluster
        accounts = {a.account: a for a in existing if a.user is None}
        users: dict[str, set[str]] = {}
        for assoc in existing:
            if assoc.user:
                users.setdefault(assoc.account, set()).add(assoc.user)
        for ws in workspaces:
            account = ws.slurm_account
            if account not in accounts:
                await self.slurm.ensure_account(account, description=f"RemoteGPU workspace {ws.slug}")
                result.accounts_created += 1
            current = accounts[account].grp_tres if account in accounts else {}
            changes = limit_changes(current, grp_tres_for(quotas.get(ws.id)))
            if changes:
                await self.slurm.set_account_limits(account, changes)
                result.limits_changed += 1
            want, have = wanted_users.get(ws.id, set()), users.get(account, set())
            for user in sorted(want - have):
                await self.slurm.ensure_association(user, account)
                result.associations_added += 1
            for user in sorted(have - want):
                await self.slurm.remove_association(user, account)
                result.associations_removed += 1
        if result != SyncResult():
            log.info("slurm_accounts_reconciled", **msgspec.structs.asdict(result))
        return result
