"""``remotegpu billing`` and ``remotegpu price`` as researchers, owners and admins use them: a non-root POSIX user's
CLI against a real ``remotegpu serve`` on 127.0.0.1 (SQLite and PostgreSQL), usage put in by the billing ingest on
the gateway's own database, as the worker's loop does with sacct's records."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import os
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from gateway.billing.ingest import ingest
from gateway.billing.models import Price, UsageRecord
from gateway.client.billing_commands import ENTRY_HEADERS, RECORD_HEADERS
from gateway.db.session import Database
from slurm.records import AccountingRecord, JobState
from tests.accounting import accounting_record
from tests.cli_runner import operator_user, run_cli_as, user_env, user_venv

pytestmark = pytest.mark.integration

operator = pytest.fixture(scope="module")(operator_user)

# Usage of three days ago (the report's days are known); prices are moved back before it, as the API refuses.
T0 = datetime.combine(datetime.now(UTC).date() - timedelta(days=3), datetime.min.time(), UTC) + timedelta(hours=10)
DAY0, DAY1 = T0.date().isoformat(), (T0.date() + timedelta(days=1)).isoformat()
BEGIN, END = (T0.date() - timedelta(days=1)).isoformat(), (T0.date() + timedelta(days=3)).isoformat()
"""The report's window, as dates (midnight UTC)."""
PRICES = (("gpu:a100", "0.1"), ("gpu", "0.07"), ("cpu", "0.0033"), ("mem", "0.00012207"))  # no float holds them


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cells(line: str) -> list[str]:
    """A table line's cells (columns are two or more blanks apart)."""
    return re.split(r"\s{2,}", line.strip())


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit status 1 and one line on stderr, with every needle; never a traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def usage_error(result: subprocess.CompletedProcess[str], option: str) -> str:
    """Click's usage error (exit 2): one ``Error:`` line, naming the option."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and len(errors) == 1 and option in errors[0], result.stderr
    return errors[0]


@dataclass
class Gateway:
    """A ``remotegpu serve`` run by the operator (a non-root POSIX user), with gateway users root (a platform
    admin), alice and bob; ``cli(who, ...)`` runs the CLI as the operator's POSIX user with who's token."""

    url: str
    database_url: str
    user: str
    home: str
    log: Path
    tokens: dict[str, str] = field(default_factory=dict)

    def operator(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli_as(self.user, *args, home=self.home, env={"REMOTEGPU_DATABASE_URL": self.database_url})

    def cli(self, who: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        given = {"REMOTEGPU_URL": self.url, "REMOTEGPU_TOKEN": self.tokens[who], **(env or {})}
        return run_cli_as(self.user, *args, home=self.home, env=given)

    def ok(self, who: str, *args: str) -> str:
        done = self.cli(who, *args)
        assert done.returncode == 0, (who, args, done.stdout, done.stderr)
        return done.stdout

    def headers(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def on_database(self, work: Callable[[Database], Any]) -> Any:
        """``await work(database)`` on the gateway's database, from this (root) process."""

        async def run() -> Any:
            database = Database(self.database_url)
            try:
                return await work(database)
            finally:
                await database.dispose()

        try:
            return asyncio.run(run())
        finally:
            if self.database_url.startswith("sqlite:///"):  # root may have made a -wal or -shm: the server's
                for path in Path(self.database_url.removeprefix("sqlite:///")).parent.glob("*.db*"):
                    os.chown(path, *self._ids())

    def _ids(self) -> tuple[int, int]:
        stat = Path(self.home).stat()
        return stat.st_uid, stat.st_gid


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def gateway(
    request: pytest.FixtureRequest,
    make_database_url: Callable[[str], str],
    operator: tuple[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    user, home = operator
    if request.param == "sqlite":
        folder = Path(home, f"db-{uuid.uuid4().hex[:8]}")
        folder.mkdir()
        os.chown(folder, Path(home).stat().st_uid, Path(home).stat().st_gid)
        url = f"sqlite:///{folder}/gateway.db"
    else:
        url = make_database_url("postgresql")
    port = _free_port()
    log = tmp_path_factory.mktemp("billing-cli") / "serve.log"
    env = {"REMOTEGPU_DATABASE_URL": url}
    command = ["runuser", "-u", user, "--", "env", "-i", *(f"{k}={v}" for k, v in user_env(home, env).items())]
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*command, str(user_venv() / "bin/remotegpu"), "serve", "--port", str(port)],
            cwd=home,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    gw = Gateway(f"http://127.0.0.1:{port}", url, user, home, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.TransportError):  # not listening yet
                if httpx.get(gw.url + "/readyz", timeout=1).status_code == 200:
                    break
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        for name, admin in (("root", True), ("alice", False), ("bob", False)):
            made = gw.operator("admin", "create-user", name, "--no-password", *(["--admin"] if admin else []))
            assert made.returncode == 0, made.stderr
            token = gw.operator("token", "create", name)
            assert token.returncode == 0, token.stderr
            gw.tokens[name] = token.stdout.strip()
        yield gw
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if request.param == "sqlite":
            for path in folder.iterdir():
                path.unlink()
            folder.rmdir()


@dataclass
class Lab:
    slug: str
    account: str


@pytest.fixture
def lab(gateway: Gateway) -> Lab:
    """A new workspace owned by alice (its currency the default, CNY), with bob a member."""
    slug = f"lab-{uuid.uuid4().hex[:8]}"
    made = json.loads(gateway.ok("alice", "workspace", "create", slug, "--json"))
    assert made["currency"] == "CNY", made
    gateway.ok("alice", "member", "add", "bob", "-W", slug)
    return Lab(slug, made["slurm_account"])


def test_owner_tops_up_and_sees_the_balance(gateway: Gateway, lab: Lab) -> None:
    ws = ("-w", lab.slug)
    before = gateway.ok("alice", "billing", "balance", *ws).splitlines()
    assert before[:3] == [f"workspace:     {lab.slug}", "balance:       0.0000 CNY", "status:        active"]
    assert not any(line.startswith(("overdue", "suspend")) for line in before)

    # 0.1 + 0.2 in floats is 0.30000000000000004: here it is 0.3, every step of the way
    shown = [gateway.ok("alice", "billing", "topup", amount, *ws).strip() for amount in ("0.1", "0.20", "0.1")]
    assert re.fullmatch(rf"topup of 0\.1000 CNY to {lab.slug} \(entry \d+\): balance 0\.1000 CNY, active", shown[0])
    assert [line.split("balance ")[1] for line in shown] == [f"{b} CNY, active" for b in ("0.1000", "0.3000", "0.4000")]
    balance = json.loads(gateway.ok("bob", "billing", "balance", *ws, "--json"))  # members see it too
    assert balance["balance"] == "0.4000" and balance["entries"] == 3 and balance["status"] == "active"

    # a retry with the same key makes no second entry; the same key for another amount is refused
    key = ("--idempotency-key", f"po-{uuid.uuid4().hex[:6]}")
    for _ in range(2):
        assert "balance 100.4000 CNY" in gateway.ok("alice", "billing", "topup", "100", *ws, *key, "--note", "PO 7")
    one_line_error(gateway.cli("alice", "billing", "topup", "50", *ws, *key), "Idempotency-Key")

    # a member cannot top up, nor read the ledger; nothing else than a top-up is the owner's
    one_line_error(gateway.cli("bob", "billing", "topup", "5", *ws), "owner")
    one_line_error(gateway.cli("bob", "billing", "topups", *ws), "admin")
    one_line_error(gateway.cli("alice", "billing", "topup", "5", "--kind", "credit", *ws), "platform admins")
    # bad amounts: the CLI's own check (exit 2), or the gateway's problem detail naming the field (exit 1)
    usage_error(gateway.cli("alice", "billing", "topup", "1e3", *ws), "'AMOUNT'")
    assert "more than 4 decimal places" in usage_error(
        gateway.cli("alice", "billing", "topup", "0.00001", *ws), "'AMOUNT'"
    )
    one_line_error(gateway.cli("alice", "billing", "topup", "0", *ws), "positive", "[amount]")
    one_line_error(gateway.cli("alice", "billing", "topup", "5", "-w", "no-such-ws"))

    # a platform admin credits and adjusts, either way; a negative amount is not an option
    assert "credit of 3.0000 CNY" in gateway.ok("root", "billing", "topup", "3", "--kind", "credit", *ws)
    adjusted = gateway.ok("root", "billing", "topup", "-0.4", "--kind", "adjustment", "--note", "typo", *ws)
    assert "adjustment of -0.4000 CNY" in adjusted and "balance 103.0000 CNY" in adjusted

    lines = gateway.ok("alice", "billing", "topups", *ws).splitlines()
    assert cells(lines[0]) == ENTRY_HEADERS
    rows = [cells(line) for line in lines[1:]]
    assert [(r[2], r[3]) for r in rows] == [
        ("adjustment", "-0.4000"), ("credit", "3.0000"), ("topup", "100.0000"),
        ("topup", "0.1000"), ("topup", "0.2000"), ("topup", "0.1000"),
    ]  # fmt: skip
    assert rows[0][-1] == "typo" and rows[2][-1] == "PO 7" and all(r[4] == "CNY" for r in rows)
    credits = gateway.ok("alice", "billing", "topups", "--kind", "credit", *ws).splitlines()
    assert [cells(line)[2] for line in credits[1:]] == ["credit"]
    two = gateway.cli("alice", "billing", "topups", "--limit", "2", *ws)
    assert len(two.stdout.splitlines()) == 3 and "showing 2 of 6" in two.stderr
    listed = json.loads(gateway.ok("alice", "billing", "entries", *ws, "--json"))
    assert [e["amount"] for e in listed][:2] == ["-0.4000", "3.0000"] and len(listed) == 6


def test_admin_sets_prices_and_everyone_lists_them(gateway: Gateway) -> None:
    start = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    later = start + timedelta(days=7)
    made = gateway.ok(
        "root", "price", "set", "gpu:h100", "0.12345678", "--currency", "USD", "--from", start.isoformat()
    )
    assert re.fullmatch(
        rf"price \d+: gpu:h100 0\.12345678 USD per GPU-minute from {start:%Y-%m-%dT%H:%M:%S}Z", made.strip()
    ), made
    gateway.ok("root", "price", "set", "gpu:h100", "0.20", "--currency", "USD", "--from", later.date().isoformat())
    gateway.ok("root", "price", "set", "cpu", "0.001", "--currency", "USD", "--from", start.isoformat())

    lines = gateway.ok("alice", "price", "list", "--currency", "USD", "--resource", "gpu:h100").splitlines()
    assert cells(lines[0]) == ["ID", "RESOURCE", "AMOUNT", "CURRENCY", "UNIT", "FROM", "UNTIL"]
    midnight = f"{later.date()}T00:00:00Z"
    assert [cells(line)[1:] for line in lines[1:]] == [  # the first ends where the next begins
        ["gpu:h100", "0.12345678", "USD", "GPU-minute", f"{start:%Y-%m-%dT%H:%M:%S}Z", midnight],
        ["gpu:h100", "0.20", "USD", "GPU-minute", midnight, "-"],  # as typed, to the last zero
    ]
    at = gateway.ok("bob", "price", "list", "--currency", "USD", "--at", (start + timedelta(days=1)).isoformat())
    assert [cells(line)[1:3] for line in at.splitlines()[1:]] == [["cpu", "0.001"], ["gpu:h100", "0.12345678"]]
    assert gateway.ok("bob", "price", "list", "--currency", "USD", "--at", "2020-01-01").splitlines()[1:] == []
    listed = json.loads(gateway.ok("alice", "price", "list", "--currency", "USD", "--json"))
    assert {p["amount"] for p in listed} >= {"0.12345678"} and all(isinstance(p["amount"], str) for p in listed)

    one_line_error(gateway.cli("alice", "price", "set", "cpu", "1", "--currency", "USD"), "platform admins")
    past = gateway.cli("root", "price", "set", "cpu", "1", "--currency", "USD", "--from", "2020-01-01")
    one_line_error(past, "in the past", "[valid_from]")
    one_line_error(gateway.cli("root", "price", "set", "gpu:a100; rm", "1", "--currency", "USD"), "[resource]")
    negative = gateway.cli("root", "price", "set", "cpu", "--currency", "USD", "--", "-1")
    usage_error(negative, "never below zero")  # refused before anything is sent
    usage_error(gateway.cli("root", "price", "set", "cpu", "0.123456789", "--currency", "USD"), "'AMOUNT'")
    one_line_error(gateway.cli("root", "price", "set", "cpu", "1", "--currency", "usd"), "[currency]")
    usage_error(gateway.cli("root", "price", "set", "cpu", "one", "--currency", "USD"), "'AMOUNT'")
    usage_error(gateway.cli("root", "price", "list", "--at", "2026-11-30T10:00:00"), "'--at'")


def job(job_id: int, *, account: str, **values: Any) -> AccountingRecord:
    return accounting_record(job_id, account=account, start=values.pop("start", T0), **values)


def _usage(gateway: Gateway, lab: Lab) -> dict[int, UsageRecord]:
    """Prices through the API (CNY), moved back before T0 in the database; then the jobs, ingested."""
    for resource, amount in PRICES:
        gateway.ok("root", "price", "set", resource, amount, "--currency", "CNY")

    async def backdate(database: Database) -> None:
        async with database.session() as session:
            for price in await session.scalars(select(Price).where(Price.currency == "CNY")):
                price.valid_from = T0 - timedelta(days=30)
            await session.commit()

    gateway.on_database(backdate)
    records = [
        job(101, account=lab.account),  # 10 min of one a100, 2 cores, 1 GB: 1.0672
        job(102, account=lab.account, user="bob", minutes=3, tres={"cpu": 1, "node": 1}),
        job(131, account=lab.account, array_job_id=130, array_task_id=1, minutes=5, start=T0 + timedelta(days=1),
            tres={"cpu": 1, "node": 1, "gres/gpu": 2}),
        job(140, account=lab.account, minutes=2, state=JobState.RUNNING, start=T0 + timedelta(hours=2)),
        job(150, account="someone-else"),
    ]  # fmt: skip
    result = gateway.on_database(lambda database: ingest(database, records, cluster="c1"))
    assert result.charged == 4, result

    async def read(database: Database) -> dict[int, UsageRecord]:
        async with database.session(write=False) as session:
            return {u.slurm_job_id: u for u in await session.scalars(select(UsageRecord))}

    return dict(gateway.on_database(read))


def test_records_and_reports_after_usage(gateway: Gateway, lab: Lab, tmp_path: Path) -> None:
    usage = _usage(gateway, lab)
    ws = ("-w", lab.slug)
    assert str(usage[101].amount) == "1.0672"

    lines = gateway.ok("alice", "billing", "records", *ws).splitlines()
    assert cells(lines[0]) == RECORD_HEADERS
    rows = {cells(line)[0]: cells(line) for line in lines[1:]}
    assert set(rows) == {"101", "102", "130_1", "140"}
    assert rows["101"] == ["101", "alice", "other", "job101", "1", "a100", f"{DAY0}T10:00:00Z", "10", "1.0672", "yes"]
    assert rows["130_1"][4:8] == ["2", "-", f"{DAY1}T10:00:00Z", "5"] and rows["140"][-1] == "no"
    for job_id, row in rows.items():  # every amount exactly as the gateway holds it
        assert row[8] == str(usage[131 if job_id == "130_1" else int(job_id)].amount), row

    mine = gateway.ok("bob", "billing", "records", *ws).splitlines()[1:]  # members see their own
    assert [cells(line)[0] for line in mine] == ["102"]
    bobs = gateway.ok("alice", "billing", "records", "--user", "bob", *ws).splitlines()[1:]
    assert [cells(line)[0] for line in bobs] == ["102"]
    day1 = gateway.ok("alice", "billing", "records", "--from", DAY1, *ws).splitlines()[1:]
    assert [cells(line)[0] for line in day1] == ["130_1", "140"]  # 140 still runs
    day0 = gateway.ok("alice", "billing", "records", "--to", f"{DAY0}T10:00:01+00:00", *ws).splitlines()[1:]
    assert sorted(cells(line)[0] for line in day0) == ["101", "102"]
    assert gateway.ok("alice", "billing", "records", "--type", "training", *ws).splitlines()[1:] == []
    records = json.loads(gateway.ok("alice", "billing", "records", "--limit", "2", *ws, "--json"))
    assert len(records) == 2 and all(isinstance(r["amount"], str) for r in records)

    usage_lines = gateway.ok("alice", "billing", "entries", "--kind", "usage", *ws).splitlines()[1:]
    assert {cells(line)[2] for line in usage_lines} == {"usage"}
    assert sum(Decimal(cells(line)[3]) for line in usage_lines) == -sum(u.amount for u in usage.values())

    # the report: csv straight from the API, to stdout and to a file
    window = ("--from", BEGIN, "--to", END)
    api = httpx.get(
        f"{gateway.url}/api/v1/workspaces/{lab.slug}/billing/report",
        params={"from": f"{BEGIN}T00:00:00Z", "to": f"{END}T00:00:00Z", "group_by": "user", "format": "csv"},
        headers=gateway.headers("alice"),
    )
    assert api.status_code == 200, api.text
    printed = gateway.ok("alice", "billing", "report", *window, "--format", "csv", *ws)
    assert printed == api.text
    table = list(csv.reader(io.StringIO(printed)))
    assert table[0] == ["user", "amount", "currency", "minutes", "gpu_minutes", "jobs"]
    assert [row[0] for row in table[1:]] == ["alice", "bob", "total"]
    assert sum(Decimal(row[1]) for row in table[1:-1]) == Decimal(table[-1][1])
    saved = gateway.cli("alice", "billing", "report", *window, "--format", "csv", "-o", "november.csv", *ws)
    assert saved.returncode == 0 and saved.stdout == "" and "wrote november.csv" in saved.stderr, saved.stderr
    written = Path(gateway.home, "november.csv")
    try:
        assert written.read_bytes() == api.content
    finally:
        written.unlink()

    # the table: one row per group and the total, which is what the workspace was charged
    balance = json.loads(gateway.ok("alice", "billing", "balance", *ws, "--json"))["balance"]
    lines = gateway.ok("alice", "billing", "report", *window, *ws).splitlines()
    assert lines[0] == f"workspace {lab.slug}: charges from {BEGIN}T00:00:00Z to {END}T00:00:00Z in CNY, by user"
    assert cells(lines[1]) == ["USER", "AMOUNT", "MINUTES", "GPU MINUTES", "JOBS"]
    body = {cells(line)[0]: cells(line)[1:] for line in lines[2:]}
    assert list(body) == ["alice", "bob", "total"]
    assert body["bob"] == [str(usage[102].amount), "3", "0", "1"]
    assert body["total"][0] == table[-1][1] and Decimal(body["total"][0]) == -Decimal(balance)
    assert body["total"][1:] == ["20", "22", "-"]  # 10 + 3 + 5 + 2 minutes; 10 + 10 + 2 GPU minutes
    by_gpu = gateway.ok("alice", "billing", "report", *window, "--group-by", "gpu_type", *ws).splitlines()
    assert [cells(line)[0] for line in by_gpu[2:]] == ["a100", "-", "total"]  # "-": no GPU type
    by_day = gateway.ok("alice", "billing", "report", *window, "--group-by", "day", *ws).splitlines()
    assert [cells(line)[0] for line in by_day[2:]] == [DAY0, DAY1, "total"]
    report = json.loads(gateway.ok("alice", "billing", "report", *window, "--format", "json", *ws))
    assert report["total"] == body["total"][0] and isinstance(report["total"], str)
    saved = gateway.cli("alice", "billing", "report", *window, "-o", str(tmp_path / "no" / "such.txt"), *ws)
    one_line_error(saved, "cannot write")

    one_line_error(gateway.cli("bob", "billing", "report", *window, *ws), "admin")
    one_line_error(gateway.cli("alice", "billing", "report", "--from", DAY1, "--to", DAY0, *ws), "[to]")
    usage_error(gateway.cli("alice", "billing", "report", "--from", "2026-13-01", "--to", DAY0, *ws), "'--from'")
    usage_error(gateway.cli("alice", "billing", "report", "--to", DAY0, *ws), "'--from'")


def test_unreachable_gateway_or_bad_token_is_one_line(gateway: Gateway, operator: tuple[str, str]) -> None:
    user, home = operator
    nothing = {"REMOTEGPU_URL": f"http://127.0.0.1:{_free_port()}", "REMOTEGPU_TOKEN": "rgpu_x"}
    for args in (
        ["billing", "balance", "-w", "lab"],
        ["billing", "records", "-w", "lab"],
        ["billing", "report", "--from", DAY0, "--to", DAY1, "--format", "csv", "-w", "lab"],
        ["billing", "balance"],  # (asks the gateway for the user's only workspace first)
        ["price", "list"],
    ):
        one_line_error(run_cli_as(user, *args, home=home, env=nothing), "cannot connect to the gateway")
    lost = run_cli_as(user, "billing", "topup", "5", "-w", "lab", home=home, env=nothing)
    line = one_line_error(lost, "cannot connect to the gateway", "to retry without paying twice")
    assert re.search(r"billing topup 5 --kind topup -w lab --idempotency-key cli-[0-9a-f]{32}$", line), line
    revoked = gateway.cli("alice", "billing", "balance", "-w", "lab", env={"REMOTEGPU_TOKEN": "rgpu_not-a-token"})
    one_line_error(revoked, "remotegpu login")


def test_every_billing_command_has_help(operator: tuple[str, str]) -> None:
    user, home = operator
    groups = {"billing": {"balance", "topup", "topups", "entries", "records", "report"}, "price": {"list", "set"}}
    for group, commands in groups.items():
        listed = run_cli_as(user, group, "--help", home=home).stdout
        assert {line.split()[0] for line in listed.split("Commands:")[1].splitlines() if line.strip()} == commands
        for command in commands:
            r = run_cli_as(user, group, command, "--help", home=home)
            assert r.returncode == 0 and "Usage:" in r.stdout and "-h, --help" in r.stdout, (group, command)
