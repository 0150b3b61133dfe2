"""Which gateway made a Slurm job: the comment every job it submits carries, ``rgpu:<instance>:<job id>``.

The instance is this gateway's database (a random id stored in it on first use), so that the poller adopts
and cancels only its own jobs: two gateways on one cluster (staging and production, a test run beside a dev
stack) leave each other's jobs alone, and a database restored from a backup still knows its jobs as its own
(those it lost are the orphans to cancel). Comments of the first form, ``rgpu:<job id>``, are still adopted
but never cancelled: whose they are cannot be told.
"""

from __future__ import annotations

import uuid

import msgspec
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.db.session import Database
from gateway.jobs.models import GatewayInstance

PREFIX = "rgpu:"


class Origin(msgspec.Struct, frozen=True):
    instance: str | None
    """None for a comment of the first form (no instance)."""
    job_id: str


def slurm_comment(instance: str, job_id: str, note: str | None = None) -> str:
    """Ours, then the user's own ``--comment`` after a blank (sbatch has one comment; ids hold no blank)."""
    return f"{PREFIX}{instance}:{job_id}" + (f" {note}" if note else "")


def parse_comment(comment: str) -> Origin | None:
    """The gateway job a Slurm job's comment names, if it names one."""
    if not comment.startswith(PREFIX):
        return None
    comment = comment.split(" ", 1)[0]  # the user's comment follows ours
    instance, sep, job_id = comment[len(PREFIX) :].rpartition(":")
    if not job_id:
        return None
    return Origin(instance=instance if sep else None, job_id=job_id)


def _instance(session: Session) -> str:
    found = session.scalar(select(GatewayInstance.id))
    if found is None:
        found = uuid.uuid4().hex[:12]
        session.execute(insert(GatewayInstance).values(singleton=1, id=found))
    return found


def _existing(session: Session) -> str | None:
    return session.scalar(select(GatewayInstance.id))


async def instance_id(database: Database) -> str:
    """This database's gateway instance, made on first use (two processes racing for it agree on one)."""
    found = await database.run(_existing, write=False)
    if found is not None:
        return found
    try:
        return await database.run(_instance)
    except IntegrityError:  # another process made it first (PostgreSQL; SQLite writes one at a time)
        return await database.run(_instance)
