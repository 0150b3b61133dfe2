"""Job state changes: written with the change itself (job_events), then told to in-process listeners.

The table is the record other domains rely on (billing, environments): a change is in it if and only if the
transaction that made it committed, so a crash loses none and a retry adds none. Listeners are the fast
path for the process that made the change; a listener that fails is logged and does not undo anything.
What must change with the job, in the same commit, is an ``in_transaction`` hook instead (environments: the
port mappings of a session that ended are released by the transaction that ends it, so no one reads a stopped
environment whose ports are still live).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import msgspec
import structlog
from sqlalchemy import Table, insert, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from gateway.db.base import utcnow
from gateway.jobs.models import JobEvent

log = structlog.get_logger("gateway.jobs.events")
EVENTS: Table = JobEvent.__table__  # type: ignore[assignment]
_INSERT = insert(EVENTS)


class StateChange(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    workspace_id: int
    old: str | None
    new: str
    reason: str | None = None


Listener = Callable[[StateChange], Awaitable[None]]
InTransaction = Callable[[Session, Sequence[StateChange]], None]
_IN_TRANSACTION: list[InTransaction] = []


def in_transaction(hook: InTransaction) -> InTransaction:
    """Register ``hook`` (a decorator): ``write`` runs it in every transaction that records job changes."""
    if hook not in _IN_TRANSACTION:
        _IN_TRANSACTION.append(hook)
    return hook


def write(session: Session, changes: Sequence[StateChange]) -> None:
    """Add ``changes`` to the session's transaction (one INSERT for all of them). The writers are units of
    work run by Database.run (submission, the poller), hence a synchronous session."""
    if not changes:
        return
    now = utcnow()
    rows = [
        {
            "job_id": c.job_id,
            "workspace_id": c.workspace_id,
            "old_state": c.old,
            "new_state": c.new,
            "reason": c.reason,
            "at": now,
        }
        for c in changes
    ]
    session.execute(_INSERT, rows if len(rows) > 1 else rows[0])
    for hook in _IN_TRANSACTION:
        hook(session, changes)


async def notify(listeners: Sequence[Listener], changes: Sequence[StateChange]) -> None:
    """Tell each listener of each change, after the commit."""
    for change in changes:
        for listener in listeners:
            try:
                await listener(change)
            except Exception:  # a listener's bug must not stop the poller: the table has the change anyway
                log.exception("job_event_listener_failed", job_id=change.job_id, new=change.new)


async def history(session: AsyncSession, job_id: str) -> list[JobEvent]:
    """A job's changes, oldest first."""
    return list(await session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))
