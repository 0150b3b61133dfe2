"""Writing the audit trail: every change's entry joins the caller's transaction, so no change is committed
without it. Reading it is gateway.audit.reader (writers never import the reader's dependencies)."""

from __future__ import annotations

from typing import Any

import structlog
from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.actor import Actor
from gateway.audit.models import AuditEntry
from gateway.db.base import utcnow

AUDIT_LOG: Table = AuditEntry.__table__  # type: ignore[assignment]


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
