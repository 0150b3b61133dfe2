from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Enum, ForeignKey, Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from gateway.access_cache import watch_for_access
from gateway.accounts.models import User
from gateway.db.base import Base, SoftDeleteMixin, TimestampMixin

_LIVE = text("deleted_at IS NULL")


def _str_enum(cls: type[enum.StrEnum], name: str) -> Enum:
    return Enum(cls, name=name, values_callable=lambda e: [m.value for m in e], native_enum=False, length=16)


class WorkspaceStatus(enum.StrEnum):
    ACTIVE = "active"
    OVERDUE = "overdue"
    """Balance exhausted: new work is refused (and blocked in Slurm once billing lands)."""
    SUSPENDED = "suspended"
    """Overdue past the grace period (``status_reason`` ``billing``), or stopped by a platform admin."""


class Role(enum.StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"

    @property
    def rank(self) -> int:
        return {"member": 1, "admin": 2, "owner": 3}[self.value]


class Workspace(TimestampMixin, SoftDeleteMixin, Base):
    __tablename__ = "workspaces"
    __table_args__ = (
        Index("uq_workspaces_slug_live", "slug", unique=True, sqlite_where=_LIVE, postgresql_where=_LIVE),
        Index(
            "uq_workspaces_slurm_account_live",
            "slurm_account",
            unique=True,
            sqlite_where=_LIVE,
            postgresql_where=_LIVE,
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(128))
    description: Mapped[str] = mapped_column(Text, default="")
    slurm_account: Mapped[str] = mapped_column(String(64))
    status: Mapped[WorkspaceStatus] = mapped_column(
        _str_enum(WorkspaceStatus, "workspace_status"), default=WorkspaceStatus.ACTIVE
    )
    currency: Mapped[str] = mapped_column(String(3))
    status_reason: Mapped[str | None] = mapped_column(String(16), default=None)
    """Who set a status other than active: ``billing`` (money lifts it) or ``admin`` (only an admin does)."""

    quota: Mapped[Quota | None] = relationship(lazy="raise", uselist=False)


class Member(TimestampMixin, SoftDeleteMixin, Base):
    __tablename__ = "workspace_members"
    __table_args__ = (
        Index(
            "uq_workspace_members_live",
            "workspace_id",
            "user_id",
            unique=True,
            sqlite_where=_LIVE,
            postgresql_where=_LIVE,
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[Role] = mapped_column(_str_enum(Role, "member_role"))

    user: Mapped[User] = relationship(lazy="raise")
    workspace: Mapped[Workspace] = relationship(lazy="raise")


class Quota(TimestampMixin, Base):
    """Limits of one workspace; ``None`` means unlimited. Enforced by Slurm as GrpTRES once synced."""

    __tablename__ = "workspace_quotas"

    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True)
    gpus: Mapped[int | None] = mapped_column(default=None)
    """All GPUs at once, whatever their type."""
    gpus_by_type: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """e.g. ``{"a100": 4, "h100": 2}``."""
    cpus: Mapped[int | None] = mapped_column(default=None)
    memory_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    storage_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    concurrent_environments: Mapped[int | None] = mapped_column(default=None)


class SyncState(enum.StrEnum):
    PENDING = "pending"
    """Not reconciled since its quota changed (or never)."""
    OK = "ok"
    ERROR = "error"


class SlurmSync(Base):
    """How the last reconciliation of one workspace with Slurm went (gateway.workspaces.slurm_sync)."""

    __tablename__ = "workspace_slurm_sync"

    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True)
    state: Mapped[SyncState] = mapped_column(_str_enum(SyncState, "slurm_sync_state"))
    error: Mapped[str | None] = mapped_column(Text, default=None)
    at: Mapped[datetime | None] = mapped_column(default=None)
    """When the state was last found (the end of the reconciliation that covered the workspace)."""
    failures: Mapped[int] = mapped_column(default=0)
    """Failed attempts in a row."""


watch_for_access(Member, Workspace, Quota)  # roles, workspace status and quotas are in the cached access
