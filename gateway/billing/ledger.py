"""The ledger: entries are appended with unique keys (a second write of one is a no-op) and each workspace's
balance moves with them in the same transaction. Synchronous units of work for ``Database.run``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Table, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from gateway.billing.models import Balance, LedgerEntry
from gateway.billing.money import ZERO, Money
from gateway.db.base import utcnow

ENTRIES: Table = LedgerEntry.__table__  # type: ignore[assignment]
BALANCES: Table = Balance.__table__  # type: ignore[assignment]


def _insert(session: Session, table: Table) -> Any:
    return (postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert)(table)


@dataclass(frozen=True, slots=True)
class Moved:
    """What posting changed for one workspace."""

    workspace_id: int
    amount: Decimal
    """The sum of the entries written (those whose key was new)."""
    balance: Decimal
    before: Decimal


def post(session: Session, entries: Sequence[Mapping[str, Any]], *, now: datetime | None = None) -> dict[int, Moved]:
    """Append ``entries`` (LedgerEntry column values, each with a ``key``) and move their workspaces' balances by
    those that were new; entries whose key is already in the ledger are skipped. One transaction: the caller's.
    Returns what moved, by workspace (only workspaces that had new entries)."""
    if not entries:
        return {}
    now = now or utcnow()
    statement = (
        _insert(session, ENTRIES)
        .on_conflict_do_nothing(index_elements=[ENTRIES.c.key])
        .returning(ENTRIES.c.workspace_id, ENTRIES.c.amount)
    )
    written = session.execute(statement, [{"created_at": now, **entry} for entry in entries]).all()
    sums: dict[int, tuple[Decimal, int]] = {}
    for workspace_id, amount in written:
        total, count = sums.get(workspace_id, (ZERO, 0))
        sums[workspace_id] = (total + amount, count + 1)
    currencies = {e["workspace_id"]: e["currency"] for e in entries}
    moved: dict[int, Moved] = {}
    for workspace_id, (amount, count) in sorted(sums.items()):  # in id order: two posters never deadlock
        upsert = _insert(session, BALANCES).values(
            workspace_id=workspace_id, amount=amount, entries=count, currency=currencies[workspace_id], updated_at=now
        )
        upsert = upsert.on_conflict_do_update(
            index_elements=[BALANCES.c.workspace_id],
            set_={
                "amount": BALANCES.c.amount + upsert.excluded.amount,
                "entries": BALANCES.c.entries + upsert.excluded.entries,
                "updated_at": now,
            },
        ).returning(BALANCES.c.amount)
        balance = session.execute(upsert).scalar_one()
        moved[workspace_id] = Moved(workspace_id=workspace_id, amount=amount, balance=balance, before=balance - amount)
    return moved


def balance_of(session: Session, workspace_id: int) -> Balance | None:
    return session.get(Balance, workspace_id)


def ledger_sums(session: Session, workspace_ids: Iterable[int] | None = None) -> dict[int, tuple[Decimal, int]]:
    """The sum and count of each workspace's ledger entries, from the entries themselves."""
    query = select(LedgerEntry.workspace_id, func.sum(LedgerEntry.amount, type_=Money()), func.count()).group_by(
        LedgerEntry.workspace_id
    )
    if workspace_ids is not None:
        query = query.where(LedgerEntry.workspace_id.in_(list(workspace_ids)))
    return {ws: (total or ZERO, count) for ws, total, count in session.execute(query).all()}


def verify(session: Session) -> list[str]:
    """Each balance checked against the sum of its ledger: the differences, in words (empty: all agree)."""
    sums = ledger_sums(session)
    problems: list[str] = []
    for balance in session.scalars(select(Balance)):
        total, count = sums.pop(balance.workspace_id, (ZERO, 0))
        if (balance.amount, balance.entries) != (total, count):
            problems.append(
                f"workspace {balance.workspace_id}: balance {balance.amount} over {balance.entries} entries, "
                f"ledger {total} over {count}"
            )
    problems += [f"workspace {ws}: ledger {t} over {c} entries and no balance" for ws, (t, c) in sums.items()]
    return problems
