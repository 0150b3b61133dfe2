from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from msgspec import UNSET, UnsetType

from gateway.schemas import (
    Bytes,
    Count,
    Currency,
    Description,
    DisplayName,
    GpuType,
    Slug,
    SlurmAccount,
    UserName,
)
from gateway.workspaces.models import Member, Quota, Role, Workspace, WorkspaceStatus


class WorkspaceCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    slug: Slug
    name: DisplayName
    description: Description = ""
    currency: Currency | None = None
    slurm_account: SlurmAccount | None = None
    """Platform admins only; defaults to the slug."""
    owner: UserName | None = None
    """Platform admins only: create the workspace for this user instead of themselves."""


class WorkspaceUpdate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: DisplayName | UnsetType = UNSET
    description: Description | UnsetType = UNSET
    currency: Currency | UnsetType = UNSET
    status: WorkspaceStatus | UnsetType = UNSET
    """Platform admins only."""


class WorkspaceOut(msgspec.Struct, kw_only=True):
    slug: str
    name: str
    description: str
    slurm_account: str
    status: WorkspaceStatus
    currency: str
    created_at: datetime
    updated_at: datetime
    role: Role | None
    """The caller's role here (``null`` for a platform admin who is not a member)."""

    @classmethod
    def of(cls, ws: Workspace, role: Role | None) -> WorkspaceOut:
        return cls(
            slug=ws.slug,
            name=ws.name,
            description=ws.description,
            slurm_account=ws.slurm_account,
            status=ws.status,
            currency=ws.currency,
            created_at=ws.created_at,
            updated_at=ws.updated_at,
            role=role,
        )


class MemberCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    username: UserName
    role: Role = Role.MEMBER


class MemberUpdate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    role: Role


class MemberOut(msgspec.Struct, kw_only=True):
    username: str
    role: Role
    since: datetime

    @classmethod
    def of(cls, member: Member, username: str) -> MemberOut:
        return cls(username=username, role=member.role, since=member.created_at)


GpuCounts = Annotated[dict[GpuType, Count], msgspec.Meta(max_length=64)]


class QuotaIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Replaces the whole quota; an omitted or ``null`` limit means unlimited."""

    gpus: Count | None = None
    gpus_by_type: GpuCounts = msgspec.field(default_factory=dict)
    cpus: Count | None = None
    memory_bytes: Bytes | None = None
    storage_bytes: Bytes | None = None
    concurrent_environments: Count | None = None


class QuotaOut(msgspec.Struct, kw_only=True):
    gpus: int | None
    gpus_by_type: dict[str, int]
    cpus: int | None
    memory_bytes: int | None
    storage_bytes: int | None
    concurrent_environments: int | None
    updated_at: datetime | None

    @classmethod
    def of(cls, quota: Quota | None) -> QuotaOut:
        if quota is None:
            return cls(
                gpus=None,
                gpus_by_type={},
                cpus=None,
                memory_bytes=None,
                storage_bytes=None,
                concurrent_environments=None,
                updated_at=None,
            )
        return cls(
            gpus=quota.gpus,
            gpus_by_type=dict(quota.gpus_by_type),
            cpus=quota.cpus,
            memory_bytes=quota.memory_bytes,
            storage_bytes=quota.storage_bytes,
            concurrent_environments=quota.concurrent_environments,
            updated_at=quota.updated_at,
        )
