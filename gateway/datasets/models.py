"""The datasets domain's tables: the S3 stores the site configures (storage sources)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Float, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db.base import Base, TimestampMixin

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
