"""The ledger: entries are appended with unique keys (a second write of one is a no-op) and each workspace's
balance moves with them in the same transaction. Synchronous units of work for ``Database.run``."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec
from sqlalchemy import JSON, Column, Table, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from gateway.billing.models import Balance, LedgerEntry
from gateway.billing.money import ZERO, Money
from gateway.db.base import utcnow

ENTRIES: Table = LedgerEntry.__table__  # type: ignore[assignment]
BALANCES: Table = Balance.__table__  # type: ignore[assignment]


def _insert(session: Session, table: Table) -> Any:
    return (postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert)(table)


def _default(column: Column[Any]) -> Any:
    """The value SQLAlchemy would give a column left out of an INSERT (its Python-side default, else None)."""
    default = column.default
    if default is None:
        return None
    return default.arg(None) if default.is_callable else default.arg  # type: ignore[attr-defined]


_TYPMOD = re.compile(r"\(.*?\)")


def insert_rows(
    session: Session,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    returning: Sequence[str],
    skip_conflicts_on: str | None = None,
) -> Sequence[Any]:
    """INSERT ``rows`` (column values; a column a row leaves out gets its default, as with SQLAlchemy's
    ``insert()``) and return ``returning`` of each row written, in no particular order; with
    ``skip_conflicts_on`` a row whose value of that unique column is taken is skipped (``ON CONFLICT DO
    NOTHING``) and not returned.

    On PostgreSQL this is one statement with one parameter, the rows as a JSON document (``INSERT ... SELECT
    FROM json_to_recordset(...)``), where SQLAlchemy's executemany sends a multi-row VALUES with a placeholder
    per value that psycopg rewrites in Python (11 of 23 s of a 20,000-record ingest); arrays per column
    (``unnest``) still cost 4 s in psycopg's Python array dumper. Values first go through the columns' own bind
    processing (Money to units, UTC datetimes). Elsewhere: SQLAlchemy's executemany."""
    if not rows:
        return []
    dialect = session.get_bind().dialect
    if dialect.name != "postgresql":
        statement = _insert(session, table)
        if skip_conflicts_on is not None:
            statement = statement.on_conflict_do_nothing(index_elements=[table.c[skip_conflicts_on]])
        return session.execute(statement.returning(*(table.c[n] for n in returning)), list(rows)).all()
    given = {name for row in rows for name in row}
    columns = [c for c in table.c if c.name in given or c.default is not None]
    quote = dialect.identifier_preparer.quote
    values: dict[str, list[Any]] = {}
    for column in columns:
        default = None if all(column.name in row for row in rows) else _default(column)
        process = None if isinstance(column.type, JSON) else column.type.bind_processor(dialect)
        values[column.name] = [
            process(v) if process is not None else v for v in (row.get(column.name, default) for row in rows)
        ]
    document = msgspec.json.encode([dict(zip(values, row, strict=True)) for row in zip(*values.values(), strict=True)])
    names = ", ".join(quote(c.name) for c in columns)
    # each column as its type without a length: an over-long value fails on assignment, as with VALUES
    declared = ", ".join(f"{quote(c.name)} {_TYPMOD.sub('', c.type.compile(dialect))}" for c in columns)
    conflict = f" ON CONFLICT ({quote(skip_conflicts_on)}) DO NOTHING" if skip_conflicts_on is not None else ""
    statement = text(  # identifiers from the table, quoted; the values are one bound JSON document
        f"INSERT INTO {quote(table.name)} ({names}) SELECT {names} "  # noqa: S608
        f"FROM json_to_recordset(CAST(:rows AS JSON)) AS t({declared}){conflict} "
        f"RETURNING {', '.join(quote(n) for n in returning)}"
    ).columns(*(table.c[n] for n in returning))
    params = {"rows": document.decode()}
    return session.execute(statement, params).all()


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
    written = insert_rows(
        session,
        ENTRIES,
        [{"created_at": now, **entry} for entry in entries],
        returning=("workspace_id", "amount"),
        skip_conflicts_on="key",
    )
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
