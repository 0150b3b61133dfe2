"""Daily storage charges on both databases: what the workspace's datasets hold, one ledger entry per day, at the
price valid when the day began; a day charged twice is charged once; deleted datasets cost nothing."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import partial

import httpx
from sqlalchemy import select

from gateway.accounts.models import User
from gateway.billing.models import LedgerEntry, Price
from gateway.billing.storage import charge_day
from gateway.datasets.models import READY, Dataset, DatasetFile, DatasetVersion, Replica, StorageSource
from gateway.db.session import Database
from gateway.workspaces.models import Workspace
from tests.conftest import UserFactory

GIB = 1024**3
DAY = date(2026, 11, 30)


async def _stored(database: Database, slug: str, sizes: list[int], *, replicas: int = 1, deleted: bool = False) -> None:
    """A dataset of ``slug`` with one version of files of ``sizes``, ready in ``replicas`` stores."""
    async with database.session() as session:
        workspace = (await session.scalars(select(Workspace).where(Workspace.slug == slug))).one()
        stores = []
        for i in range(replicas):
            name = f"{slug}-store-{i}"
            store = await session.scalar(select(StorageSource).where(StorageSource.name == name))
            if store is None:
                store = StorageSource(
                    name=name, type="generic", endpoint="http://127.0.0.1:9", bucket="b", access_key_sealed="x",
                    secret_key_sealed="x",
                )  # fmt: skip
                session.add(store)
                await session.flush()
            stores.append(store)
        owner = await session.scalar(select(User.id).where(User.name == "alice"))
        dataset = Dataset(workspace_id=workspace.id, kind="dataset", name=f"d{len(sizes)}{deleted}", created_by=owner)
        if deleted:
            dataset.deleted_at = datetime.now(UTC)
        session.add(dataset)
        await session.flush()
        version = DatasetVersion(
            dataset_id=dataset.id, version=1, status=READY, primary_source_id=stores[0].id, prefix="p/"
        )
        session.add(version)
        await session.flush()
        session.add_all(
            DatasetFile(version_id=version.id, path=f"f{i}", size=s, sha256="0" * 64) for i, s in enumerate(sizes)
        )
        session.add_all(Replica(version_id=version.id, source_id=s.id, status=READY) for s in stores)
        await session.commit()


async def test_a_day_of_storage_is_charged_once_per_workspace(
    client: httpx.AsyncClient, make_user: UserFactory, clean_database: Database
) -> None:
    alice = await make_user("alice")
    for slug in ("vision", "speech", "empty"):
        assert (
            await client.post("/api/v1/workspaces", json={"slug": slug, "name": slug, "currency": "CNY"}, headers=alice)
        ).status_code == 201
    async with clean_database.session() as session:
        start = datetime(2026, 1, 1, tzinfo=UTC)
        session.add(
            Price(
                resource="storage",
                currency="CNY",
                amount=Decimal("0.05"),
                valid_from=start,
                valid_until=datetime(2026, 12, 1, tzinfo=UTC),
            )
        )
        session.add(
            Price(
                resource="storage", currency="CNY", amount=Decimal("0.07"), valid_from=datetime(2026, 12, 1, tzinfo=UTC)
            )
        )
        await session.commit()
    await _stored(clean_database, "vision", [3 * GIB, GIB // 2])
    await _stored(clean_database, "vision", [10 * GIB], deleted=True)  # gone: free
    await _stored(clean_database, "speech", [GIB], replicas=2)

    assert await clean_database.run(partial(charge_day, day=DAY)) == 2
    assert await clean_database.run(partial(charge_day, day=DAY)) == 0  # the same day again: nothing
    async with clean_database.session() as session:
        entries = (await session.scalars(select(LedgerEntry).order_by(LedgerEntry.workspace_id))).all()
        assert [(e.kind, e.amount, e.key.split(":")[2]) for e in entries] == [
            ("storage", Decimal("-0.175"), "2026-11-30"),  # 3.5 GB x 1 day x 0.05
            ("storage", Decimal("-0.05"), "2026-11-30"),
        ]
        assert entries[0].at == datetime(2026, 12, 1, tzinfo=UTC) and "3758096384 bytes" in entries[0].note

    # the next day, at its own price; every replica counted where the site says so
    assert await clean_database.run(partial(charge_day, day=DAY + timedelta(days=1), copies="all")) == 2
    async with clean_database.session() as session:
        latest = (
            await session.scalars(
                select(LedgerEntry).where(LedgerEntry.key.like("%2026-12-01")).order_by(LedgerEntry.workspace_id)
            )
        ).all()
        assert [e.amount for e in latest] == [Decimal("-0.245"), Decimal("-0.14")]
        charged = {e.workspace_id for e in (await session.scalars(select(LedgerEntry))).all()}
        empty = await session.scalar(select(Workspace.id).where(Workspace.slug == "empty"))
        assert empty not in charged  # nothing stored, nothing charged
