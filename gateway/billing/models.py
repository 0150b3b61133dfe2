"""Billing's tables: prices, one usage record per accounted Slurm job, the append-only ledger, each workspace's
balance (kept with the ledger, in the same transactions) and the ingest's watermark per cluster."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.billing.money import ZERO, DecimalText, Money
from gateway.db.base import Base, utcnow

_ID = BigInteger().with_variant(Integer, "sqlite")

# resource types of usage records
TRAINING = "training"
ENVIRONMENT = "environment"
INFERENCE = "inference"
STORAGE = "storage"
OTHER = "other"
"""A job under a workspace's account that the gateway did not submit (``sbatch -A`` on a login node)."""
RESOURCE_TYPES = (TRAINING, ENVIRONMENT, INFERENCE, STORAGE, OTHER)

# ledger entry kinds: charges are negative, the rest positive unless a refund or adjustment says otherwise
USAGE = "usage"
TOPUP = "topup"
CREDIT = "credit"
REFUND = "refund"
ADJUSTMENT = "adjustment"
ENTRY_KINDS = (USAGE, STORAGE, TOPUP, CREDIT, REFUND, ADJUSTMENT)


class Price(Base):
    """One price of one resource in one currency, valid from ``valid_from`` until the next one's start (its
    ``valid_until``, set when the next is made). Rows are never changed otherwise: the past keeps its prices."""

    __tablename__ = "prices"
    __table_args__ = (Index("ix_prices_currency_resource_from", "currency", "resource", "valid_from", unique=True),)

    id: Mapped[int] = mapped_column(primary_key=True)
    resource: Mapped[str] = mapped_column(String(80))
    """``gpu``, ``gpu:TYPE``, ``cpu``, ``mem`` or ``storage`` (gateway.billing.rating)."""
    currency: Mapped[str] = mapped_column(String(3))
    amount: Mapped[Decimal] = mapped_column(DecimalText())
    valid_from: Mapped[datetime]
    valid_until: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), default=None)


class UsageRecord(Base):
    """A Slurm job (an array task is a job of its own) as accounting reported it, rated.

    ``minutes`` and ``amount`` are what has been charged so far (the ledger's entries for it add up to
    ``-amount``); ``final`` once the record of the ended job was charged. Keyed by (cluster, Slurm job id,
    submit time): a cluster whose state was wiped numbers its jobs from 1 again."""

    __tablename__ = "usage_records"

    id: Mapped[int] = mapped_column(_ID, primary_key=True)
    key: Mapped[str] = mapped_column(String(160), unique=True)
    cluster: Mapped[str] = mapped_column(String(64))
    slurm_job_id: Mapped[int] = mapped_column(BigInteger)
    array_job_id: Mapped[int | None] = mapped_column(BigInteger, default=None)
    array_task_id: Mapped[int | None] = mapped_column(default=None)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), default=None)
    posix_user: Mapped[str] = mapped_column(String(64))
    account: Mapped[str] = mapped_column(String(64))
    resource_type: Mapped[str] = mapped_column(String(16))
    resource_id: Mapped[str | None] = mapped_column(String(32), default=None)
    """The training job's or environment's id; None for ``other``."""
    job_id: Mapped[str | None] = mapped_column(String(32), default=None)
    """The gateway's job (``jobs.id``: an environment's session) where the gateway made it."""
    name: Mapped[str] = mapped_column(String(200), default="")
    partition: Mapped[str] = mapped_column(String(64), default="")
    state: Mapped[str] = mapped_column(String(32))
    gpu_type: Mapped[str | None] = mapped_column(String(64), default=None)
    gpus: Mapped[int] = mapped_column(default=0)
    cpus: Mapped[int] = mapped_column(default=0)
    memory_mib: Mapped[int] = mapped_column(BigInteger, default=0)
    tres: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """AllocTRES as accounting reported it."""
    submit_time: Mapped[datetime | None] = mapped_column(default=None)
    start_time: Mapped[datetime]
    end_time: Mapped[datetime | None] = mapped_column(default=None)
    elapsed_seconds: Mapped[int] = mapped_column(default=0)
    minutes: Mapped[int] = mapped_column(default=0)
    amount: Mapped[Decimal] = mapped_column(Money(), default=ZERO)
    currency: Mapped[str] = mapped_column(String(3))
    final: Mapped[bool] = mapped_column(default=False)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


Index("ix_usage_records_workspace_start", UsageRecord.workspace_id, UsageRecord.start_time)
Index("ix_usage_records_open", UsageRecord.final, UsageRecord.workspace_id)


class LedgerEntry(Base):
    """One movement of a workspace's money. Append-only: never updated, never deleted. ``key`` is unique, so
    writing the same entry twice (a re-run ingest, a retried top-up) is a no-op."""

    __tablename__ = "ledger_entries"

    id: Mapped[int] = mapped_column(_ID, primary_key=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id"))
    key: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[Decimal] = mapped_column(Money())
    """Signed: charges are negative."""
    currency: Mapped[str] = mapped_column(String(3))
    at: Mapped[datetime]
    """When the money moved: for usage, the end of the minutes it charges (reports group by this)."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    usage_id: Mapped[int | None] = mapped_column(ForeignKey("usage_records.id"), default=None)
    minutes: Mapped[int] = mapped_column(default=0)
    """Billed minutes this entry adds to its usage record."""
    gpu_minutes: Mapped[int] = mapped_column(BigInteger, default=0)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), default=None)
    note: Mapped[str] = mapped_column(Text, default="")


Index("ix_ledger_entries_workspace_at", LedgerEntry.workspace_id, LedgerEntry.at)


class Balance(Base):
    """A workspace's balance: the sum of its ledger entries, updated in each entry's transaction (a read is one
    row, whatever the ledger's length; ``gateway.billing.ledger.verify`` sums the ledger to check it)."""

    __tablename__ = "billing_balances"

    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True)
    amount: Mapped[Decimal] = mapped_column(Money(), default=ZERO)
    currency: Mapped[str] = mapped_column(String(3))
    entries: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    overdue_since: Mapped[datetime | None] = mapped_column(default=None)
    """When the balance went below zero (None while it is not); the grace period counts from here."""


class IngestCursor(Base):
    """Where the accounting ingest of one cluster stands, and who runs it (a lease: one ingest at a time)."""

    __tablename__ = "billing_ingest_cursors"

    cluster: Mapped[str] = mapped_column(String(64), primary_key=True)
    watermark: Mapped[datetime | None] = mapped_column(default=None)
    """The instant the last complete ingest asked sacct at; the next asks from here minus the overlap."""
    lease_owner: Mapped[str | None] = mapped_column(String(64), default=None)
    lease_until: Mapped[datetime | None] = mapped_column(default=None)
    last_run_at: Mapped[datetime | None] = mapped_column(default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    records: Mapped[int] = mapped_column(BigInteger, default=0)
    """Records ingested so far (all runs)."""
