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


# --- datasets and models ----------------------------------------------------------------------------------

DatasetName = Annotated[
    str,
    msgspec.Meta(
        pattern=whole(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"),
        description="letters, digits, '.', '_', '-'; unique among the workspace's datasets (or models)",
        examples=["imagenet-mini"],
    ),
]
Tag = Annotated[str, msgspec.Meta(pattern=whole(r"[A-Za-z0-9][A-Za-z0-9:._-]{0,63}"))]
ObjectPath = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=1024,
        pattern=whole(r"[^\x00-\x1f\x7f\\]+"),
        description="a file's path inside the version, '/'-separated, relative: no '..', '.', empty or "
        "leading '/' segment",
        examples=["train/part-0001.parquet"],
    ),
]
Sha256 = Annotated[str, msgspec.Meta(pattern=whole(r"[0-9a-f]{64}"), description="lower-case hex SHA-256")]
Size = Annotated[int, msgspec.Meta(ge=0, le=5 * 1024**4, description="bytes (at most 5 TiB, S3's object limit)")]
VersionStatus = Literal["uploading", "ready", "syncing", "error"]
DatasetKind = Literal["dataset", "model"]


class DatasetCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: DatasetName
    description: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    tags: Annotated[list[Tag], msgspec.Meta(max_length=20)] = msgspec.field(default_factory=list)


class DatasetPatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    description: Annotated[str, msgspec.Meta(max_length=2000)] | None = None
    tags: Annotated[list[Tag], msgspec.Meta(max_length=20)] | None = None
    shared_with: Annotated[list[Annotated[str, msgspec.Meta(max_length=32)]], msgspec.Meta(max_length=50)] | None = None
    """Slugs of workspaces that may read it (read-only); replaces the list. Owners and admins only."""


class VersionOut(msgspec.Struct, kw_only=True):
    version: int
    status: VersionStatus
    size_bytes: int
    file_count: int
    primary_source: str
    """The storage source its files were uploaded to."""
    replicas: list[str]
    """Sources holding a complete copy (the primary once ready, others as syncs finish)."""
    created_at: datetime
    ready_at: datetime | None
    error: str | None


class DatasetOut(msgspec.Struct, kw_only=True):
    id: str
    kind: DatasetKind
    workspace: str
    name: str
    description: str
    tags: list[str]
    shared_with: list[str]
    owner: str
    created_at: datetime
    latest: VersionOut | None
    """Its newest ready version (or the newest at all when none is ready)."""


class VersionCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    source: SourceName | None = None
    """The storage source to upload to; default: routing's choice for the caller (internal users: a private
    store, external ones: a public one). Platform admins may name any enabled source, others one routing allows."""


class PartOut(msgspec.Struct, kw_only=True):
    number: int
    size: int
    url: str
    """A presigned PUT of this part, straight to the store (the response's ETag header is all the store says)."""


class UploadCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    path: ObjectPath
    size: Size
    sha256: Sha256
    """Of the whole file, computed by the client; kept in the object's metadata and the version's manifest."""


class UploadOut(msgspec.Struct, kw_only=True):
    id: str
    path: str
    size: int
    sha256: str
    status: Literal["open", "completed", "aborted"]
    part_size: int
    part_count: int
    completed_parts: list[int]
    """Parts the store already holds (resume: send only the others)."""
    parts: list[PartOut]
    """Presigned URLs of the parts still to send (empty once completed)."""
    expires_at: datetime | None
    """When these URLs stop working; ask again (GET the upload) for fresh ones."""


class FileOut(msgspec.Struct, kw_only=True):
    path: str
    size: int
    sha256: str


class DownloadOut(msgspec.Struct, kw_only=True):
    url: str
    expires_at: datetime
    source: str
    """The storage source routing chose for the caller."""
