"""Recording and reading the audit trail.

Entries join the caller's transaction: no change is committed without its entry.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
import structlog
from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.actor import Actor
from gateway.audit.models import AuditEntry
from gateway.db.base import utcnow
from gateway.db.paging import count_rows, page_of
from gateway.schemas import Pagination
from gateway.workspaces.models import Workspace

AUDIT_LOG: Table = AuditEntry.__table__  # type: ignore[assignment]


class AuditFilter(msgspec.Struct, frozen=True):
    action: str | None = None
    """An exact action, or a prefix ending in '.' (``workspace.`` matches every workspace action)."""
    actor: str | None = None
    target_type: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def _entry(
    actor: Actor,
    action: str,
    *,
    target_type: str,
    target: str,
    workspace_id: int | None,
    details: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "at": utcnow(),
        "actor_id": actor.user_id,
        "actor_name": actor.name,
        "action": action,
        "target_type": target_type,
        "target": target,
        "workspace_id": workspace_id,
        "request_id": structlog.contextvars.get_contextvars().get("request_id"),
        "details": details or {},
    }


def record(
    session: AsyncSession,
    actor: Actor,
    action: str,
    *,
    target_type: str,
    target: str,
    workspace_id: int | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEntry:
    """Add an entry to the session: it is written with the caller's other changes, at their flush."""
    entry = AuditEntry(
        **_entry(actor, action, target_type=target_type, target=target, workspace_id=workspace_id, details=details)
    )
    session.add(entry)
    return entry


def audit_row(
    actor: Actor,
    action: str,
    *,
    target_type: str,
    target: str,
    workspace_id: int | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The same entry as the values of a plain INSERT into AUDIT_LOG, for hot paths that write their own rows
    with plain statements (job submission): the ORM's unit of work costs more than the rest of such a request."""
    return _entry(actor, action, target_type=target_type, target=target, workspace_id=workspace_id, details=details)


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
