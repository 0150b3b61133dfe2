"""The submission's writes on PostgreSQL as one statement each, run in autocommit (Database.run one_statement).

A submission writes twice: the job with its audit entry before sbatch, the Slurm id with the job's first event
after it. As two statements in a transaction each costs BEGIN, two statements and COMMIT: four round trips. As
one statement (data-modifying CTEs, atomic on their own) it costs one. SQLite cannot chain DML in a CTE; its
units stay plain statements in a transaction (gateway.jobs.service), which cost no round trips there.

Statements are built once per set of columns (building one costs more than running it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

from sqlalchemy import Table, bindparam, cast, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Insert, Update

from gateway.audit.writer import AUDIT_LOG
from gateway.db.base import utcnow
from gateway.jobs.events import EVENTS, StateChange
from gateway.jobs.models import TrainingJob

JOBS: Table = TrainingJob.__table__  # type: ignore[assignment]
_EVENT_COLUMNS = ("job_id", "workspace_id", "old_state", "new_state", "reason", "at", "kind")
"""Every column an INSERT ... SELECT must name: SQLAlchemy's Python-side defaults do not apply to one."""


def _copied(table: Table, prefix: str, names: Iterable[str]) -> list[Any]:
    """Typed parameters for an INSERT ... SELECT from a CTE (cast, as a SELECT list has no target types)."""
    return [cast(bindparam(f"{prefix}{name}", type_=table.c[name].type), table.c[name].type) for name in names]


@cache
def _record(job_columns: tuple[str, ...], audit_columns: tuple[str, ...]) -> Insert:
    job = (
        pg_insert(JOBS)
        .values({name: bindparam(name, type_=JOBS.c[name].type) for name in job_columns})
        .on_conflict_do_nothing(index_elements=[JOBS.c.user_id, JOBS.c.idempotency_key])
        .returning(JOBS.c.id)
        .cte("new_job")
    )
    entry = select(*_copied(AUDIT_LOG, "audit_", audit_columns)).select_from(job)
    into = insert(AUDIT_LOG).from_select(list(audit_columns), entry, include_defaults=False)
    return into.add_cte(job).returning(AUDIT_LOG.c.id)


def record_submission(row: Mapping[str, Any], audit: Mapping[str, Any], session: Session) -> bool:
    """The job and its audit entry in one statement; False when a job with its idempotency key exists."""
    statement = _record(tuple(row), tuple(audit))
    values = {**row, "submit_attempt_at": utcnow(), **{f"audit_{k}": v for k, v in audit.items()}}
    return session.execute(statement, values).first() is not None


@cache
def _update(columns: tuple[str, ...], with_event: bool) -> Update | Insert:
    changed = (
        update(JOBS)
        .where(JOBS.c.id == bindparam("job_id_"))
        .values({name: bindparam(name, type_=JOBS.c[name].type) for name in columns})
    )
    if not with_event:
        return changed
    job = changed.returning(JOBS.c.id).cte("changed_job")
    event = select(*_copied(EVENTS, "event_", _EVENT_COLUMNS)).select_from(job)
    return insert(EVENTS).from_select(list(_EVENT_COLUMNS), event, include_defaults=False).add_cte(job)


def update_job(job_id: str, values: Mapping[str, Any], change: StateChange | None, session: Session) -> None:
    """New values for a job's row and the event of its change of state, in one statement."""
    parameters = {"job_id_": job_id, **values}
    if change is not None:
        event = (change.job_id, change.workspace_id, change.old, change.new, change.reason, utcnow(), "state")
        parameters.update({f"event_{name}": value for name, value in zip(_EVENT_COLUMNS, event, strict=True)})
    session.execute(_update(tuple(values), change is not None), parameters)
