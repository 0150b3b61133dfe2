"""Billing against a real database (both backends), fed with accounting records as the slurm/ adapter parses them:
exactly-once ingest, interim charges settled exactly, the ledger and balances, prices, top-ups, overdue, reports.
The same code against the real cluster's sacct: tests/integration/slurm/test_billing_cluster.py."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import msgspec
import pytest
from sqlalchemy import select

from gateway.billing import ledger
from gateway.billing.ingest import ingest
from gateway.billing.models import LedgerEntry, Price, UsageRecord
from gateway.billing.service import settle_states
from gateway.db.base import utcnow
from gateway.db.session import Database
from gateway.workspaces.models import Workspace
from slurm.records import AccountingRecord, JobState
from tests.accounting import accounting_record
from tests.conftest import UserFactory

WS = "/api/v1/workspaces"
T0 = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


def job(job_id: int, *, account: str = "vision", start: datetime = T0, **values: Any) -> AccountingRecord:
    return accounting_record(job_id, account=account, start=start, **values)


async def _setup(client: httpx.AsyncClient, make_user: UserFactory) -> tuple[dict[str, str], dict[str, str]]:
    root, alice = await make_user("root", admin=True), await make_user("alice")
    for slug in ("vision", "speech"):
        r = await client.post(WS, json={"slug": slug, "name": slug, "currency": "CNY"}, headers=alice)
        assert r.status_code == 201, r.text
    # prices no float can hold: 0.1 + 0.2 style values, and a memory price with 8 places
    start = (utcnow() + timedelta(seconds=1)).isoformat()
    for resource, amount in (("gpu:a100", "0.1"), ("gpu", "0.07"), ("cpu", "0.0033"), ("mem", "0.00012207")):
        r = await client.post(
            "/api/v1/prices", json={"resource": resource, "amount": amount, "currency": "CNY", "valid_from": start},
            headers=root,
        )  # fmt: skip
        assert r.status_code == 201, r.text
    return root, alice


async def _backdate_prices(database: Database) -> None:
    """Tests rate records of the past: move the prices made just now to before T0 (the API refuses that)."""
    async with database.session() as session:
        for price in await session.scalars(select(Price)):
            price.valid_from = T0 - timedelta(days=30)
        await session.commit()


async def _ledger(database: Database) -> list[tuple[str, str, Decimal, int]]:
    async with database.session(write=False) as session:
        rows = await session.execute(
            select(LedgerEntry.key, LedgerEntry.kind, LedgerEntry.amount, LedgerEntry.minutes).order_by(LedgerEntry.key)
        )
        return [tuple(r) for r in rows.all()]  # type: ignore[misc]


async def _verify(database: Database) -> None:
    assert await database.run(ledger.verify, write=False) == []


async def test_ingest_is_exactly_once(
    client: httpx.AsyncClient, make_user: UserFactory, clean_database: Database
) -> None:
    _, alice = await _setup(client, make_user)
    await _backdate_prices(clean_database)
    records = [
        job(1, minutes=10),  # 10 min of 1 a100, 2 cores, 1 GB
        job(2, minutes=0.5, account="speech", tres={"cpu": 4, "mem": 2048, "node": 1}),  # 30 s: one minute
        job(3, minutes=2 + 1 / 60),  # 121 s: three minutes
        job(4, account="someone-else"),  # no workspace: skipped
        job(5, state=JobState.PENDING, minutes=0),
    ]
    first = await ingest(clean_database, records, cluster="c1")
    assert (first.records, first.charged, first.skipped) == (4, 3, 1)
    before = await _ledger(clean_database)
    for _ in range(10):
        again = await ingest(clean_database, records, cluster="c1")
        assert again.charged == 0 and again.entries == 0
    assert await _ledger(clean_database) == before
    await _verify(clean_database)

    # job 1: 10 x (0.1 + 2 x 0.0033 + 1 x 0.00012207) = 1.0672207 -> lines 1.0000 + 0.0660 + 0.0012
    usage = {u.slurm_job_id: u for u in await clean_database.run(lambda s: list(s.scalars(select(UsageRecord))))}
    assert usage[1].amount == Decimal("1.0672") and usage[1].minutes == 10 and usage[1].gpu_type == "a100"
    assert usage[3].minutes == 3 and usage[3].amount == Decimal("0.3202")
    assert usage[2].minutes == 1 and usage[2].amount == Decimal("0.0132") + Decimal("0.0002")
    assert usage[1].resource_type == "other"  # not submitted through the gateway
    balance = (await client.get(f"{WS}/vision/billing/balance", headers=alice)).json()
    assert balance["balance"] == "-1.3874" and balance["entries"] == 2  # jobs 1 and 3: 1.0672 + 0.3202


async def test_running_job_is_charged_as_it_runs_and_settled_exactly(
    client: httpx.AsyncClient, make_user: UserFactory, clean_database: Database
) -> None:
    await _setup(client, make_user)
    await _backdate_prices(clean_database)
    tres = {"cpu": 3, "mem": 3000, "node": 1, "gres/gpu": 2, "gres/gpu:a100": 2}
    for seconds in (1, 59, 60, 61, 600, 601, 1799, 1800):
        running = msgspec.structs.replace(
            job(7, tres=tres, state=JobState.RUNNING), elapsed_seconds=seconds, end_time=None
        )
        await ingest(clean_database, [running], cluster="c1")
        await ingest(clean_database, [running], cluster="c1")  # the same cycle twice: nothing more
    final = msgspec.structs.replace(job(7, tres=tres), elapsed_seconds=1845)
    await ingest(clean_database, [final], cluster="c1")
    await ingest(clean_database, [final], cluster="c1")
    entries = [e for e in await _ledger(clean_database) if e[1] == "usage"]
    assert len(entries) == 6  # minutes 1, 2, 10, 11, 30, then final (31): each change once
    from gateway.billing.ingest import price_books
    from gateway.billing.rating import rate

    books = await clean_database.run(price_books, write=False)
    expected = rate(tres, T0, 31, books["CNY"])
    assert sum(e[2] for e in entries) == -expected.amount
    assert sum(e[3] for e in entries) == 31
    usage = await clean_database.run(lambda s: s.scalars(select(UsageRecord)).one())
    assert usage.final and usage.amount == expected.amount and usage.minutes == 31
    await _verify(clean_database)


async def test_price_change_splits_a_job_and_never_rewrites_the_past(
    client: httpx.AsyncClient, make_user: UserFactory, clean_database: Database
) -> None:
    root, _ = await _setup(client, make_user)
    past = (utcnow() - timedelta(hours=1)).isoformat()
    r = await client.post(
        "/api/v1/prices", json={"resource": "cpu", "amount": "1", "currency": "CNY", "valid_from": past}, headers=root
    )
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "valid_from"
    r = await client.post("/api/v1/prices", json={"resource": "cpu", "amount": 1, "currency": "CNY"}, headers=root)
    assert r.status_code == 400  # a JSON number: money is never a float
    r = await client.post(
        "/api/v1/prices", json={"resource": "gpu:a100; rm", "amount": "1", "currency": "CNY"}, headers=root
    )
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "resource"
    assert (await client.post("/api/v1/prices", json={"resource": "cpu", "amount": "1", "currency": "CNY"},
                              headers=await make_user("bob"))).status_code == 403  # fmt: skip
    # a job of 10 minutes on cpu across a change at minute 4 (prices moved back in time to test the split)
    async with clean_database.session() as session:
        for price in await session.scalars(select(Price)):
            price.valid_from = T0 - timedelta(days=1)
        session.add(Price(resource="cpu", currency="CNY", amount=Decimal("0.01"), valid_from=T0 + timedelta(minutes=4)))
        cpu = select(Price).where(Price.resource == "cpu", Price.amount == Decimal("0.0033"))
        old = (await session.scalars(cpu)).one()
        old.valid_until = T0 + timedelta(minutes=4)
        await session.commit()
    await ingest(clean_database, [job(9, minutes=10, tres={"cpu": 1, "node": 1})], cluster="c1")
    usage = await clean_database.run(lambda s: s.scalars(select(UsageRecord)).one())
    assert usage.amount == Decimal("0.0132") + Decimal("0.06")  # 4 x 0.0033 + 6 x 0.01
    listed = (await client.get("/api/v1/prices", params={"resource": "cpu"}, headers=root)).json()
    assert [p["amount"] for p in listed] == ["0.0033", "0.01"] and listed[0]["unit"] == "core-minute"


async def test_topups_overdue_and_402(
    client: httpx.AsyncClient, make_user: UserFactory, clean_database: Database
) -> None:
    _, alice = await _setup(client, make_user)
    await _backdate_prices(clean_database)
    bob = await make_user("bob")
    r_member = await client.post(f"{WS}/vision/members", json={"username": "bob", "role": "member"}, headers=alice)
    assert r_member.status_code == 201
    r = await client.post(f"{WS}/vision/billing/topups", json={"amount": "0.50"}, headers=alice)
    assert r.status_code == 201 and r.json()["balance"] == "0.5000"
    assert (await client.post(f"{WS}/vision/billing/topups", json={"amount": "5"}, headers=bob)).status_code == 403
    r = await client.post(f"{WS}/vision/billing/topups", json={"amount": "5", "kind": "credit"}, headers=alice)
    assert r.status_code == 403  # credits are the platform's
    for bad in ("0", "-1", "0.00001", "1e3", "NaN", "1" * 14):
        r = await client.post(f"{WS}/vision/billing/topups", json={"amount": bad}, headers=alice)
        assert r.status_code == 400 and r.json()["errors"][0]["field"] == "amount", (bad, r.text)
    assert (await client.get(f"{WS}/vision/billing/balance", headers=await make_user("eve"))).status_code == 404

    await ingest(clean_database, [job(1, minutes=10)], cluster="c1")  # costs 1.0672
    await clean_database.run(lambda s: settle_states(s, utcnow(), grace=timedelta(hours=1)))
    balance = (await client.get(f"{WS}/vision/billing/balance", headers=bob)).json()
    assert balance["balance"] == "-0.5672" and balance["status"] == "overdue" and balance["suspend_at"]
    r = await client.post(f"{WS}/vision/environments", json={"name": "dev", "services": ["ssh"]}, headers=alice)
    assert r.status_code == 402, r.text
    r = await client.post(f"{WS}/vision/jobs", json={"name": "t", "script": "#!/bin/bash\ntrue\n"}, headers=alice)
    assert r.status_code == 402 and r.headers["content-type"].startswith("application/problem+json")
    assert "topped up" in r.json()["detail"]

    # a retried top-up (same Idempotency-Key) makes one entry; it lifts overdue at once
    key = {"Idempotency-Key": "pay-2026-12-03"}
    for _ in range(3):
        r = await client.post(f"{WS}/vision/billing/topups", json={"amount": "0.5672"}, headers={**alice, **key})
        assert r.status_code == 201 and r.json()["balance"] == "0.0000" and r.json()["status"] == "active"
    topups = (await client.get(f"{WS}/vision/billing/topups", headers=alice)).json()
    assert [e["amount"] for e in topups["items"]] == ["0.5672", "0.5000"]
    await _verify(clean_database)


async def test_suspension_after_grace_and_admin_suspension_is_not_lifted_by_money(
    client: httpx.AsyncClient, make_user: UserFactory, clean_database: Database
) -> None:
    root, alice = await _setup(client, make_user)
    await _backdate_prices(clean_database)
    await ingest(clean_database, [job(1, minutes=10)], cluster="c1")
    now = utcnow()
    await clean_database.run(lambda s: settle_states(s, now, grace=timedelta(hours=1)))
    suspended = await clean_database.run(lambda s: settle_states(s, now + timedelta(hours=2), grace=timedelta(hours=1)))
    assert len(suspended) == 1
    assert (await client.get(f"{WS}/vision", headers=alice)).json()["status"] == "suspended"
    await client.post(f"{WS}/vision/billing/topups", json={"amount": "2"}, headers=alice)
    assert (await client.get(f"{WS}/vision", headers=alice)).json()["status"] == "active"
    audit = (await client.get("/api/v1/audit", params={"limit": 100}, headers=root)).json()["items"]
    actions = [a["action"] for a in audit if a.get("target") == "vision"]
    assert {"workspace.overdue", "workspace.suspended", "workspace.active", "billing.topup"} <= set(actions)

    await client.patch(f"{WS}/speech", json={"status": "suspended"}, headers=root)
    await client.post(f"{WS}/speech/billing/topups", json={"amount": "2"}, headers=alice)
    assert (await client.get(f"{WS}/speech", headers=alice)).json()["status"] == "suspended"


async def test_report_groups_add_up_and_csv(
    client: httpx.AsyncClient, make_user: UserFactory, clean_database: Database
) -> None:
    _, alice = await _setup(client, make_user)
    await _backdate_prices(clean_database)
    records = [
        job(1, minutes=10),
        job(2, minutes=3, user="bob", tres={"cpu": 1, "node": 1}),
        job(3, minutes=5, start=T0 + timedelta(days=1), tres={"cpu": 1, "node": 1, "gres/gpu": 2}),
    ]
    await ingest(clean_database, records, cluster="c1")
    params = {"from": (T0 - timedelta(days=1)).isoformat(), "to": (T0 + timedelta(days=3)).isoformat()}
    totals = set()
    for group in ("user", "resource_type", "gpu_type", "day"):
        r = await client.get(f"{WS}/vision/billing/report", params={**params, "group_by": group}, headers=alice)
        assert r.status_code == 200, r.text
        body = r.json()
        assert sum(Decimal(row["amount"]) for row in body["rows"]) == Decimal(body["total"])
        totals.add(body["total"])
        if group == "day":
            assert [row["key"] for row in body["rows"]] == ["2026-11-30", "2026-12-01"]
        if group == "gpu_type":
            assert {row["key"] for row in body["rows"]} == {"a100", None}
            assert body["gpu_minutes"] == 10 + 10
    assert len(totals) == 1
    balance = (await client.get(f"{WS}/vision/billing/balance", headers=alice)).json()["balance"]
    assert Decimal(totals.pop()) == -Decimal(balance)
    r = await client.get(
        f"{WS}/vision/billing/report", params={**params, "group_by": "user", "format": "csv"}, headers=alice
    )
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0] == ["user", "amount", "currency", "minutes", "gpu_minutes", "jobs"]
    assert [row[0] for row in rows[1:]] == ["alice", "bob", "total"]
    bad = await client.get(f"{WS}/vision/billing/report", params={"from": "yesterday", "to": "x"}, headers=alice)
    assert bad.status_code == 400
    members = await client.get(
        f"{WS}/vision/billing/records", headers=alice, params={"resource_type": "other", "limit": 2}
    )
    assert members.status_code == 200 and members.json()["total"] == 3 and len(members.json()["items"]) == 2


@pytest.mark.parametrize("amount", ["0.1", "0.2", "0.3", "1.0001", "999999999999.9999"])
async def test_amounts_floats_cannot_hold_stay_exact(
    amount: str, client: httpx.AsyncClient, make_user: UserFactory, clean_database: Database
) -> None:
    _, alice = await _setup(client, make_user)
    for _ in range(3):
        r = await client.post(f"{WS}/vision/billing/topups", json={"amount": amount}, headers=alice)
        assert r.status_code == 201, r.text
    expected = Decimal(amount) * 3
    body = (await client.get(f"{WS}/vision/billing/balance", headers=alice)).json()
    assert Decimal(body["balance"]) == expected and isinstance(body["balance"], str)
    async with clean_database.session(write=False) as session:
        ws = (await session.scalars(select(Workspace).where(Workspace.slug == "vision"))).one()
    sums = await clean_database.run(lambda s: ledger.ledger_sums(s, [ws.id]), write=False)
    assert sums[ws.id] == (expected, 3)
