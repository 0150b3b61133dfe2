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
from gateway.workspaces.models import Member, Quota, Role, SlurmSync, SyncState, Workspace, WorkspaceStatus


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
    slurm_sync: SlurmSyncOut | None = None
    """How its last reconciliation with Slurm went (``GET /{ws}`` and the quota; not in lists)."""

    @classmethod
    def of(cls, ws: Workspace, role: Role | None, sync: SlurmSyncOut | None = None) -> WorkspaceOut:
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
            slurm_sync=sync,
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
    """Replaces the whole quota (PUT); an omitted or ``null`` limit means unlimited. PATCH changes some."""

    gpus: Count | None = None
    gpus_by_type: GpuCounts = msgspec.field(default_factory=dict)
    cpus: Count | None = None
    memory_bytes: Bytes | None = None
    storage_bytes: Bytes | None = None
    concurrent_environments: Count | None = None


class QuotaPatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Changes only the limits given (JSON merge patch, RFC 7396): ``null`` lifts a limit; in ``gpus_by_type``
    a type given a count is set, one given ``null`` removed, the others kept."""

    gpus: Count | UnsetType | None = UNSET
    gpus_by_type: Annotated[dict[GpuType, Count | None], msgspec.Meta(max_length=64)] | UnsetType = UNSET
    cpus: Count | UnsetType | None = UNSET
    memory_bytes: Bytes | UnsetType | None = UNSET
    storage_bytes: Bytes | UnsetType | None = UNSET
    concurrent_environments: Count | UnsetType | None = UNSET

    def applied_to(self, current: QuotaIn) -> QuotaIn:
        """The whole quota this patch makes of ``current``."""
        values = msgspec.structs.asdict(current)
        for field, value in msgspec.structs.asdict(self).items():
            if value is UNSET:
                continue
            if field == "gpus_by_type":
                merged = {**current.gpus_by_type, **value}
                value = {t: n for t, n in merged.items() if n is not None}
            values[field] = value
        return QuotaIn(**values)


class SlurmSyncOut(msgspec.Struct, kw_only=True):
    """How the workspace's last reconciliation with Slurm (account, members, GrpTRES) went."""

    state: SyncState
    """``pending``: not reconciled since the quota changed (or never); ``ok``; ``error``: Slurm refused."""
    error: str | None
    at: datetime | None
    """When the state was found."""
    failures: int
    """Failed attempts in a row (each retried on a later cycle)."""

    @classmethod
    def of(cls, sync: SlurmSync | None) -> SlurmSyncOut:
        if sync is None:
            return cls(state=SyncState.PENDING, error=None, at=None, failures=0)
        return cls(state=sync.state, error=sync.error, at=sync.at, failures=sync.failures)


class QuotaOut(msgspec.Struct, kw_only=True):
    gpus: int | None
    gpus_by_type: dict[str, int]
    cpus: int | None
    memory_bytes: int | None
    storage_bytes: int | None
    concurrent_environments: int | None
    updated_at: datetime | None
    slurm_sync: SlurmSyncOut | None = None
    """Whether Slurm has it (GrpTRES): the workspace's last reconciliation."""

    @classmethod
    def of(cls, quota: Quota | None, sync: SlurmSyncOut | None = None) -> QuotaOut:
        if quota is None:
            return cls(
                gpus=None,
                gpus_by_type={},
                cpus=None,
                memory_bytes=None,
                storage_bytes=None,
                concurrent_environments=None,
                updated_at=None,
                slurm_sync=sync,
            )
        return cls(
            gpus=quota.gpus,
            gpus_by_type=dict(quota.gpus_by_type),
            cpus=quota.cpus,
            memory_bytes=quota.memory_bytes,
            storage_bytes=quota.storage_bytes,
            concurrent_environments=quota.concurrent_environments,
            updated_at=quota.updated_at,
            slurm_sync=sync,
        )
