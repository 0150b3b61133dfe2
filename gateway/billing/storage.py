"""Daily storage charges: what each workspace's datasets and models hold, charged once per UTC day.

At the first billing cycle after a day ends, each workspace's stored bytes are measured (the files of its live
datasets' and models' versions, ready or uploading; each version once, in its primary store, or once per ready
replica where ``storage_billing_copies`` is ``all``) and one ``storage`` ledger entry per workspace is posted for
that day at the ``storage`` price (per GB-day) valid when the day began. Its key, ``storage:{workspace}:{day}``,
makes a second run of the same day a no-op: a crash or two workers charge a day once. The note says how many
bytes were charged, so the bill shows what it was for.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gateway.billing import ledger
from gateway.billing.ingest import price_books
from gateway.billing.models import STORAGE
from gateway.billing.rating import rate_storage
from gateway.datasets.models import READY, Dataset, DatasetFile, DatasetVersion, Replica
from gateway.workspaces.models import Workspace


def stored_bytes_by_workspace(session: Session, copies: Literal["primary", "all"] = "primary") -> dict[int, int]:
    """Bytes each workspace stores now (workspaces storing nothing are left out)."""
    per_version = (
        select(DatasetFile.version_id, func.sum(DatasetFile.size).label("size"))
        .group_by(DatasetFile.version_id)
        .subquery()
    )
    weight = func.count(Replica.id) if copies == "all" else None
    query = (
        select(Dataset.workspace_id, per_version.c.size, *([weight] if weight is not None else []))
        .join(DatasetVersion, DatasetVersion.dataset_id == Dataset.id)
        .join(per_version, per_version.c.version_id == DatasetVersion.id)
        .where(Dataset.deleted_at.is_(None))
    )
    if weight is not None:
        query = query.join(Replica, (Replica.version_id == DatasetVersion.id) & (Replica.status == READY)).group_by(
            Dataset.workspace_id, DatasetVersion.id, per_version.c.size
        )
    totals: dict[int, int] = {}
    for row in session.execute(query):
        size = int(row[1] or 0) * (int(row[2]) if weight is not None else 1)
        totals[row[0]] = totals.get(row[0], 0) + size
    return {ws: size for ws, size in totals.items() if size > 0}


def charge_day(session: Session, day: date, copies: Literal["primary", "all"] = "primary") -> int:
    """Unit of work: the ``storage`` entries of ``day`` (a UTC day that has ended); how many were new."""
    start = datetime.combine(day, time(), tzinfo=UTC)
    stored = stored_bytes_by_workspace(session, copies)
    if not stored:
        return 0
    books = price_books(session)
    currencies = dict(session.execute(select(Workspace.id, Workspace.currency).where(Workspace.id.in_(stored))).all())
    entries = []
    for workspace_id, size in sorted(stored.items()):
        book = books.get(currencies[workspace_id])
        if book is None:
            continue
        rating = rate_storage(size, 1, start, book)
        if rating.amount <= 0:
            continue
        entries.append(
            {
                "workspace_id": workspace_id,
                "key": f"storage:{workspace_id}:{day.isoformat()}",
                "kind": STORAGE,
                "amount": -rating.amount,
                "currency": currencies[workspace_id],
                "at": start + timedelta(days=1),
                "note": f"{size} bytes stored on {day.isoformat()}",
            }
        )
    return len(ledger.post(session, entries))  # one entry per workspace: the workspaces newly charged
