from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db.base import Base


class ClusterSnapshot(Base):
    """One row: the nodes and partitions the poller last read (Slurm's answer, as slurm.records builtins)."""

    __tablename__ = "cluster_snapshot"

    singleton: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    """Always 1."""
    cluster: Mapped[str | None] = mapped_column(String(64), default=None)
    updated_at: Mapped[datetime | None] = mapped_column(default=None)
    """When nodes and partitions were last read."""
    checked_at: Mapped[datetime] = mapped_column()
    """When they were last asked for (successfully or not)."""
    error: Mapped[str | None] = mapped_column(Text, default=None)
    """Why the last read failed; None when it succeeded."""
    nodes: Mapped[list[Any]] = mapped_column(JSON, default=list)
    partitions: Mapped[list[Any]] = mapped_column(JSON, default=list)
