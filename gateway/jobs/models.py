from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db.base import Base, TimestampMixin, utcnow

SUBMITTING = "SUBMITTING"
"""Recorded, sbatch not (known to be) done yet: the state a crash can leave behind; the poller settles it."""
SUBMIT_FAILED = "SUBMIT_FAILED"
TRAINING = "training"
ENVIRONMENT = "environment"


def new_job_id() -> str:
    return uuid.uuid4().hex


class TrainingJob(TimestampMixin, Base):
    """The gateway's record of a Slurm batch job. Slurm is the truth for state; this is its projection."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("user_id", "idempotency_key"),
        Index("ix_jobs_workspace_created", "workspace_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_job_id)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16), default=TRAINING, server_default=TRAINING)
    """What the Slurm job is for: ``training`` (the jobs API) or ``environment`` (a session of one)."""
    state: Mapped[str] = mapped_column(String(32), default=SUBMITTING, index=True)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    state_unknown: Mapped[bool] = mapped_column(default=False)
    """The controller did not answer the last poll: ``state`` is the last one known."""
    slurm_job_id: Mapped[int | None] = mapped_column(default=None, index=True)
    """Not unique: a cluster whose state was wiped numbers its jobs from 1 again (and ids wrap at MaxJobId)."""
    idempotency_key: Mapped[str | None] = mapped_column(String(128), default=None)
    request_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    """SHA-256 of the request that made the job: a retry with its key must send the same one (else 422)."""
    submit_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
    """When the last sbatch of the job began: none of it can still be running once the backend's timeout is
    over (the lease), so recovery may then submit a job Slurm does not have (gateway.jobs.recovery)."""
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    script: Mapped[str] = mapped_column(Text)
    work_dir: Mapped[str] = mapped_column(String(4096))
    stdout_path: Mapped[str] = mapped_column(String(4096))
    nodes: Mapped[list[str]] = mapped_column(JSON, default=list)
    allocated: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    exit_code: Mapped[int | None] = mapped_column(default=None)
    array_tasks: Mapped[dict[str, int] | None] = mapped_column(JSON, default=None)
    """An array's tasks by state (``{"COMPLETED": 3, "RUNNING": 1}``); None for a single job."""
    submitted_at: Mapped[datetime | None] = mapped_column(default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    ended_at: Mapped[datetime | None] = mapped_column(default=None)


STAGE_IN_EVENT = "stage-in"
"""The kind of the event a job's stage-in report becomes (gateway.datasets.stagein), both states the job's then."""
STAGE_IN_FAILED = 75
"""The exit code of a batch script whose stage-in failed (EX_TEMPFAIL; slurm.script)."""


class JobEvent(Base):
    """A change of a job's state, written in the transaction that made it: the job's history, and what other
    domains (billing, environments) follow (those with ``kind`` "state"); and each cancel, hold and release a
    user asked for. Append-only; ``id`` grows with every event."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id"), index=True)
    old_state: Mapped[str | None] = mapped_column(String(32))
    new_state: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(16), default="state", server_default="state")
    """``state``: a change of state (old -> new); ``cancel``, ``hold``, ``release``: a request for one, by
    ``actor`` (both states are then the job's state when it was asked)."""
    actor: Mapped[str | None] = mapped_column(String(64), default=None)
    """Who asked (a user's name); None for what Slurm did (the poller saw it)."""


class GatewayInstance(Base):
    """One row: this database's gateway instance, the ``<instance>`` of the comments on its Slurm jobs."""

    __tablename__ = "gateway_instance"

    singleton: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    """Always 1: a second row cannot be added."""
    id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    secret: Mapped[str | None] = mapped_column(String(64), default=None)
    """Key of the environment sessions' callback tokens (HMAC), made on first use."""
