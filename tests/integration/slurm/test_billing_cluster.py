"""Billing on the real cluster: what sacct says jobs held is what the workspaces are charged, exactly once;
running work (jobs and environments) is charged as it runs; overdue blocks the account in Slurm itself."""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from gateway.billing import ledger
from gateway.billing.ingest import Ingest, ingest
from gateway.billing.models import LedgerEntry, UsageRecord
from gateway.billing.rating import billing_minutes
from gateway.billing.service import settle_states
from gateway.db import migrate
from gateway.db.base import utcnow
from gateway.db.session import Database
from gateway.workspaces.slurm_sync import AccountSync
from slurm.client import SlurmClient
from slurm.dialects.v22_05 import parse_sacct
from tests.conftest import UserFactory
from tests.integration.slurm.conftest import WS, Cluster, PosixUserFactory, make_team
from tests.waiting import eventually, eventually_async

pytestmark = pytest.mark.integration
PRICES = {"gpu:a100": "0.1", "cpu": "0.0033", "mem": "0.0001"}
ON_POSTGRESQL = pytest.mark.parametrize("backend", ["postgresql"], indirect=True, scope="session")
"""For the tests whose database work is tests/integration/billing's (on both backends): what they add is the
cluster, and each costs a minute or more of CI."""


@pytest.fixture
def second_account(slurm_cluster: Cluster) -> Iterator[str]:
    name = f"t{os.urandom(5).hex()}"
    yield name
    env = {"PATH": os.environ["PATH"], "SLURM_CONF": slurm_cluster.conf}
    subprocess.run(["scancel", "--account", name], env=env, capture_output=True, check=False)
    time.sleep(1)
    subprocess.run(["sacctmgr", "-i", "remove", "account", name], env=env, capture_output=True, check=False)


async def _prices(api: httpx.AsyncClient, root: dict[str, str], prices: dict[str, str]) -> None:
    for resource, amount in prices.items():
        r = await api.post("/api/v1/prices", json={"resource": resource, "amount": amount, "currency": "CNY"},
                           headers=root)  # fmt: skip
        assert r.status_code == 201, r.text


def _sacct(cluster: Cluster, account: str, since: str) -> dict[int, tuple[str, int, dict[str, int]]]:
    """sacct's own view: JobIDRaw -> (state, ElapsedRaw, AllocTRES)."""
    out = cluster.run(
        "sacct", "-X", "-P", "-n", "--allusers", "-A", account, "-S", since, "-E", "now",
        "-o", "JobIDRaw,State,ElapsedRaw,AllocTRES",
    )  # fmt: skip
    jobs = {}
    for line in out.splitlines():
        job_id, state, elapsed, tres = line.split("|")
        alloc = {k: int(v) for k, _, v in (item.partition("=") for item in tres.split(",") if item) if v.isdigit()}
        jobs[int(job_id)] = (state.split()[0], int(elapsed or 0), alloc)
    return jobs


def _sbatch_as(cluster: Cluster, user: str, account: str, command: str, *options: str) -> int:
    """``sbatch -A account`` on a login node, as ``user``, from their home (where its output can be written)."""
    home = pwd.getpwnam(user).pw_dir
    cluster.wait_association(user, account)  # the gateway's sacctmgr has reached slurmctld (it may lag a moment)
    out = cluster.run("sbatch", "--parsable", "-A", account, "-D", home, *options, "--wrap", command, user=user)
    return int(out.strip().split(";")[0])


async def _usage(database: Database) -> dict[int, UsageRecord]:
    rows = await database.run(lambda s: list(s.scalars(select(UsageRecord))), write=False)
    return {u.slurm_job_id: u for u in rows}


async def _entries(database: Database) -> list[tuple[Any, ...]]:
    return await database.run(
        lambda s: [
            tuple(r)
            for r in s.execute(
                select(LedgerEntry.key, LedgerEntry.amount, LedgerEntry.minutes, LedgerEntry.gpu_minutes).order_by(
                    LedgerEntry.key
                )
            ).all()
        ],
        write=False,
    )


@ON_POSTGRESQL
async def test_billed_minutes_equal_sacct_and_running_jobs_are_charged_as_they_run(
    api: httpx.AsyncClient,
    make_user: UserFactory,
    posix_user: PosixUserFactory,
    slurm_account: str,
    second_account: str,
    clean_database: Database,
    slurm_client: SlurmClient,
    slurm_cluster: Cluster,
) -> None:
    started = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 5))
    team = await make_team(api, make_user, posix_user, slurm_account)
    root = await make_user("rgbilladmin", admin=True)
    r = await api.post(
        WS,
        json={"slug": "lab2", "name": "Lab 2", "slurm_account": second_account, "owner": team["names"]["owner"]},
        headers=root,
    )
    assert r.status_code == 201, r.text
    await _prices(api, root, PRICES)
    await AccountSync(clean_database, slurm_client).reconcile()
    gpu_job = {"name": "gpu", "command": ["sleep", "70"], "gpus_per_node": 1, "gpu_type": "a100", "time_minutes": 5}
    r = await api.post(f"{WS}/lab/jobs", json=gpu_job, headers=team["alice"])
    assert r.status_code == 201, r.text
    gateway_job = r.json()
    cpu_job = {"name": "cpu", "command": ["sleep", "3"], "cpus_per_task": 2, "time_minutes": 5}
    r = await api.post(f"{WS}/lab2/jobs", json=cpu_job, headers=team["owner"])
    assert r.status_code == 201, r.text
    by_hand = _sbatch_as(slurm_cluster, team["names"]["bob"], slurm_account, "sleep 2", "-c", "1", "-t", "5")

    billing = Ingest(clean_database, slurm_client)
    balances: list[Decimal] = []
    accounts = (slurm_account, second_account)
    deadline = time.monotonic() + 180
    while True:
        await billing.run_once()
        seen = (await api.get(f"{WS}/lab/billing/balance", headers=team["owner"])).json()
        balances.append(Decimal(seen["balance"]))
        states = {j: s for a in accounts for j, (s, _, _) in _sacct(slurm_cluster, a, started).items()}
        if len(states) == 3 and all(s not in ("PENDING", "RUNNING", "COMPLETING") for s in states.values()):
            break
        assert time.monotonic() < deadline, states
        await asyncio.sleep(5)
    await billing.run_once()
    # the GPU job was charged while it ran: its first minute, then its second, before it ended
    steps = sorted({b for b in balances if b < 0}, reverse=True)
    assert len(steps) >= 2, balances

    usage = await _usage(clean_database)
    for account in accounts:
        for job_id, (state, elapsed, alloc) in _sacct(slurm_cluster, account, started).items():
            record = usage[job_id]
            assert record.final and record.state == state
            assert record.minutes == billing_minutes(elapsed), (job_id, elapsed)
            assert record.gpus == alloc.get("gres/gpu", 0) and record.cpus == alloc["cpu"]
            assert record.elapsed_seconds == elapsed
    gpu_minutes = {
        a: sum(
            alloc.get("gres/gpu", 0) * billing_minutes(e) for _, e, alloc in _sacct(slurm_cluster, a, started).values()
        )
        for a in accounts
    }
    ours = {a: sum(u.gpus * u.minutes for u in usage.values() if u.account == a) for a in accounts}
    assert ours == gpu_minutes and gpu_minutes[slurm_account] == 2
    gpu_record = next(u for u in usage.values() if u.gpus)
    assert (gpu_record.resource_type, gpu_record.resource_id) == ("training", gateway_job["id"])
    assert usage[by_hand].resource_type == "other" and usage[by_hand].posix_user == team["names"]["bob"]

    records = (await api.get(f"{WS}/lab/billing/records", headers=team["owner"])).json()
    assert records["total"] == 2
    mine = (await api.get(f"{WS}/lab/billing/records", headers=team["bob"])).json()
    assert [r["slurm_job_id"] for r in mine["items"]] == [by_hand]  # members see their own

    before = await _entries(clean_database)
    for _ in range(10):  # the same window again and again: nothing twice
        await billing.run_once()
    assert await _entries(clean_database) == before
    assert await clean_database.run(ledger.verify, write=False) == []
    balance = Decimal((await api.get(f"{WS}/lab/billing/balance", headers=team["owner"])).json()["balance"])
    assert balance == -sum(u.amount for u in usage.values() if u.account == slurm_account)


@ON_POSTGRESQL
async def test_overdue_blocks_the_account_in_slurm_and_a_topup_lets_pending_work_start(
    api: httpx.AsyncClient,
    make_user: UserFactory,
    posix_user: PosixUserFactory,
    slurm_account: str,
    clean_database: Database,
    slurm_client: SlurmClient,
    slurm_cluster: Cluster,
) -> None:
    team = await make_team(api, make_user, posix_user, slurm_account)
    root = await make_user("rgbilladmin", admin=True)
    await _prices(api, root, {"cpu": "1"})
    sync = AccountSync(clean_database, slurm_client)
    await sync.reconcile()
    r = await api.post(f"{WS}/lab/jobs", json={"name": "spend", "command": ["sleep", "2"], "time_minutes": 2},
                       headers=team["alice"])  # fmt: skip
    assert r.status_code == 201, r.text
    started = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 60))
    eventually(lambda: all(s == "COMPLETED" for s, _, _ in _sacct(slurm_cluster, slurm_account, started).values())
               and _sacct(slurm_cluster, slurm_account, started), within=60)  # fmt: skip
    records = await slurm_client.accounting(utcnow() - timedelta(minutes=5), accounts=[slurm_account])
    await ingest(clean_database, records, cluster="remotegpu")
    await clean_database.run(lambda s: settle_states(s, utcnow(), grace=timedelta(hours=24)))
    balance = (await api.get(f"{WS}/lab/billing/balance", headers=team["alice"])).json()
    assert balance["status"] == "overdue" and Decimal(balance["balance"]) < 0

    r = await api.post(f"{WS}/lab/jobs", json={"name": "more", "command": ["true"]}, headers=team["alice"])
    assert r.status_code == 402 and "topped up" in r.json()["detail"]
    await sync.reconcile()
    limits = slurm_cluster.run("sacctmgr", "-n", "-P", "show", "assoc", f"account={slurm_account}", "user=",
                               "format=GrpTRES")  # fmt: skip
    assert "cpu=0" in limits
    by_hand = _sbatch_as(slurm_cluster, team["names"]["bob"], slurm_account, "sleep 1", "-t", "2")
    await asyncio.sleep(3)
    shown = slurm_cluster.run("squeue", "-h", "-j", str(by_hand), "-o", "%T %r")
    assert shown.split() == ["PENDING", "AssocGrpCpuLimit"], shown

    r = await api.post(f"{WS}/lab/billing/topups", json={"amount": "100"}, headers=team["owner"])
    assert r.status_code == 201 and r.json()["status"] == "active", r.text
    await sync.reconcile()
    assert "cpu=0" not in slurm_cluster.run("sacctmgr", "-n", "-P", "show", "assoc", f"account={slurm_account}",
                                            "user=", "format=GrpTRES")  # fmt: skip
    # Slurm starts it at its next scheduling pass (sched_interval: 60 s by default)
    eventually(
        lambda: (
            slurm_cluster.run("sacct", "-X", "-n", "-P", "-j", str(by_hand), "-o", "State").strip()
            in ("RUNNING", "COMPLETED")
        ),
        within=150,
        every=2,
    )
    assert (await api.post(f"{WS}/lab/jobs", json={"name": "again", "command": ["true"]},
                           headers=team["alice"])).status_code == 201  # fmt: skip


_KILLABLE = """
import asyncio, sys, time
from gateway.billing.ingest import ingest
from gateway.db.session import Database
from slurm.dialects.v22_05 import parse_sacct

async def main():
    database = Database(sys.argv[1])
    records = parse_sacct(open(sys.argv[2], "rb").read())
    await ingest(database, records, cluster="remotegpu", batch_size=1, after_batch=lambda n: time.sleep(0.3))

asyncio.run(main())
"""


@pytest.mark.parametrize("db_backend", ["sqlite", "postgresql"])
async def test_an_ingest_killed_mid_batch_and_run_again_leaves_the_ledger_of_one_clean_run(
    db_backend: str,
    make_database_url: Any,
    posix_user: PosixUserFactory,
    slurm_account: str,
    slurm_cluster: Cluster,
    tmp_path: Path,
) -> None:
    user = posix_user()
    slurm_cluster.run("sacctmgr", "-i", "add", "account", slurm_account)
    slurm_cluster.run("sacctmgr", "-i", "add", "user", user, f"account={slurm_account}")
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 5))
    ids = [_sbatch_as(slurm_cluster, user, slurm_account, f"sleep {1 + i % 2}", "-c", str(1 + i % 2)) for i in range(8)]
    eventually(
        lambda: len([s for s, _, _ in _sacct(slurm_cluster, slurm_account, since).values() if s == "COMPLETED"]) == 8,
        within=120,
        every=1,
    )
    payload = tmp_path / "sacct.json"
    payload.write_bytes(_sacct_json(slurm_cluster, slurm_account, since))
    assert {r.job_id for r in parse_sacct(payload.read_bytes())} >= set(ids)

    async def prepared() -> tuple[str, Database]:
        url = make_database_url(db_backend)
        await asyncio.to_thread(migrate.upgrade, url)  # alembic runs an event loop of its own
        database = Database(url)
        async with database.session() as session:
            from gateway.billing.models import Price
            from gateway.workspaces.models import Workspace

            session.add(Workspace(slug="lab", name="Lab", slurm_account=slurm_account, currency="CNY"))
            session.add(Price(resource="cpu", currency="CNY", amount=Decimal("0.0123457"),
                              valid_from=utcnow() - timedelta(days=1)))  # fmt: skip
            await session.commit()
        return url, database

    url, killed = await prepared()
    child = _start_killable(url, payload)
    count = select(func.count()).select_from(UsageRecord)
    try:
        await eventually_async(lambda: _at_least(url, count, 3), within=60, every=0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    partial = await killed.run(lambda s: int(s.scalar(count) or 0), write=False)
    assert 3 <= partial < 8, partial
    await ingest(killed, parse_sacct(payload.read_bytes()), cluster="remotegpu")
    _, clean = await prepared()
    await ingest(clean, parse_sacct(payload.read_bytes()), cluster="remotegpu")
    assert await _entries(killed) == await _entries(clean)
    assert len(await _entries(clean)) == 8
    assert await killed.run(ledger.verify, write=False) == []
    await killed.dispose()
    await clean.dispose()


def _sacct_json(cluster: Cluster, account: str, since: str) -> bytes:
    argv = ["sacct", "--allusers", "--json", "-A", account, "-S", since, "-E", "now"]
    env = {"PATH": os.environ["PATH"], "SLURM_CONF": cluster.conf}
    return subprocess.run(argv, env=env, capture_output=True, check=True).stdout


def _start_killable(url: str, payload: Path) -> subprocess.Popen[bytes]:
    """An ingest of ``payload`` into ``url`` in a process of its own, one record per transaction, slowly."""
    return subprocess.Popen([sys.executable, "-c", _KILLABLE, url, str(payload)], cwd=Path(__file__).parents[3])


async def _at_least(url: str, statement: Any, wanted: int) -> bool:
    database = Database(url)
    try:
        return int(await database.run(lambda s: s.scalar(statement), write=False) or 0) >= wanted
    finally:
        await database.dispose()
