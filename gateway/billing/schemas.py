from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from gateway.billing.models import LedgerEntry, UsageRecord
from gateway.billing.models import Price as PriceRow
from gateway.billing.rating import unit_of
from gateway.schemas import Currency, whole

PriceResource = Annotated[
    str,
    msgspec.Meta(
        pattern=whole(r"gpu(:[A-Za-z0-9_.-]{1,64})?|cpu|mem|storage"),
        description="gpu (any GPU without a price of its type), gpu:TYPE, cpu (per core), mem (per GB), storage",
        examples=["gpu:a100"],
    ),
]
DecimalText = Annotated[
    str,
    msgspec.Meta(
        pattern=whole(r"[0-9]{1,12}(\.[0-9]{1,8})?"),
        description="a non-negative decimal number as text, at most 8 places (never a JSON number: money is never "
        "a float)",
        examples=["12.5"],
    ),
]
Amount = Annotated[
    str,
    msgspec.Meta(
        pattern=whole(r"-?[0-9]{1,12}(\.[0-9]{1,4})?"),
        description="an amount of money as text, at most 4 decimal places",
        examples=["100.00"],
    ),
]
Note = Annotated[str, msgspec.Meta(max_length=500)]


class PriceCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    resource: PriceResource
    amount: DecimalText
    """Per minute of one GPU, core or GB of memory; per day of one GB stored. At most 8 decimal places, >= 0."""
    currency: Currency
    valid_from: datetime | None = None
    """Now when absent; never in the past (a price change does not rewrite the past)."""


class PriceOut(msgspec.Struct, kw_only=True):
    id: int
    resource: str
    unit: str
    amount: str
    currency: str
    valid_from: datetime
    valid_until: datetime | None
    created_at: datetime

    @classmethod
    def of(cls, price: PriceRow) -> PriceOut:
        return cls(
            id=price.id,
            resource=price.resource,
            unit=unit_of(price.resource),
            amount=str(price.amount),
            currency=price.currency,
            valid_from=price.valid_from,
            valid_until=price.valid_until,
            created_at=price.created_at,
        )


class TopUpCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    amount: Amount
    """Positive, except for an ``adjustment`` (either sign, not zero)."""
    kind: Literal["topup", "credit", "refund", "adjustment"] = "topup"
    """``topup``: owners and platform admins; ``credit``, ``refund``, ``adjustment``: platform admins."""
    note: Note = ""


class EntryOut(msgspec.Struct, kw_only=True):
    id: int
    kind: str
    amount: str
    currency: str
    at: datetime
    created_at: datetime
    minutes: int
    gpu_minutes: int
    usage_id: int | None
    note: str

    @classmethod
    def of(cls, entry: LedgerEntry) -> EntryOut:
        return cls(
            id=entry.id,
            kind=entry.kind,
            amount=str(entry.amount),
            currency=entry.currency,
            at=entry.at,
            created_at=entry.created_at,
            minutes=entry.minutes,
            gpu_minutes=entry.gpu_minutes,
            usage_id=entry.usage_id,
            note=entry.note,
        )


class TopUpOut(msgspec.Struct, kw_only=True):
    entry: EntryOut
    balance: str
    status: str


class BalanceOut(msgspec.Struct, kw_only=True):
    workspace: str
    currency: str
    balance: str
    """The sum of the workspace's ledger, running work charged up to the last ingest."""
    status: str
    """``active``, ``overdue`` (balance below zero: new work refused, blocked in Slurm) or ``suspended``."""
    overdue_since: datetime | None
    suspend_at: datetime | None
    """When an overdue workspace is suspended if not topped up (the grace period's end)."""
    entries: int
    updated_at: datetime | None


class UsageOut(msgspec.Struct, kw_only=True):
    id: int
    slurm_job_id: int
    array_job_id: int | None
    array_task_id: int | None
    user: str
    resource_type: str
    resource_id: str | None
    name: str
    partition: str
    state: str
    gpu_type: str | None
    gpus: int
    cpus: int
    memory_mib: int
    start_time: datetime
    end_time: datetime | None
    elapsed_seconds: int
    minutes: int
    """Billed minutes so far (``ceil(elapsed / 60)``)."""
    amount: str
    currency: str
    final: bool
    """False while the job runs: its charge grows with each ingest."""

    @classmethod
    def of(cls, usage: UsageRecord) -> UsageOut:
        return cls(
            id=usage.id,
            slurm_job_id=usage.slurm_job_id,
            array_job_id=usage.array_job_id,
            array_task_id=usage.array_task_id,
            user=usage.posix_user,
            resource_type=usage.resource_type,
            resource_id=usage.resource_id,
            name=usage.name,
            partition=usage.partition,
            state=usage.state,
            gpu_type=usage.gpu_type,
            gpus=usage.gpus,
            cpus=usage.cpus,
            memory_mib=usage.memory_mib,
            start_time=usage.start_time,
            end_time=usage.end_time,
            elapsed_seconds=usage.elapsed_seconds,
            minutes=usage.minutes,
            amount=str(usage.amount),
            currency=usage.currency,
            final=usage.final,
        )


class ReportRow(msgspec.Struct, kw_only=True):
    key: str | None
    """The group: a user name, resource type, GPU type (null: no GPU) or day (YYYY-MM-DD, UTC)."""
    amount: str
    """Charged in the period (positive)."""
    minutes: int
    gpu_minutes: int
    jobs: int


class ReportOut(msgspec.Struct, kw_only=True):
    workspace: str
    currency: str
    start: datetime
    end: datetime
    group_by: str
    rows: list[ReportRow]
    total: str
    minutes: int
    gpu_minutes: int
