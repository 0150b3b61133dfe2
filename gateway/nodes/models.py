"""The nodes domain's tables: the GPU nodes the gateway provisions (named as Slurm names them, the same name
being the node's Salt minion id), their one-time bootstrap tokens, and provision runs with per-state results."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db.base import Base, TimestampMixin

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
RUN_STATUSES = (QUEUED, RUNNING, DONE, FAILED)
OPEN_RUN = text("status IN ('queued', 'running')")

REGISTERED, BOOTSTRAPPED = "registered", "bootstrapped"
"""A node's key state: registered (no minion key handed out yet) or bootstrapped (its token was exchanged)."""


class Node(TimestampMixin, Base):
    """A GPU node. ``gpu_type``/``gpu_count`` as registered, or found by the first run that asked the node
    (``gpu_detect``)."""

    __tablename__ = "nodes"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    address: Mapped[str] = mapped_column(String(255))
    region: Mapped[str] = mapped_column(String(64), default="default")
    gpu_type: Mapped[str | None] = mapped_column(String(32), default=None)
    gpu_count: Mapped[int] = mapped_column(Integer, default=0)
    gpu_detect: Mapped[bool] = mapped_column(Boolean, default=False)
    key_state: Mapped[str] = mapped_column(String(16), default=REGISTERED)
    bootstrapped_at: Mapped[datetime | None] = mapped_column(default=None)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), default=None)


class BootstrapToken(Base):
    """One issued bootstrap token, by its nonce: ``used_at`` is set by the one exchange that spends it. The
    token itself is not stored (it is an HMAC of the node's name, the nonce and the expiry)."""

    __tablename__ = "node_bootstrap_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    nonce: Mapped[str] = mapped_column(String(32), unique=True)
    issued_at: Mapped[datetime] = mapped_column()
    expires_at: Mapped[datetime] = mapped_column()
    used_at: Mapped[datetime | None] = mapped_column(default=None)


class ProvisionRun(TimestampMixin, Base):
    """A ``state.apply`` of chosen states on some nodes (one Salt job per node, all at once): a durable job that
    workers claim with a lease (gateway.nodes.runs). ``test``: a dry run (``test=True``)."""

    __tablename__ = "node_runs"
    __table_args__ = (Index("ix_node_runs_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    states: Mapped[list[str]] = mapped_column(JSON, default=list)
    test: Mapped[bool] = mapped_column(Boolean, default=True)
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column()
    lease_owner: Mapped[str | None] = mapped_column(String(128), default=None)
    lease_until: Mapped[datetime | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), default=None)


class RunTarget(Base):
    """One node of a run: its Salt job (``jid`` once submitted) and its outcome."""

    __tablename__ = "node_run_targets"
    __table_args__ = (
        Index("uq_node_run_targets", "run_id", "node_id", unique=True),
        Index("uq_node_run_targets_open", "node_id", unique=True, sqlite_where=OPEN_RUN, postgresql_where=OPEN_RUN),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("node_runs.id", ondelete="CASCADE"), index=True)
    node_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id", ondelete="SET NULL"), index=True)
    """None once the node was removed."""
    node_name: Mapped[str] = mapped_column(String(63))
    """Copied: the run reads the same after the node is removed."""
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    """queued (no job yet), running (submitted), done (every state succeeded), failed."""
    jid: Mapped[str | None] = mapped_column(String(32), default=None)
    submitted_at: Mapped[datetime | None] = mapped_column(default=None, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(default=None, index=True)
    """(Both indexed: their newest is part of the nodes list's version, gateway.nodes.service.)"""
    retcode: Mapped[int | None] = mapped_column(Integer, default=None)
    states_total: Mapped[int] = mapped_column(Integer, default=0)
    states_changed: Mapped[int] = mapped_column(Integer, default=0)
    states_failed: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, default=None)


class StateResult(Base):
    """One state of one node's job, as Salt returned it: ``result`` true (succeeded), false (failed) or None
    (Salt's null: a dry run's pending change); ``changed``: it changed something (or would, in a dry run)."""

    __tablename__ = "node_state_results"

    id: Mapped[int] = mapped_column(primary_key=True)
    target_id: Mapped[int] = mapped_column(ForeignKey("node_run_targets.id", ondelete="CASCADE"), index=True)
    state_id: Mapped[str] = mapped_column(String(255))
    """Salt's ``__id__``."""
    sls: Mapped[str | None] = mapped_column(String(255), default=None)
    function: Mapped[str] = mapped_column(String(128))
    """``file.managed``, ``service.running``..."""
    name: Mapped[str] = mapped_column(Text)
    result: Mapped[bool | None] = mapped_column(Boolean, default=None)
    changed: Mapped[bool] = mapped_column(Boolean, default=False)
    comment: Mapped[str] = mapped_column(Text, default="")
    changes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    duration_ms: Mapped[float | None] = mapped_column(Float, default=None)
    run_num: Mapped[int] = mapped_column(Integer, default=0)
