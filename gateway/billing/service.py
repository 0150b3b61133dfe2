"""Billing operations: prices, top-ups, balances, usage records, reports, and the workspace states money drives.

Overdue: a workspace whose balance falls below zero turns ``overdue`` (new jobs and environments get 402, and the
account sync blocks its Slurm account: GrpTRES ``cpu=0``, so nothing of it starts, even submitted with
``sbatch -A`` by hand); after ``billing_grace_hours`` it turns ``suspended`` (running environments stopped,
running jobs cancelled where ``billing_suspend_jobs`` is ``cancel``). A ledger entry that brings the balance back
to zero or above lifts both, in Slurm too at the next account sync. Each transition is audited. A suspension a
platform admin made (``status_reason`` ``admin``) is never lifted by money.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import structlog
from prometheus_client import Gauge
from sqlalchemy import BigInteger, bindparam, func, select, type_coerce, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from gateway.actor import Actor
from gateway.audit.writer import AUDIT_LOG, audit_row, record
from gateway.billing import ledger
from gateway.billing.models import (
    ADJUSTMENT,
    CREDIT,
    REFUND,
    STORAGE,
    TOPUP,
    USAGE,
    Balance,
    LedgerEntry,
    Price,
    UsageRecord,
)
from gateway.billing.money import PRICE_PLACES, ZERO, from_units, parse_decimal, quantize
from gateway.billing.schemas import BalanceOut, PriceCreate, ReportOut, ReportRow, TopUpCreate
from gateway.db.base import utcnow
from gateway.db.paging import AnySelect
from gateway.db.session import Database
from gateway.errors import Conflict, Forbidden, InvalidInput, PaymentRequired
from gateway.workspaces.access import WorkspaceAccess
from gateway.workspaces.models import Role, Workspace, WorkspaceStatus

log = structlog.get_logger("gateway.billing")
OVERDUE_WORKSPACES = Gauge("remotegpu_billing_overdue_workspaces", "Workspaces overdue or suspended for money")
BILLING = "billing"
"""``Workspace.status_reason`` of a state that money made (and money lifts)."""
MAX_AMOUNT = Decimal(10) ** 12
GROUPS = ("user", "resource_type", "gpu_type", "day")


# --- refusals ----------------------------------------------------------------------------------------------


def check_can_start(workspace: Workspace, what: str) -> None:
    """402 for an overdue workspace (or one suspended for money), 403 for one an admin suspended."""
    if workspace.status == WorkspaceStatus.ACTIVE:
        return
    if workspace.status_reason == BILLING or workspace.status == WorkspaceStatus.OVERDUE:
        raise PaymentRequired(
            f"workspace {workspace.slug!r} is {workspace.status.value}: its balance is below zero; "
            f"{what} are refused until it is topped up (POST .../billing/topups)"
        )
    raise Forbidden(f"workspace {workspace.slug!r} is {workspace.status.value}: {what} are refused")


# --- prices ------------------------------------------------------------------------------------------------


async def create_price(session: AsyncSession, actor: Actor, data: PriceCreate) -> Price:
    """A new price from ``valid_from`` on; the one it follows ends there. Never in the past."""
    if not actor.is_admin:
        raise Forbidden("only platform admins set prices")
    try:
        amount = parse_decimal(data.amount, places=PRICE_PLACES)
    except ValueError as exc:
        raise InvalidInput(str(exc), field="amount") from None
    if amount < 0:
        raise InvalidInput("a price cannot be negative", field="amount")
    now = utcnow()
    valid_from = (data.valid_from or now).astimezone(UTC)
    if data.valid_from is not None and data.valid_from.tzinfo is None:
        raise InvalidInput("valid_from needs a time zone offset", field="valid_from")
    if valid_from < now - timedelta(seconds=60):
        raise InvalidInput("a price cannot start in the past: what was charged keeps its prices", field="valid_from")
    latest = await session.scalar(
        select(Price)
        .where(Price.currency == data.currency, Price.resource == data.resource)
        .order_by(Price.valid_from.desc())
        .limit(1)
        .with_for_update()
    )
    if latest is not None and latest.valid_from >= valid_from:
        raise Conflict(
            f"{data.resource} in {data.currency} already has a price from {latest.valid_from.isoformat()}: "
            "a new one must start later",
            field="valid_from",
        )
    if latest is not None and (latest.valid_until is None or latest.valid_until > valid_from):
        latest.valid_until = valid_from
    price = Price(
        resource=data.resource, currency=data.currency, amount=amount, valid_from=valid_from, created_by=actor.user_id
    )
    session.add(price)
    await session.flush()
    record(
        session,
        actor,
        "price.create",
        target_type="price",
        target=str(price.id),
        details={"resource": price.resource, "currency": price.currency, "amount": str(amount),
                 "valid_from": valid_from.isoformat()},
    )  # fmt: skip
    await session.commit()
    return price


async def list_prices(
    session: AsyncSession, *, currency: str | None, resource: str | None, at: datetime | None
) -> Sequence[Price]:
    query = select(Price).order_by(Price.currency, Price.resource, Price.valid_from)
    if currency:
        query = query.where(Price.currency == currency)
    if resource:
        query = query.where(Price.resource == resource)
    if at is not None:
        query = query.where(Price.valid_from <= at, (Price.valid_until.is_(None)) | (Price.valid_until > at))
    return list(await session.scalars(query))


# --- balance states ----------------------------------------------------------------------------------------


def settle_states(
    session: Session, now: datetime, *, grace: timedelta, workspace_ids: Sequence[int] | None = None
) -> list[int]:
    """Move workspaces between active, overdue and suspended by their balances (one transaction: the caller's);
    returns the ids of workspaces suspended now (their running work is to be stopped)."""
    query = (
        select(Workspace, Balance)
        .join(Balance, Balance.workspace_id == Workspace.id)
        .where(Workspace.deleted_at.is_(None))
    )
    if workspace_ids is not None:
        query = query.where(Workspace.id.in_(list(workspace_ids)))
    suspended: list[int] = []
    system = Actor.system(BILLING)
    for workspace, balance in session.execute(query).all():
        old = workspace.status
        by_money = workspace.status_reason == BILLING or old == WorkspaceStatus.OVERDUE
        if balance.amount < 0:
            if balance.overdue_since is None:
                balance.overdue_since = now
            if old == WorkspaceStatus.ACTIVE:
                workspace.status, workspace.status_reason = WorkspaceStatus.OVERDUE, BILLING
            elif old == WorkspaceStatus.OVERDUE and by_money and balance.overdue_since + grace <= now:
                workspace.status, workspace.status_reason = WorkspaceStatus.SUSPENDED, BILLING
                suspended.append(workspace.id)
        else:
            balance.overdue_since = None
            if old != WorkspaceStatus.ACTIVE and by_money:
                workspace.status, workspace.status_reason = WorkspaceStatus.ACTIVE, None
        if workspace.status != old:
            session.execute(
                AUDIT_LOG.insert(),
                audit_row(
                    system,
                    f"workspace.{workspace.status.value}",
                    target_type="workspace",
                    target=workspace.slug,
                    workspace_id=workspace.id,
                    details={"from": old.value, "balance": str(balance.amount), "currency": balance.currency},
                ),
            )
            log.info("workspace_billing_state", workspace=workspace.slug, old=old.value, new=workspace.status.value,
                     balance=str(balance.amount))  # fmt: skip
    OVERDUE_WORKSPACES.set(
        session.scalar(
            select(func.count())
            .select_from(Workspace)
            .where(Workspace.status != WorkspaceStatus.ACTIVE, Workspace.status_reason == BILLING)
        )
        or 0
    )
    return suspended


# --- top-ups, credits, balances ----------------------------------------------------------------------------


async def top_up(
    session: AsyncSession, access: WorkspaceAccess, data: TopUpCreate, *, idempotency_key: str | None, grace: timedelta
) -> tuple[LedgerEntry, Balance]:
    """Add money (or a platform admin's credit, refund or adjustment); lifts overdue at once when it covers it.
    With an ``Idempotency-Key`` a retry returns the entry the first request made."""
    if data.kind == TOPUP:
        access.require(Role.OWNER)
    elif not access.actor.is_admin:
        raise Forbidden(f"only platform admins make a {data.kind}")
    try:
        amount = parse_decimal(data.amount, places=4)
    except ValueError as exc:
        raise InvalidInput(str(exc), field="amount") from None
    if data.kind == ADJUSTMENT and amount == 0:
        raise InvalidInput("an adjustment cannot be zero", field="amount")
    if data.kind != ADJUSTMENT and amount <= 0:
        raise InvalidInput(f"a {data.kind} must be positive", field="amount")
    if abs(amount) >= MAX_AMOUNT:
        raise InvalidInput("amount too large", field="amount")
    workspace = access.workspace
    signed = -amount if data.kind == REFUND else amount  # a refund gives money back to the payer
    key = f"payment:{workspace.id}:{idempotency_key or uuid.uuid4().hex}"  # one key, whatever the kind
    now = utcnow()
    entry_values = {
        "workspace_id": workspace.id,
        "key": key,
        "kind": data.kind,
        "amount": signed,
        "currency": workspace.currency,
        "at": now,
        "actor_id": access.actor.user_id,
        "note": data.note,
    }

    def write(sync: Session) -> None:
        moved = ledger.post(sync, [entry_values], now=now)
        if moved:
            settle_states(sync, now, grace=grace, workspace_ids=[workspace.id])
            sync.execute(
                AUDIT_LOG.insert(),
                audit_row(
                    access.actor,
                    f"billing.{data.kind}",
                    target_type="workspace",
                    target=workspace.slug,
                    workspace_id=workspace.id,
                    details={"amount": str(signed), "currency": workspace.currency, "note": data.note},
                ),
            )

    await session.run_sync(write)
    await session.commit()
    entry = await session.scalar(select(LedgerEntry).where(LedgerEntry.key == key))
    if entry is None or entry.amount != signed or entry.kind != data.kind:
        raise Conflict("this Idempotency-Key was used for another top-up", field="Idempotency-Key")
    balance = await session.get_one(Balance, workspace.id, populate_existing=True)
    await session.refresh(workspace)
    return entry, balance


_BALANCE: AnySelect = select(
    type_coerce(Balance.amount, BigInteger), Balance.entries, Balance.updated_at, Balance.overdue_since
).where(Balance.workspace_id == bindparam("workspace_id"))
"""Built once: a balance read is one row by its key (``Database.rows``: no ORM session, no greenlet bridge)."""


async def balance(database: Database, access: WorkspaceAccess, *, grace: timedelta) -> BalanceOut:
    """The workspace's balance row (the ledger's sum, kept with it) and billing status: one indexed row."""
    workspace = access.workspace
    found = await database.rows(_BALANCE, {"workspace_id": workspace.id})
    units, entries, updated_at, overdue_since = found[0] if found else (0, 0, None, None)
    amount = from_units(units)  # the column as stored: whole ledger units
    if updated_at is not None and updated_at.tzinfo is None:
        updated_at = updated_at.replace(tzinfo=UTC)
    if overdue_since is not None and overdue_since.tzinfo is None:
        overdue_since = overdue_since.replace(tzinfo=UTC)
    return BalanceOut(
        workspace=workspace.slug,
        currency=workspace.currency,
        balance=str(quantize(amount)),
        status=workspace.status.value,
        overdue_since=overdue_since,
        suspend_at=overdue_since + grace if overdue_since and workspace.status == WorkspaceStatus.OVERDUE else None,
        entries=entries,
        updated_at=updated_at,
    )


async def entries(
    session: AsyncSession, access: WorkspaceAccess, *, kinds: Sequence[str], limit: int, offset: int
) -> tuple[Sequence[LedgerEntry], int | None]:
    access.require(Role.ADMIN)
    query = select(LedgerEntry).where(LedgerEntry.workspace_id == access.workspace.id)
    if kinds:
        query = query.where(LedgerEntry.kind.in_(list(kinds)))
    rows = await session.scalars(query.order_by(LedgerEntry.id.desc()).limit(limit).offset(offset))
    total = await session.scalar(select(func.count()).select_from(query.limit(1001).subquery()))
    return list(rows), (total if total is not None and total <= 1000 else None)


async def usage_records(
    session: AsyncSession,
    access: WorkspaceAccess,
    *,
    user: str | None,
    resource_type: str | None,
    start: datetime | None,
    end: datetime | None,
    limit: int,
    offset: int,
) -> tuple[Sequence[UsageRecord], int | None]:
    """Usage records, newest first; members see their own only."""
    query = select(UsageRecord).where(UsageRecord.workspace_id == access.workspace.id)
    if not access.allows(Role.ADMIN):
        if user and user != access.actor.posix_name:
            raise Forbidden("members see their own usage records only", field="user")
        query = query.where(UsageRecord.posix_user == (access.actor.posix_name or ""))
    elif user:
        query = query.where(UsageRecord.posix_user == user)
    if resource_type:
        query = query.where(UsageRecord.resource_type == resource_type)
    if start is not None:
        query = query.where((UsageRecord.end_time.is_(None)) | (UsageRecord.end_time >= start))
    if end is not None:
        query = query.where(UsageRecord.start_time < end)
    rows = await session.scalars(
        query.order_by(UsageRecord.start_time.desc(), UsageRecord.id.desc()).limit(limit).offset(offset)
    )
    total = await session.scalar(select(func.count()).select_from(query.limit(1001).subquery()))
    return list(rows), (total if total is not None and total <= 1000 else None)


# --- reports -----------------------------------------------------------------------------------------------


async def report(
    session: AsyncSession, access: WorkspaceAccess, *, start: datetime, end: datetime, group_by: str
) -> ReportOut:
    """Charges posted for usage in ``[start, end)`` (an entry's ``at``: the end of the minutes it charges),
    grouped; the rows add up to the total exactly."""
    access.require(Role.ADMIN)
    if end <= start:
        raise InvalidInput("'to' must be after 'from'", field="to")
    column: Any = {
        "user": UsageRecord.posix_user,
        "resource_type": UsageRecord.resource_type,
        "gpu_type": UsageRecord.gpu_type,
        "day": LedgerEntry.at,
    }[group_by]
    query = (
        select(column, LedgerEntry.amount, LedgerEntry.minutes, LedgerEntry.gpu_minutes, LedgerEntry.usage_id)
        .outerjoin(UsageRecord, UsageRecord.id == LedgerEntry.usage_id)
        .where(
            LedgerEntry.workspace_id == access.workspace.id,
            LedgerEntry.kind.in_([USAGE, STORAGE]),
            LedgerEntry.at >= start,
            LedgerEntry.at < end,
        )
    )
    groups: dict[str | None, list[Any]] = {}
    for key, amount, minutes, gpu_minutes, usage_id in (await session.execute(query)).all():
        name = key.astimezone(UTC).date().isoformat() if group_by == "day" else key
        group = groups.setdefault(name, [ZERO, 0, 0, set()])
        group[0] += -amount
        group[1] += minutes
        group[2] += gpu_minutes
        if usage_id is not None:
            group[3].add(usage_id)
    rows = [
        ReportRow(key=k, amount=str(v[0]), minutes=v[1], gpu_minutes=v[2], jobs=len(v[3]))
        for k, v in sorted(groups.items(), key=lambda item: (item[0] is None, item[0] or ""))
    ]
    return ReportOut(
        workspace=access.workspace.slug,
        currency=access.workspace.currency,
        start=start,
        end=end,
        group_by=group_by,
        rows=rows,
        total=str(sum((v[0] for v in groups.values()), ZERO)),
        minutes=sum(v[1] for v in groups.values()),
        gpu_minutes=sum(v[2] for v in groups.values()),
    )


def report_csv(out: ReportOut) -> str:
    """The report as CSV: a header, one line per group, then the total (amounts as exact decimal text)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([out.group_by, "amount", "currency", "minutes", "gpu_minutes", "jobs"])
    for row in out.rows:
        writer.writerow([row.key or "", row.amount, out.currency, row.minutes, row.gpu_minutes, row.jobs])
    writer.writerow(["total", out.total, out.currency, out.minutes, out.gpu_minutes, ""])
    return buffer.getvalue()


def mark_admin_status(workspace: Workspace, status: WorkspaceStatus) -> None:
    """A status a platform admin set: money does not lift it (``active`` clears the mark)."""
    workspace.status = status
    workspace.status_reason = None if status == WorkspaceStatus.ACTIVE else "admin"


__all__ = ["CREDIT", "GROUPS", "check_can_start", "report_csv", "settle_states", "update"]
