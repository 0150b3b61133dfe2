"""Keep Slurm's accounts in step with the workspaces: a workspace is an account, each member an association,
the quota the account's GrpTRES. Reconciled from the database (the intent) in one pass, so it also repairs
drift and survives crashes; the worker runs it every cycle.

Each workspace is reconciled on its own: one Slurm refuses (a GrpTRES naming a TRES it does not track, an
account sacctmgr fails on) is recorded as that workspace's ``slurm_sync`` (state ``error``, Slurm's words, failed
attempts in a row), logged (``workspace_sync_failed``) and counted (``remotegpu_account_sync_failures_total``);
the others still sync, and it is tried again on the next cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from functools import partial

import msgspec
import structlog
from prometheus_client import Counter, Gauge
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.accounts.models import User
from gateway.db.base import utcnow
from gateway.db.session import Database
from gateway.workspaces.models import Member, Quota, SlurmSync, SyncState, Workspace, WorkspaceStatus
from slurm.client import SlurmClient
from slurm.errors import SlurmError, SlurmUnavailable
from slurm.tres import format_tres

log = structlog.get_logger("gateway.slurm_sync")
SYNC_FAILURES = Counter("remotegpu_account_sync_failures_total", "Workspaces whose reconciliation Slurm refused")
HEARTBEAT = timedelta(seconds=60)
"""An unchanged sync status is written again (its ``at``) at most this often."""
FAILING = Gauge("remotegpu_account_sync_failing_workspaces", "Workspaces whose last reconciliation failed")
MANAGED_TRES_PREFIXES = ("cpu", "mem", "gres/gpu")


BLOCKED = {"cpu": 0}
"""The GrpTRES of a workspace that is not active (overdue, suspended): no job of its account starts, whoever
submits it and however (pending jobs wait with reason ``AssocGrpCpuLimit``); running ones go on."""


def grp_tres_for(quota: Quota | None, *, blocked: bool = False) -> dict[str, int]:
    """The GrpTRES a quota means (memory in MiB); limits not set are absent. ``blocked``: nothing may start."""
    if quota is None:
        return dict(BLOCKED) if blocked else {}
    tres: dict[str, int] = {}
    if quota.gpus is not None:
        tres["gres/gpu"] = quota.gpus
    for gpu_type, count in quota.gpus_by_type.items():
        tres[f"gres/gpu:{gpu_type}"] = int(count)
    if quota.cpus is not None:
        tres["cpu"] = quota.cpus
    if quota.memory_bytes is not None:
        tres["mem"] = quota.memory_bytes // (1024 * 1024)
    return {**tres, **BLOCKED} if blocked else tres


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
    failed: list[str] = msgspec.field(default_factory=list)
    """Slugs of the workspaces Slurm refused this time."""


class AccountSync:
    def __init__(self, database: Database, slurm: SlurmClient) -> None:
        self.database = database
        self.slurm = slurm

    async def reconcile(self) -> SyncResult:
        """One pass over every workspace. Raises SlurmError only when Slurm cannot be read at all."""
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
            statuses = {
                s.workspace_id: (s.state, s.error, s.failures) for s in await session.scalars(select(SlurmSync))
            }
        wanted_users: dict[int, set[str]] = {}
        for ws_id, posix_name in members:
            wanted_users.setdefault(ws_id, set()).add(posix_name)
        existing = await self.slurm.associations()  # one call for the whole cluster
        accounts = {a.account: a for a in existing if a.user is None}
        users: dict[str, set[str]] = {}
        for assoc in existing:
            if assoc.user:
                users.setdefault(assoc.account, set()).add(assoc.user)
        outcome: dict[int, tuple[SyncState, str | None, int]] = {}
        for ws in workspaces:
            account = ws.slurm_account
            _, _, failures = statuses.get(ws.id, (SyncState.PENDING, None, 0))
            try:
                await self._reconcile_one(
                    ws, accounts, users, quotas.get(ws.id), wanted_users.get(ws.id, set()), result
                )
            except SlurmUnavailable:
                raise  # the controller or slurmdbd away: nothing is known about anyone; the worker logs it
            except SlurmError as exc:
                SYNC_FAILURES.inc()
                result.failed.append(ws.slug)
                outcome[ws.id] = (SyncState.ERROR, exc.message, failures + 1)
                log.warning(
                    "workspace_sync_failed",
                    workspace=ws.slug,
                    account=account,
                    error=exc.message,
                    failures=failures + 1,
                )
                continue
            outcome[ws.id] = (SyncState.OK, None, 0)
        await self.database.run(partial(_record_outcome, outcome, statuses))
        FAILING.set(len(result.failed))
        if result != SyncResult():
            log.info("slurm_accounts_reconciled", **msgspec.structs.asdict(result))
        return result

    async def _reconcile_one(
        self,
        ws: Workspace,
        accounts: Mapping[str, object],
        users: Mapping[str, set[str]],
        quota: Quota | None,
        want: set[str],
        result: SyncResult,
    ) -> None:
        account = ws.slurm_account
        if account not in accounts:
            await self.slurm.ensure_account(account, description=f"RemoteGPU workspace {ws.slug}")
            result.accounts_created += 1
        current = getattr(accounts.get(account), "grp_tres", {})
        changes = limit_changes(current, grp_tres_for(quota, blocked=ws.status != WorkspaceStatus.ACTIVE))
        if changes:
            try:
                await self.slurm.set_account_limits(account, changes)
            except SlurmUnavailable:
                raise
            except SlurmError as exc:  # say what was refused: sacctmgr's last words rarely do
                raise SlurmError(f"GrpTRES {format_tres(changes)} refused: {exc.message}", command=exc.command) from exc
            result.limits_changed += 1
        have = users.get(account, set())
        for user in sorted(want - have):
            await self.slurm.ensure_association(user, account)
            result.associations_added += 1
        for user in sorted(have - want):
            await self.slurm.remove_association(user, account)
            result.associations_removed += 1


def _record_outcome(
    outcome: Mapping[int, tuple[SyncState, str | None, int]],
    before: Mapping[int, tuple[SyncState, str | None, int]],
    session: Session,
) -> None:
    """Unit of work: each workspace's sync status, written where it changed, and at least every HEARTBEAT (so
    ``at`` says the worker still confirms it). A quota change makes it ``pending`` until a reconciliation that
    began after the change ends."""
    now = utcnow()
    for ws_id, (state, error, failures) in outcome.items():
        row = session.get(SlurmSync, ws_id)
        if row is None:
            session.add(SlurmSync(workspace_id=ws_id, state=state, error=error, failures=failures, at=now))
            continue
        if row.state == SyncState.PENDING and state == SyncState.OK and before.get(ws_id, (None,))[0] != row.state:
            continue  # the quota changed while Slurm was being asked: the next pass confirms it
        same = (row.state, row.error, row.failures) == (state, error, failures)
        if same and row.at is not None and now - row.at < HEARTBEAT:
            continue  # nothing new: no write per workspace and cycle
        row.state, row.error, row.failures, row.at = state, error, failures, now
