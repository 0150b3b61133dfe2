from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from gateway.audit.models import AuditEntry


class AuditOut(msgspec.Struct, kw_only=True):
    id: int
    at: datetime
    actor: str
    action: str
    target_type: str
    target: str
    workspace: str | None
    request_id: str | None
    details: dict[str, Any]

    @classmethod
    def of(cls, entry: AuditEntry, workspace: str | None) -> AuditOut:
        return cls(
            id=entry.id,
            at=entry.at,
            actor=entry.actor_name,
            action=entry.action,
            target_type=entry.target_type,
            target=entry.target,
            workspace=workspace,
            request_id=entry.request_id,
            details=entry.details,
        )
