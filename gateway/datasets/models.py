"""The datasets domain's tables: the S3 stores the site configures (storage sources), datasets and models, their
versions with each one's manifest (path, size, our SHA-256), open multipart uploads, and replicas per store."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db.base import Base, SoftDeleteMixin, TimestampMixin, utcnow

LIVE = text("deleted_at IS NULL")
OPEN = text("status = 'open'")

SOURCE_TYPES = ("minio", "oss", "s3", "rustfs", "generic")
HEALTH = ("ok", "degraded", "down", "unknown")


class StorageSource(TimestampMixin, Base):
    """One bucket of one S3 store. Its keys are sealed (gateway.crypto) for this row's id and field; ``health``
    is the worker's last check (a HEAD of the bucket): ``ok``, ``degraded`` (answered, slowly or with an error
    other than a refusal to connect), ``down`` (no answer), ``unknown`` (not checked yet)."""

    __tablename__ = "storage_sources"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    type: Mapped[str] = mapped_column(String(16))
    endpoint: Mapped[str] = mapped_column(String(500))
    bucket: Mapped[str] = mapped_column(String(63))
    region: Mapped[str | None] = mapped_column(String(64), default=None)
    prefix: Mapped[str] = mapped_column(String(200), default="")
    """Where in the bucket the gateway keeps its objects (``remotegpu/``); empty: the bucket's root."""
    public: Mapped[bool] = mapped_column(Boolean, default=False)
    """Reachable from outside the site (a public cloud store): where external users' uploads go."""
    priority: Mapped[int] = mapped_column(Integer, default=100)
    """Lower is preferred (routing: gateway.datasets.routing)."""
    weight: Mapped[int] = mapped_column(Integer, default=100)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    access_key_sealed: Mapped[str] = mapped_column(Text)
    secret_key_sealed: Mapped[str] = mapped_column(Text)
    health: Mapped[str] = mapped_column(String(16), default="unknown")
    latency_ms: Mapped[float | None] = mapped_column(Float, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    checked_at: Mapped[datetime | None] = mapped_column(default=None)


def new_id() -> str:
    return uuid.uuid4().hex


DATASET = "dataset"
MODEL = "model"
KINDS = (DATASET, MODEL)
UPLOADING, READY, SYNCING, ERROR = "uploading", "ready", "syncing", "error"


class Dataset(TimestampMixin, SoftDeleteMixin, Base):
    """A dataset or model of a workspace: its name and description; its files are in its versions."""

    __tablename__ = "datasets"
    __table_args__ = (
        Index(
            "uq_datasets_name_live",
            "workspace_id",
            "kind",
            "name",
            unique=True,
            sqlite_where=LIVE,
            postgresql_where=LIVE,
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    shared_with: Mapped[list[int]] = mapped_column(JSON, default=list)
    """Ids of workspaces that may read it (read-only)."""
    created_by: Mapped[int] = mapped_column(ForeignKey("users.id"))


class DatasetVersion(TimestampMixin, Base):
    """One immutable set of files once ``ready``; its objects live under ``prefix`` in every replica's store."""

    __tablename__ = "dataset_versions"
    __table_args__ = (Index("uq_dataset_versions_number", "dataset_id", "version", unique=True),)

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=UPLOADING)
    primary_source_id: Mapped[int] = mapped_column(ForeignKey("storage_sources.id"))
    prefix: Mapped[str] = mapped_column(String(300))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    file_count: Mapped[int] = mapped_column(Integer, default=0)
    ready_at: Mapped[datetime | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)


class DatasetFile(Base):
    """The manifest: one completed object of a version, with the checksum the uploader computed (also in the
    object's metadata, ``x-amz-meta-sha256``: replicas are compared by it, never by ETag)."""

    __tablename__ = "dataset_files"
    __table_args__ = (Index("uq_dataset_files_path", "version_id", "path", unique=True),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id"), index=True)
    path: Mapped[str] = mapped_column(String(1024))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))


class Upload(TimestampMixin, Base):
    """One multipart upload of one file to the version's primary store (S3's upload id kept to resume it)."""

    __tablename__ = "dataset_uploads"
    __table_args__ = (
        Index("uq_dataset_uploads_open", "version_id", "path", unique=True, sqlite_where=OPEN, postgresql_where=OPEN),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id"), index=True)
    path: Mapped[str] = mapped_column(String(1024))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    part_size: Mapped[int] = mapped_column(BigInteger)
    s3_upload_id: Mapped[str] = mapped_column(String(1024))
    status: Mapped[str] = mapped_column(String(16), default="open")
    created_by: Mapped[int] = mapped_column(ForeignKey("users.id"))


class Replica(TimestampMixin, Base):
    """A version's copy in one store: ``ready`` once every file of the manifest is there with its checksum."""

    __tablename__ = "dataset_replicas"
    __table_args__ = (Index("uq_dataset_replicas", "version_id", "source_id", unique=True),)

    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id"), index=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("storage_sources.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=UPLOADING)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    synced_at: Mapped[datetime | None] = mapped_column(default=None)


# --- sync ---------------------------------------------------------------------------------------------------

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
TASK_STATUSES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)
OPEN_TASK = text("status IN ('queued', 'running')")
REALTIME, SCHEDULED, MANUAL = "realtime", "scheduled", "manual"
POLICIES = (REALTIME, SCHEDULED, MANUAL)
ONE_WAY, TWO_WAY = "one-way", "two-way"
FULL, INCREMENTAL = "full", "incremental"
COPYING, VERIFIED = "copying", "verified"


class SyncTask(TimestampMixin, Base):
    """Copy one version's files from one store to another (gateway.datasets.sync). Workers claim a task with a
    lease (``lease_owner`` until ``lease_until``, renewed while it runs); a failed attempt is retried after
    ``next_attempt_at`` (exponential backoff), three attempts in all. At most one open (queued or running) task
    per version and target. A two-way sync is two one-way tasks, each naming the other (``pair_id``)."""

    __tablename__ = "sync_tasks"
    __table_args__ = (
        Index(
            "uq_sync_tasks_open",
            "version_id",
            "target_id",
            unique=True,
            sqlite_where=OPEN_TASK,
            postgresql_where=OPEN_TASK,
        ),
        Index("ix_sync_tasks_due", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id"), index=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("storage_sources.id"))
    target_id: Mapped[int] = mapped_column(ForeignKey("storage_sources.id"), index=True)
    policy: Mapped[str] = mapped_column(String(16))
    direction: Mapped[str] = mapped_column(String(16), default=ONE_WAY)
    pair_id: Mapped[int | None] = mapped_column(Integer, default=None)
    """The other direction's task of a two-way sync."""
    mode: Mapped[str] = mapped_column(String(16), default=INCREMENTAL)
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    """Attempts started (counted when claimed, so a worker that dies mid-task uses one up too)."""
    not_before: Mapped[datetime | None] = mapped_column(default=None)
    """A scheduled task's time (it runs once due)."""
    next_attempt_at: Mapped[datetime] = mapped_column()
    lease_owner: Mapped[str | None] = mapped_column(String(128), default=None)
    lease_until: Mapped[datetime | None] = mapped_column(default=None)
    objects_total: Mapped[int] = mapped_column(Integer, default=0)
    objects_done: Mapped[int] = mapped_column(Integer, default=0)
    """Files the target holds as the manifest says (copied, or found there already)."""
    objects_copied: Mapped[int] = mapped_column(Integer, default=0)
    """Files this task copied, in all its attempts (``bytes_copied`` likewise)."""
    bytes_total: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_copied: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_per_second: Mapped[float | None] = mapped_column(Float, default=None)
    """Of the last attempt: bytes copied over its time so far."""
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), default=None)


class SyncObject(Base):
    """What the gateway knows of one file of a version in one store: ``verified`` (its size and checksum
    metadata were checked; ``etag`` is how the store listed it then, so an unchanged listing needs no HEAD), or
    ``copying`` as a multipart upload (``upload_id``) whose finished parts' ETags are in ``parts``: a resumed copy
    sends only the others."""

    __tablename__ = "sync_objects"
    __table_args__ = (Index("uq_sync_objects_path", "version_id", "target_id", "path", unique=True),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id"))
    target_id: Mapped[int] = mapped_column(ForeignKey("storage_sources.id"), index=True)
    path: Mapped[str] = mapped_column(String(1024))
    status: Mapped[str] = mapped_column(String(16))
    task_id: Mapped[int | None] = mapped_column(ForeignKey("sync_tasks.id"), index=True, default=None)
    """The task that last wrote it."""
    size: Mapped[int] = mapped_column(BigInteger)
    etag: Mapped[str | None] = mapped_column(String(200), default=None)
    upload_id: Mapped[str | None] = mapped_column(String(1024), default=None)
    part_size: Mapped[int | None] = mapped_column(BigInteger, default=None)
    parts: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    """Finished parts of ``upload_id``: part number (as text) -> ETag."""
    parts_copied: Mapped[int] = mapped_column(Integer, default=0)
    """Parts sent in all (every attempt): a resume that skips finished parts adds only the rest."""
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
