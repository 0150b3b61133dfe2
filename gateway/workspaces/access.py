"""Who may do what in a workspace: the one access rule of every workspace-scoped resource.

A caller who is not a member of a workspace learns nothing about it, not even that it exists (404); a member
whose role is too low gets 403; platform admins may do everything. Roles are compared only by
:meth:`WorkspaceAccess.allows`. The Litestar wiring (the ``access`` dependency) is in gateway.workspaces.deps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload

from gateway.access_cache import ACCESS_CACHE
from gateway.actor import Actor
from gateway.errors import Forbidden, NotFound
from gateway.workspaces.models import Member, Role, Workspace


@dataclass(frozen=True, slots=True)
class WorkspaceAccess:
    """A workspace as one caller sees it, with their role (None: a platform admin who is not a member)."""

    workspace: Workspace
    role: Role | None
    actor: Actor

    def allows(self, minimum: Role) -> bool:
        """Whether the caller acts with at least ``minimum`` here: the one comparison of roles."""
        return self.actor.is_admin or (self.role is not None and self.role.rank >= minimum.rank)

    def require(self, minimum: Role) -> None:
        """403 unless :meth:`allows` (the 404 for non-members came earlier, from :func:`get_access`)."""
        if not self.allows(minimum):
            raise Forbidden(f"this needs the workspace role {minimum.value!r} or higher")


async def get_access(
    session: Callable[[], AsyncSession], actor: Actor, slug: str, *, cached: bool = False
) -> WorkspaceAccess:
    """The workspace and the caller's role, in one query; 404 to anyone who is neither member nor admin.

    The workspace comes with its quota loaded. ``cached``: the caller may get a snapshot from the access cache
    (at most ``access_cache_seconds`` old where another process made the change): fine for reads, and for
    actions Slurm checks again itself (a job submission); never for objects the caller will modify.
    """
    if cached:
        workspace, role = await ACCESS_CACHE.workspace(
            actor.user_id, slug, lambda: _load_access(session(), actor, slug)
        )
    else:
        workspace, role = await _load_access(session(), actor, slug)
    return WorkspaceAccess(workspace=workspace, role=role, actor=actor)


async def _load_access(session: AsyncSession, actor: Actor, slug: str) -> tuple[Workspace, Role | None]:
    row = (
        await session.execute(
            select(Workspace, Member.role)
            .options(joinedload(Workspace.quota))
            .outerjoin(
                Member,
                (Member.workspace_id == Workspace.id) & (Member.user_id == actor.user_id) & Member.deleted_at.is_(None),
            )
            .where(Workspace.slug == slug, Workspace.deleted_at.is_(None))
        )
    ).first()
    if row is None or (row[1] is None and not actor.is_admin):
        raise NotFound(f"workspace {slug!r} not found")
    return row[0], row[1]
