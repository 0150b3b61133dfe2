"""Reading the audit trail (platform admins, workspace owners); writing it is gateway.audit.writer."""

from __future__ import annotations

from datetime import datetime

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.audit.models import AuditEntry
from gateway.db.paging import count_rows, page_of
from gateway.errors import NotFound
from gateway.schemas import Pagination
from gateway.workspaces.models import Workspace


class AuditFilter(msgspec.Struct, frozen=True):
    action: str | None = None
    """An exact action, or a prefix ending in '.' (``workspace.`` matches every workspace action)."""
    actor: str | None = None
    target_type: str | None = None
    since: datetime | None = None
    until: datetime | None = None


async def workspace_id_of(session: AsyncSession, slug: str) -> int:
    """The id of a workspace named in a filter (404 naming ``workspace`` when there is none)."""
    ws_id = await session.scalar(select(Workspace.id).where(Workspace.slug == slug))
    if ws_id is None:
        raise NotFound(f"workspace {slug!r} not found", field="workspace")
    return ws_id


async def list_entries(
    session: AsyncSession, page: Pagination, filters: AuditFilter, *, workspace_id: int | None = None
) -> tuple[list[tuple[AuditEntry, str | None]], int | None]:
    """Entries newest first, each with its workspace's slug."""
    query = select(AuditEntry, Workspace.slug).outerjoin(Workspace, Workspace.id == AuditEntry.workspace_id)
    if workspace_id is not None:
        query = query.where(AuditEntry.workspace_id == workspace_id)
    if filters.action:
        action = AuditEntry.action
        query = query.where(
            action.startswith(filters.action, autoescape=True)
            if filters.action.endswith(".")
            else action == filters.action
        )
    if filters.actor:
        query = query.where(AuditEntry.actor_name == filters.actor)
    if filters.target_type:
        query = query.where(AuditEntry.target_type == filters.target_type)
    if filters.since:
        query = query.where(AuditEntry.at >= filters.since)
    if filters.until:
        query = query.where(AuditEntry.at < filters.until)
    total = await count_rows(session, query)
    rows = await session.execute(page_of(query.order_by(AuditEntry.id.desc()), page))
    return [(entry, slug) for entry, slug in rows], total
