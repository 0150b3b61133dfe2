"""Recording and reading the audit trail.

Entries join the caller's transaction: no change is committed without its entry.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.actor import Actor
from gateway.audit.models import AuditEntry
from gateway.schemas import Pagination


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
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    entry = AuditEntry(
        actor_id=actor.user_id,
        actor_name=actor.name,
        action=action,
        target_type=target_type,
        target=target,
        workspace_id=workspace_id,
        request_id=request_id,
        details=details or {},
    )
    session.add(entry)
    return entry


async def list_entries(
    session: AsyncSession,
    page: Pagination,
    *,
    workspace_id: int | None = None,
    action: str | None = None,
    actor: str | None = None,
    target_type: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[list[AuditEntry], int]:
    query: Select[AuditEntry] = select(AuditEntry)
    if workspace_id is not None:
        query = query.where(AuditEntry.workspace_id == workspace_id)
    if action:
        # "workspace." matches every workspace action.
        query = query.where(
            AuditEntry.action.startswith(action, autoescape=True)
            if action.endswith(".")
            else AuditEntry.action == action
        )
    if actor:
        query = query.where(AuditEntry.actor_name == actor)
    if target_type:
        query = query.where(AuditEntry.target_type == target_type)
    if since:
        query = query.where(AuditEntry.at >= since)
    if until:
        query = query.where(AuditEntry.at < until)
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    rows = await session.scalars(query.order_by(AuditEntry.id.desc()).limit(page.limit).offset(page.offset))
    return list(rows), int(total or 0)
