"""Workspaces, their members and roles, and quotas. Who may do what: gateway.workspaces.access."""

from __future__ import annotations

from msgspec import UNSET
from sqlalchemy import Select, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.accounts.models import User
from gateway.actor import Actor
from gateway.audit.writer import record
from gateway.billing.models import Balance
from gateway.cluster import service as cluster_service
from gateway.config import Settings
from gateway.db.base import utcnow
from gateway.db.paging import count_rows, page_of
from gateway.errors import Conflict, Forbidden, InvalidInput, NotFound
from gateway.schemas import Pagination
from gateway.workspaces.access import WorkspaceAccess
from gateway.workspaces.models import Member, Quota, Role, SlurmSync, SyncState, Workspace, WorkspaceStatus
from gateway.workspaces.schemas import MemberCreate, QuotaIn, QuotaPatch, WorkspaceCreate, WorkspaceUpdate


def _live_workspaces() -> Select[Workspace]:
    return select(Workspace).where(Workspace.deleted_at.is_(None))


async def _active_user(session: AsyncSession, name: str, field: str) -> User:
    user = await session.scalar(
        select(User).where(User.name == name, User.deleted_at.is_(None), User.disabled.is_(False))
    )
    if user is None:
        raise NotFound(f"user {name!r} not found", field=field)
    return user


async def create_workspace(
    session: AsyncSession, actor: Actor, settings: Settings, data: WorkspaceCreate
) -> WorkspaceAccess:
    if settings.workspace_creation == "admin" and not actor.is_admin:
        raise Forbidden("only platform administrators may create workspaces on this site")
    for field in ("slurm_account", "owner"):
        if getattr(data, field) is not None and not actor.is_admin:
            raise Forbidden(f"only platform administrators may set {field!r}", field=field)
    if data.owner is not None:
        owner = await _active_user(session, data.owner, "owner")
    elif actor.user_id is not None:
        owner = await session.get_one(User, actor.user_id)
    else:
        raise InvalidInput("an owner is required when no user is acting", field="owner")
    slurm_account = data.slurm_account or data.slug
    # One query, one snapshot: losing a race for a slug is reported as a slug clash, never as its account's.
    clashes = (
        await session.scalars(
            _live_workspaces().where(or_(Workspace.slug == data.slug, Workspace.slurm_account == slurm_account))
        )
    ).all()
    if any(w.slug == data.slug for w in clashes):
        raise Conflict(f"workspace {data.slug!r} already exists", field="slug")
    if clashes:
        raise Conflict(f"Slurm account {slurm_account!r} is already used by another workspace", field="slurm_account")
    ws = Workspace(
        slug=data.slug,
        name=data.name,
        description=data.description,
        slurm_account=slurm_account,
        currency=data.currency or settings.default_currency,
        status=WorkspaceStatus.ACTIVE,
    )
    session.add(ws)
    try:
        await session.flush()
    except IntegrityError as exc:  # a concurrent request created the same slug between check and insert
        await session.rollback()
        raise Conflict(f"workspace {data.slug!r} already exists", field="slug") from exc
    session.add(Member(workspace_id=ws.id, user_id=owner.id, role=Role.OWNER))
    record(
        session,
        actor,
        "workspace.create",
        target_type="workspace",
        target=ws.slug,
        workspace_id=ws.id,
        details={"owner": owner.name, "slurm_account": slurm_account, "currency": ws.currency},
    )
    await session.commit()
    return WorkspaceAccess(workspace=ws, role=Role.OWNER if owner.id == actor.user_id else None, actor=actor)


async def list_workspaces(
    session: AsyncSession,
    actor: Actor,
    page: Pagination,
    *,
    q: str | None = None,
    status: WorkspaceStatus | None = None,
    mine: bool = False,
) -> tuple[list[tuple[Workspace, Role | None]], int | None]:
    """Members see their workspaces; platform admins see all of them unless ``mine``."""
    membership = (Member.workspace_id == Workspace.id) & (Member.user_id == actor.user_id) & Member.deleted_at.is_(None)
    query = select(Workspace, Member.role).where(Workspace.deleted_at.is_(None))
    # Admins listing everything see workspaces they are not in (role None); everyone else only their own.
    query = query.outerjoin(Member, membership) if actor.is_admin and not mine else query.join(Member, membership)
    if q:
        pattern = f"%{q}%"
        query = query.where(or_(Workspace.slug.ilike(pattern), Workspace.name.ilike(pattern)))
    if status is not None:
        query = query.where(Workspace.status == status)
    total = await count_rows(session, query)
    rows = await session.execute(page_of(query.order_by(Workspace.slug), page))
    return [(ws, role) for ws, role in rows], total


async def _check_currency_change(session: AsyncSession, ws: Workspace) -> None:
    """A workspace's currency is that of its ledger: it changes only before the first entry."""
    if await session.scalar(select(Balance.entries).where(Balance.workspace_id == ws.id)):
        raise Conflict(
            "the workspace's ledger is kept in its currency: it cannot change once money moved", field="currency"
        )


async def update_workspace(session: AsyncSession, access: WorkspaceAccess, data: WorkspaceUpdate) -> Workspace:
    access.require(Role.OWNER)
    if data.status is not UNSET and not access.actor.is_admin:
        raise Forbidden("only platform administrators may change a workspace's status", field="status")
    ws = access.workspace
    changes: dict[str, object] = {}
    if data.currency is not UNSET and data.currency != ws.currency:
        await _check_currency_change(session, ws)
    for field in ("name", "description", "currency", "status"):
        value = getattr(data, field)
        if value is not UNSET and value != getattr(ws, field):
            setattr(ws, field, value)
            changes[field] = value
    if "status" in changes:
        ws.status_reason = None if ws.status == WorkspaceStatus.ACTIVE else "admin"  # money does not lift it
    if changes:
        record(
            session,
            access.actor,
            "workspace.update",
            target_type="workspace",
            target=ws.slug,
            workspace_id=ws.id,
            details={k: str(v) for k, v in changes.items()},
        )
        await session.commit()
    return ws


async def delete_workspace(session: AsyncSession, access: WorkspaceAccess) -> None:
    access.require(Role.OWNER)
    ws = access.workspace
    now = utcnow()
    ws.deleted_at = now
    for member in await session.scalars(
        select(Member).where(Member.workspace_id == ws.id, Member.deleted_at.is_(None))
    ):
        member.deleted_at = now
    record(session, access.actor, "workspace.delete", target_type="workspace", target=ws.slug, workspace_id=ws.id)
    await session.commit()


# --- members -------------------------------------------------------------------------------------------


async def list_members(
    session: AsyncSession, access: WorkspaceAccess, page: Pagination, role: Role | None = None
) -> tuple[list[tuple[Member, str]], int | None]:
    access.require(Role.MEMBER)
    query = (
        select(Member, User.name)
        .join(User, User.id == Member.user_id)
        .where(Member.workspace_id == access.workspace.id, Member.deleted_at.is_(None))
    )
    if role is not None:
        query = query.where(Member.role == role)
    total = await count_rows(session, query)
    rows = await session.execute(page_of(query.order_by(User.name), page))
    return [(m, name) for m, name in rows], total


async def _member(session: AsyncSession, access: WorkspaceAccess, username: str, *, lock: bool = False) -> Member:
    query = (
        select(Member)
        .join(User, User.id == Member.user_id)
        .where(Member.workspace_id == access.workspace.id, Member.deleted_at.is_(None), User.name == username)
    )
    if lock:
        query = query.with_for_update()
    member = await session.scalar(query)
    if member is None:
        raise NotFound(f"{username!r} is not a member of this workspace", field="username")
    return member


async def get_member(session: AsyncSession, access: WorkspaceAccess, username: str) -> Member:
    access.require(Role.MEMBER)
    return await _member(session, access, username)


def _require_owner_for(access: WorkspaceAccess, *roles: Role) -> None:
    """Only owners make owners, and only owners change or remove an owner."""
    if Role.OWNER in roles:
        access.require(Role.OWNER)


async def _other_owner_count(session: AsyncSession, ws_id: int, member_id: int) -> int:
    # Lock the owner rows (PostgreSQL) so two owners demoting each other cannot leave none.
    owners = await session.scalars(
        select(Member.id)
        .where(Member.workspace_id == ws_id, Member.role == Role.OWNER, Member.deleted_at.is_(None))
        .with_for_update()
    )
    return sum(1 for mid in owners if mid != member_id)


async def add_member(session: AsyncSession, access: WorkspaceAccess, data: MemberCreate) -> Member:
    access.require(Role.ADMIN)
    _require_owner_for(access, data.role)
    user = await _active_user(session, data.username, "username")
    existing = await session.scalar(
        select(Member.id).where(
            Member.workspace_id == access.workspace.id, Member.user_id == user.id, Member.deleted_at.is_(None)
        )
    )
    if existing is not None:
        raise Conflict(f"{data.username!r} is already a member", field="username")
    member = Member(workspace_id=access.workspace.id, user_id=user.id, role=data.role)
    session.add(member)
    try:
        await session.flush()
    except IntegrityError as exc:
        await session.rollback()
        raise Conflict(f"{data.username!r} is already a member", field="username") from exc
    record(
        session,
        access.actor,
        "member.add",
        target_type="member",
        target=user.name,
        workspace_id=access.workspace.id,
        details={"role": data.role.value},
    )
    await session.commit()
    return member


async def change_role(session: AsyncSession, access: WorkspaceAccess, username: str, role: Role) -> Member:
    access.require(Role.ADMIN)
    member = await _member(session, access, username, lock=True)
    _require_owner_for(access, member.role, role)
    if member.role == role:
        return member
    if member.role == Role.OWNER and await _other_owner_count(session, access.workspace.id, member.id) == 0:
        raise Conflict("the last owner cannot be demoted; make someone else owner first", field="role")
    old = member.role
    member.role = role
    record(
        session,
        access.actor,
        "member.role",
        target_type="member",
        target=username,
        workspace_id=access.workspace.id,
        details={"from": old.value, "to": role.value},
    )
    await session.commit()
    return member


async def remove_member(session: AsyncSession, access: WorkspaceAccess, username: str) -> None:
    """Admins remove members; anyone may leave; owners are removed only by owners (or leave themselves)."""
    leaving = access.actor.name == username and access.role is not None
    if not leaving:
        access.require(Role.ADMIN)
    member = await _member(session, access, username, lock=True)
    if not leaving:
        _require_owner_for(access, member.role)
    if member.role == Role.OWNER and await _other_owner_count(session, access.workspace.id, member.id) == 0:
        raise Conflict("the last owner cannot leave; make someone else owner or delete the workspace", field="username")
    member.deleted_at = utcnow()
    record(
        session,
        access.actor,
        "member.leave" if leaving else "member.remove",
        target_type="member",
        target=username,
        workspace_id=access.workspace.id,
        details={"role": member.role.value},
    )
    await session.commit()


# --- quota ---------------------------------------------------------------------------------------------


async def get_quota(session: AsyncSession, access: WorkspaceAccess) -> Quota | None:
    access.require(Role.MEMBER)
    return await session.get(Quota, access.workspace.id)


async def get_sync(session: AsyncSession, access: WorkspaceAccess) -> SlurmSync | None:
    """The workspace's last reconciliation with Slurm (None: never reconciled)."""
    return await session.get(SlurmSync, access.workspace.id)


def _as_input(quota: Quota | None) -> QuotaIn:
    if quota is None:
        return QuotaIn()
    return QuotaIn(
        gpus=quota.gpus,
        gpus_by_type=dict(quota.gpus_by_type),
        cpus=quota.cpus,
        memory_bytes=quota.memory_bytes,
        storage_bytes=quota.storage_bytes,
        concurrent_environments=quota.concurrent_environments,
    )


async def patch_quota(session: AsyncSession, access: WorkspaceAccess, data: QuotaPatch) -> Quota:
    """Change the limits given, keep the others (QuotaPatch); checked as a whole like a PUT."""
    access.require(Role.ADMIN)
    return await set_quota(session, access, data.applied_to(_as_input(await session.get(Quota, access.workspace.id))))


async def _check_gpu_types(session: AsyncSession, data: QuotaIn) -> None:
    """A type the cluster has no GPU of is refused. The types come from the poller's cluster snapshot; before
    the first one (a new installation, Slurm never answered) any well-formed type is taken, and a type Slurm
    does not know then shows as the workspace's sync error (sacctmgr refuses the GrpTRES)."""
    if not data.gpus_by_type:
        return
    known = await cluster_service.gpu_types(session)
    if known is None:
        return
    for gpu_type in sorted(data.gpus_by_type):
        if gpu_type not in known:
            have = ", ".join(sorted(known)) or "none"
            raise InvalidInput(
                f"the cluster has no GPU of type {gpu_type!r} (its types: {have})", field=f"gpus_by_type.{gpu_type}"
            )


async def set_quota(session: AsyncSession, access: WorkspaceAccess, data: QuotaIn) -> Quota:
    access.require(Role.ADMIN)
    if data.gpus is not None:
        over = {t: n for t, n in data.gpus_by_type.items() if n > data.gpus}
        if over:
            raise InvalidInput(f"per-type GPU limits exceed the total of {data.gpus}: {over}", field="gpus_by_type")
    await _check_gpu_types(session, data)
    quota = await session.get(Quota, access.workspace.id)
    if quota is None:
        quota = Quota(workspace_id=access.workspace.id)
        session.add(quota)
    values = {
        "gpus": data.gpus,
        "gpus_by_type": dict(sorted(data.gpus_by_type.items())),
        "cpus": data.cpus,
        "memory_bytes": data.memory_bytes,
        "storage_bytes": data.storage_bytes,
        "concurrent_environments": data.concurrent_environments,
    }
    for field, value in values.items():
        setattr(quota, field, value)
    quota.updated_at = utcnow()
    sync = await session.get(SlurmSync, access.workspace.id)
    if sync is None:
        session.add(SlurmSync(workspace_id=access.workspace.id, state=SyncState.PENDING, failures=0))
    elif sync.state == SyncState.OK:
        sync.state = SyncState.PENDING  # until the worker has given Slurm the new limits
    record(
        session,
        access.actor,
        "quota.set",
        target_type="quota",
        target=access.workspace.slug,
        workspace_id=access.workspace.id,
        details=values,
    )
    await session.commit()
    return quota
