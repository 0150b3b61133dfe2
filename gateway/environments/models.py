"""Environments, their sessions (one Slurm job each, a row of ``jobs`` with kind ``environment``) and the
gateway host's port mappings to the services a session runs."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db.base import Base, SoftDeleteMixin, TimestampMixin, utcnow

LIVE = text("deleted_at IS NULL")
UNRELEASED = text("released_at IS NULL")


def new_environment_id() -> str:
    return uuid.uuid4().hex


class Environment(TimestampMixin, SoftDeleteMixin, Base):
    """What a user starts and stops: its settings (``spec``, an EnvironmentSpec) are those of the next start."""

    __tablename__ = "environments"
    __table_args__ = (
        # one live environment per name, user and workspace: JupyterHub's named servers map to them
        Index(
            "uq_environments_name_live",
            "workspace_id",
            "user_id",
            "name",
            unique=True,
            sqlite_where=LIVE,
            postgresql_where=LIVE,
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_environment_id)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text, default="")
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    current_job_id: Mapped[str | None] = mapped_column(String(32), default=None)
    """The job of the last start's session (running or not); None: never started. No foreign key: a start
    names its job before the job's row is written (gateway.environments.service), so that two starts cannot
    both submit one."""
    starts: Mapped[int] = mapped_column(default=0)


class EnvironmentSession(Base):
    """One start of an environment: its Slurm job (``jobs`` row, kind ``environment``) and what its supervisor
    reported through the session's callback."""

    __tablename__ = "environment_sessions"

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    """The session's job in ``jobs`` (written just after this row; see ``Environment.current_job_id``)."""
    environment_id: Mapped[str] = mapped_column(ForeignKey("environments.id"), index=True)
    number: Mapped[int] = mapped_column()
    """1 for the first start, then 2, ..."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    reported_at: Mapped[datetime | None] = mapped_column(default=None)
    """When the supervisor called back (the callback token is spent from then on)."""
    node: Mapped[str | None] = mapped_column(String(64), default=None)
    host: Mapped[str | None] = mapped_column(String(255), default=None)
    """The address the services listen on, as the gateway reaches it."""
    services: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """Reported ports by service: ``{"ssh": 40211, "tensorboard": 40212}``."""
    stop_requested_at: Mapped[datetime | None] = mapped_column(default=None)
    stop_actor: Mapped[str | None] = mapped_column(String(64), default=None)
    hub_env: Mapped[str | None] = mapped_column(Text, default=None)
    """A start from JupyterHub: the single-user server's ``JUPYTERHUB_*`` variables (its hub API token among them),
    encrypted (gateway.environments.hub); given to the session's job only, again if it is submitted again."""


class PortMapping(Base):
    """A public port of the gateway host relayed (TCP) to a session's service. Live mappings never share a
    public port (the partial unique index, whatever the number of gateway processes)."""

    __tablename__ = "port_mappings"
    __table_args__ = (
        Index(
            "uq_port_mappings_public_port_live",
            "public_port",
            unique=True,
            sqlite_where=UNRELEASED,
            postgresql_where=UNRELEASED,
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    environment_id: Mapped[str] = mapped_column(ForeignKey("environments.id"), index=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    service: Mapped[str] = mapped_column(String(16))
    node: Mapped[str | None] = mapped_column(String(64), default=None)
    host: Mapped[str] = mapped_column(String(255))
    node_port: Mapped[int] = mapped_column()
    public_port: Mapped[int] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_accessed_at: Mapped[datetime] = mapped_column(default=utcnow)
    """Last traffic (written at most once a minute per mapping, not per packet); creation until then."""
    auto_release_hours: Mapped[int] = mapped_column(default=48)
    released_at: Mapped[datetime | None] = mapped_column(default=None)
    release_reason: Mapped[str | None] = mapped_column(Text, default=None)


class EnvironmentEvent(Base):
    """What happened to an environment besides its sessions' state changes (which are job events): created,
    start, stop, restart, port released, ... Append-only."""

    __tablename__ = "environment_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    environment_id: Mapped[str] = mapped_column(ForeignKey("environments.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str | None] = mapped_column(Text, default=None)
    actor: Mapped[str | None] = mapped_column(String(64), default=None)
    job_id: Mapped[str | None] = mapped_column(String(32), default=None)
    at: Mapped[datetime] = mapped_column(default=utcnow)
