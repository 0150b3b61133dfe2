"""Request and response bodies of storage sources (the admin API); keys go in, never out."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from gateway.datasets.models import StorageSource
from gateway.schemas import whole

SourceName = Annotated[
    str, msgspec.Meta(pattern=whole(r"[a-z0-9][a-z0-9-]{0,62}"), description="lower-case letters, digits, hyphens")
]
SourceType = Literal["minio", "oss", "s3", "rustfs", "generic"]
Endpoint = Annotated[
    str,
    msgspec.Meta(
        max_length=500,
        pattern=whole(r"https?://[A-Za-z0-9.:\[\]-]+(/[A-Za-z0-9._~/-]*)?"),
        description="the store's S3 endpoint, http(s)://host[:port][/path], without credentials",
        examples=["https://oss-cn-hangzhou.aliyuncs.com"],
    ),
]
Bucket = Annotated[
    str,
    msgspec.Meta(
        min_length=3,
        max_length=63,
        pattern=whole(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"),
        description="an S3 bucket name (3-63 lower-case letters, digits, dots, hyphens)",
    ),
]
Region = Annotated[str, msgspec.Meta(pattern=whole(r"[A-Za-z0-9-]{1,64}"), examples=["cn-hangzhou"])]
Prefix = Annotated[
    str,
    msgspec.Meta(
        max_length=200,
        pattern=whole(r"([A-Za-z0-9_-][A-Za-z0-9._-]*/)*"),
        description="a key prefix ending in '/', e.g. 'remotegpu/'; empty: the bucket's root",
    ),
]
Key = Annotated[str, msgspec.Meta(min_length=1, max_length=256, pattern=whole(r"[\x21-\x7e]+"))]
Rank = Annotated[int, msgspec.Meta(ge=0, le=10000)]
Health = Literal["ok", "degraded", "down", "unknown"]


class StorageSourceCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: SourceName
    type: SourceType
    endpoint: Endpoint
    bucket: Bucket
    access_key: Key
    secret_key: Key
    region: Region | None = None
    prefix: Prefix = ""
    public: bool = False
    """Reachable from outside the site (public cloud): external users' uploads go there."""
    priority: Rank = 100
    """Lower is preferred."""
    weight: Rank = 100
    """Share among sources otherwise equal (0: only when nothing else is left)."""
    enabled: bool = True


class StorageSourcePatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Fields to change; a new access_key or secret_key replaces the stored one."""

    endpoint: Endpoint | None = None
    region: Region | None = None
    access_key: Key | None = None
    secret_key: Key | None = None
    public: bool | None = None
    priority: Rank | None = None
    weight: Rank | None = None
    enabled: bool | None = None


class StorageSourceOut(msgspec.Struct, kw_only=True):
    id: int
    name: str
    type: SourceType
    endpoint: str
    bucket: str
    region: str | None
    prefix: str
    public: bool
    priority: int
    weight: int
    enabled: bool
    health: Health
    latency_ms: float | None
    last_error: str | None
    checked_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, s: StorageSource) -> StorageSourceOut:
        return cls(
            id=s.id,
            name=s.name,
            type=s.type,  # type: ignore[arg-type]
            endpoint=s.endpoint,
            bucket=s.bucket,
            region=s.region,
            prefix=s.prefix,
            public=s.public,
            priority=s.priority,
            weight=s.weight,
            enabled=s.enabled,
            health=s.health,  # type: ignore[arg-type]
            latency_ms=s.latency_ms,
            last_error=s.last_error,
            checked_at=s.checked_at,
            created_at=s.created_at,
            updated_at=s.updated_at,
        )
