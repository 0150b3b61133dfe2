"""Billing benchmarks on PostgreSQL, each against a baseline measured in the same run.

1. ingest: 100,000 accounting records rated and charged into PostgreSQL (``parse_sacct`` of one
   ``sacct --allusers --json`` answer, then ``gateway.billing.ingest.ingest``) vs ``sacct`` producing that answer;
   goal: ingest time / sacct time <= 1.0. The records are real jobs (a few dozen of different shapes: CPU only,
   ``--gres=gpu:...``, arrays, run under a Slurm account and POSIX user made for the run) whose rows in slurmdbd's
   MariaDB (job and step tables) are replicated under new job ids up to ``--records``. sacct's rounds run while
   the copies exist, then every replicated row is deleted (also on Ctrl-C or SIGTERM: other work on the shared
   cluster reads them too), then ours' rounds run on sacct's last answer; the account and user are removed.
2. balance: ``GET /api/v1/workspaces/{ws}/billing/balance`` p50 with 1,000,000 ledger entries (a member's token)
   vs ``GET /healthz`` p50 on the same server, same client, rounds alternating; goal <= 3x. The balance the API
   returns is checked against the SQL sum of the entries.

    .venv/bin/python bench/billing.py [--records 100000] [--rounds 3] [--only ingest,balance]
                                      [--entries 1000000] [--requests 300] [--loadgen httpx|wrk] [--check]
Runs as root (it creates a POSIX user, a Slurm account, and writes slurmdbd's database); needs the local Slurm
cluster (deploy/dev/slurm/up, run by it) and PostgreSQL on 127.0.0.1:5432.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from statistics import median
from types import FrameType
from typing import Any

import httpx
import msgspec
import psycopg

from bench.api import WRK_SCRIPT, cli, cpu_seconds, database, ensure_wrk, free_ports, remotegpu_command, run_wrk, server
from bench.jobs import SLURM_ROOT, children_cpu, slurm_env
from gateway.billing import ledger
from gateway.billing.ingest import IngestResult, ingest
from gateway.billing.models import Price
from gateway.billing.money import from_units
from gateway.db.migrate import upgrade
from gateway.db.session import Database
from slurm.dialects.v22_05 import parse_sacct

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("ingest", "balance")
INGEST_GOAL = 1.0
BALANCE_GOAL = 3.0
CURRENCY = "CNY"
MYSQL_SOCKET = SLURM_ROOT / "mysql/mysqld.sock"
SLURM_DB = "slurm_acct_db"
ACCOUNT_PREFIX = "billbench"
"""Slurm accounts of this benchmark: rows of a crashed run are found (and deleted) by it."""
COPY_BASE = 50_000_000
"""Replicated jobs get ids from here up: far above what slurmctld hands out in years of tests, below its
default MaxJobId (67,043,328) and 2**26 (where federated job ids begin)."""
CHUNK = 10_000
"""Rows per INSERT/DELETE in slurmdbd's database (each holds the job table's AUTO-INC lock while it runs)."""
SACCT_SECONDS_PER_RECORD = 0.0015
"""sacct --json here: 108-138 s for 100,000 jobs with a step each (2-core machine)."""
PRICES = (("gpu", "0.05"), ("cpu", "0.0033"), ("mem", "0.00012207"))
"""Per GPU-, core- and GB-minute; a100 GPUs fall back to ``gpu``."""

# shapes of the real jobs: (sbatch options, how many); arrays count as their tasks
JOB_SHAPES: tuple[tuple[tuple[str, ...], int], ...] = (
    (("-p", "debug", "-c", "1", "--mem=256M"), 6),
    (("-p", "gpu", "-c", "2", "--mem=512M"), 5),
    (("-p", "gpu", "-c", "4", "--mem=1G"), 3),
    (("-p", "gpu", "-c", "1", "--mem=256M", "--gres=gpu:1"), 5),
    (("-p", "gpu", "-c", "2", "--mem=1G", "--gres=gpu:a100:2"), 3),
    (("-p", "debug", "-c", "1", "--mem=256M", "--array=0-9"), 1),
    (("-p", "gpu", "-c", "1", "--mem=512M", "--gres=gpu:1", "--array=0-5"), 1),
)


def array_size(options: tuple[str, ...]) -> int:
    for option in options:
        if option.startswith("--array="):
            low, high = option.removeprefix("--array=").split("-")
            return int(high) - int(low) + 1
    return 1


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def stopped_by_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM runs the same clean-up as Ctrl-C."""
    del signum, frame
    raise KeyboardInterrupt


# --- slurmdbd's database ----------------------------------------------------------------------------------


class SlurmDb:
    """slurmdbd's MariaDB through the ``mariadb`` client (as root on its socket): the job and step tables of
    one cluster, and the benchmark's replicated rows in them."""

    def __init__(self, cluster: str) -> None:
        self.jobs = f"{cluster}_job_table"
        self.steps = f"{cluster}_step_table"

    def sql(self, script: str) -> list[list[str]]:
        done = subprocess.run(
            ["mariadb", f"--socket={MYSQL_SOCKET}", "-N", "-B", SLURM_DB],
            input=script,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"mariadb failed: {done.stderr.strip()[-2000:]}\n(script: {script[:400]})")
        return [line.split("\t") for line in done.stdout.splitlines()]

    def count(self, where: str) -> int:
        return int(self.sql(f"SELECT COUNT(*) FROM {self.jobs} WHERE {where};")[0][0])

    def columns(self, table: str) -> list[str]:
        rows = self.sql(
            "SELECT column_name FROM information_schema.columns "
            f"WHERE table_schema = '{SLURM_DB}' AND table_name = '{table}' ORDER BY ordinal_position;"
        )
        return [row[0] for row in rows]

    @property
    def last_ran(self) -> str:
        return self.jobs.removesuffix("_job_table") + "_last_ran_table"

    def hourly_rollup(self) -> int:
        """Where slurmdbd's hourly rollup stands: it counts each ended hour's jobs into its usage tables."""
        return int(self.sql(f"SELECT hourly_rollup FROM {self.last_ran};")[0][0])

    def replicate(self, account: str, total: int) -> tuple[int, int]:
        """Copy the account's job rows (and their steps) under new job ids until it has ``total`` jobs; each
        copy of an array task points at the copy of its array's job made in the same pass. (jobs, steps) added."""
        originals = self.count(f"account = '{account}' AND id_job < {COPY_BASE}")
        if originals == 0:
            raise RuntimeError(f"no job rows of {account} to replicate")
        passes = -(-total // originals)
        job_cols = [c for c in self.columns(self.jobs) if c != "job_db_inx"]
        picked = {"id_job": "c.new_id", "id_array_job": "c.new_array"}
        job_select = ", ".join(picked.get(c, f"j.`{c}`") for c in job_cols)
        step_cols = self.columns(self.steps)
        step_select = ", ".join("nj.job_db_inx" if c == "job_db_inx" else f"st.`{c}`" for c in step_cols)
        first, stop = COPY_BASE + originals, COPY_BASE + total
        script = [
            f"""
            CREATE TEMPORARY TABLE bench_orig AS
              SELECT job_db_inx, id_job, id_array_job,
                     ROW_NUMBER() OVER (ORDER BY id_job, job_db_inx) - 1 AS k
              FROM {self.jobs} WHERE account = '{account}' AND id_job < {COPY_BASE};
            CREATE TEMPORARY TABLE bench_arrays AS SELECT id_job, k FROM bench_orig;
            CREATE TEMPORARY TABLE bench_copy (
              orig_inx BIGINT UNSIGNED NOT NULL, new_id INT UNSIGNED NOT NULL PRIMARY KEY,
              new_array INT UNSIGNED NOT NULL);
            INSERT INTO bench_copy
              SELECT o.job_db_inx, {COPY_BASE} + s.seq * {originals} + o.k,
                     IF(o.id_array_job = 0, 0, {COPY_BASE} + s.seq * {originals} + COALESCE(a.k, o.k))
              FROM bench_orig o JOIN seq_1_to_{passes} s LEFT JOIN bench_arrays a ON a.id_job = o.id_array_job
              WHERE s.seq * {originals} + o.k < {total};
            """
        ]
        for low in range(first, stop, CHUNK):
            high = min(stop, low + CHUNK)
            script.append(
                f"""
                INSERT INTO {self.jobs} ({", ".join(f"`{c}`" for c in job_cols)})
                  SELECT {job_select} FROM bench_copy c JOIN {self.jobs} j ON j.job_db_inx = c.orig_inx
                  WHERE c.new_id >= {low} AND c.new_id < {high};
                INSERT INTO {self.steps} ({", ".join(f"`{c}`" for c in step_cols)})
                  SELECT {step_select} FROM bench_copy c
                  JOIN {self.jobs} nj ON nj.id_job = c.new_id AND nj.account = '{account}'
                  JOIN {self.steps} st ON st.job_db_inx = c.orig_inx
                  WHERE c.new_id >= {low} AND c.new_id < {high};
                """
            )
        self.sql("\n".join(script))
        return self.copies(f"= '{account}'")

    def copies(self, account_match: str) -> tuple[int, int]:
        """(job rows, step rows) replicated under accounts matching ``account_match`` (SQL, e.g. ``= 'x'``)."""
        [[jobs, steps]] = self.sql(
            f"SELECT COUNT(DISTINCT j.job_db_inx), COUNT(st.job_db_inx) FROM {self.jobs} j "
            f"LEFT JOIN {self.steps} st ON st.job_db_inx = j.job_db_inx "
            f"WHERE j.account {account_match} AND j.id_job >= {COPY_BASE};"
        )
        return int(jobs), int(steps)

    def delete_copies(self, account_match: str) -> tuple[int, int]:
        """Delete every replicated row (steps first) under accounts matching ``account_match``; what is left."""
        where = f"account {account_match} AND id_job >= {COPY_BASE}"
        bounds = self.sql(f"SELECT MIN(id_job), MAX(id_job) FROM {self.jobs} WHERE {where};")
        if bounds and bounds[0][0] != "NULL":
            low, high = int(bounds[0][0]), int(bounds[0][1])
            script = []
            for start in range(low, high + 1, CHUNK):
                span = f"account {account_match} AND id_job >= {start} AND id_job < {start + CHUNK}"
                joined = f"j.account {account_match} AND j.id_job >= {start} AND j.id_job < {start + CHUNK}"
                script.append(
                    f"DELETE st FROM {self.steps} st JOIN {self.jobs} j ON st.job_db_inx = j.job_db_inx WHERE {joined};"
                )
                script.append(f"DELETE FROM {self.jobs} WHERE {span};")
            self.sql("\n".join(script))
        return self.copies(account_match)


# --- the cluster side: user, account, real jobs, sacct ----------------------------------------------------


class Cluster(msgspec.Struct, kw_only=True):
    conf: str
    name: str
    user: str
    account: str

    @property
    def env(self) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "SLURM_CONF": self.conf}

    def run(self, *argv: str, timeout: float = 600) -> str:
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()[-1000:]}")
        return done.stdout

    def submit_jobs(self, seed: int) -> int:
        """Submit every shape as the bench user (short sleeps of 1-5 s); the allocations they make."""
        records = 0
        for number, (options, count) in enumerate(JOB_SHAPES):
            for i in range(count):
                seconds = 1 + (seed + number + i) % 5
                self.run(
                    "runuser", "-u", self.user, "--", "sbatch", "--parsable", f"--account={self.account}",
                    f"--chdir=/home/{self.user}", "--output=/dev/null", "--time=2", f"--job-name=bill{number}-{i}",
                    *options, "--wrap", f"sleep {seconds}",
                )  # fmt: skip
                records += array_size(options)
        return records

    def wait_ended(self, expected: int, start: str, timeout: float) -> None:
        """Until accounting holds ``expected`` allocations of the account, each ended, with its steps ended."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.run("sacct", "-n", "-P", "-A", self.account, "-S", start, "-o", "JobIDRaw,State,End")
            lines = [line.split("|") for line in rows.splitlines() if line]
            allocations = [line for line in lines if "." not in line[0]]
            running = [line for line in lines if line[2] in ("", "Unknown") or line[1] in ("PENDING", "RUNNING")]
            if len(allocations) >= expected and not running:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the bench jobs did not end in {timeout:.0f} s: {len(allocations)} of {expected} allocations, "
                    f"{len(running)} not ended"
                )
            time.sleep(1)

    def sacct_argv(self, start: str) -> list[str]:
        return ["sacct", "--allusers", "--json", "-S", start, "-E", "now", "-A", self.account]

    def lines(self, start: str, *extra: str) -> int:
        """``sacct --allusers -S start [...] | wc -l``."""
        return len(self.run("sacct", "--allusers", "-S", start, *extra).splitlines())


def wait_for_the_hour(args: argparse.Namespace) -> None:
    """Replicate only where sacct's rounds end before the next full hour: slurmdbd's hourly rollup would count
    the copies into its usage tables (a rollup that ran anyway is undone afterwards: see bench_ingest)."""
    needed = 90 + args.rounds * args.records * SACCT_SECONDS_PER_RECORD
    now = time.time()
    left = 3600 - now % 3600
    if needed < left or needed > 3000:
        return
    print(f"  waiting {left + 60:.0f} s for slurmdbd's hourly rollup to pass (sacct's rounds need ~{needed:.0f} s)")
    time.sleep(left + 60)


def daemon_cpu(name: str) -> float:
    pid_file = {"slurmdbd": SLURM_ROOT / "run/slurmdbd.pid", "mariadbd": SLURM_ROOT / "mysql/mysqld.pid"}[name]
    try:
        return cpu_seconds(int(pid_file.read_text())) or 0.0
    except (OSError, ValueError):
        return 0.0


class SacctRun(msgspec.Struct, frozen=True):
    seconds: float
    sacct_cpu: float
    slurmdbd_cpu: float
    mariadb_cpu: float
    payload: bytes


def timed_sacct(cluster: Cluster, start: str) -> SacctRun:
    cpu0, dbd0, my0 = children_cpu(), daemon_cpu("slurmdbd"), daemon_cpu("mariadbd")
    began = time.perf_counter()
    done = subprocess.run(cluster.sacct_argv(start), env=cluster.env, capture_output=True, timeout=1800, check=False)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"sacct failed ({done.returncode}): {done.stderr.decode()[-1000:]}")
    return SacctRun(
        seconds=seconds,
        sacct_cpu=children_cpu() - cpu0,
        slurmdbd_cpu=daemon_cpu("slurmdbd") - dbd0,
        mariadb_cpu=daemon_cpu("mariadbd") - my0,
        payload=done.stdout,
    )


# --- the gateway side -------------------------------------------------------------------------------------


class OursRun(msgspec.Struct, frozen=True):
    parse_seconds: float
    ingest_seconds: float
    cpu: float
    """This process's CPU (the parse, and ingest's Python in the event loop and the database threads)."""
    records: int
    charged: int
    entries: int
    skipped: int

    @property
    def seconds(self) -> float:
        return self.parse_seconds + self.ingest_seconds


def one(conn: psycopg.Connection[Any], query: str, params: Any = None) -> tuple[Any, ...]:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return tuple(row)


BILLING_TABLES = "ledger_entries, usage_records, billing_balances, billing_ingest_cursors"


def clear_billing(url: str) -> None:
    """An empty ledger for the next round (prices and workspaces stay)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {BILLING_TABLES}")


async def timed_ingest(db: Database, payload: bytes, cluster: str) -> OursRun:
    cpu0, began = time.process_time(), time.perf_counter()
    records = parse_sacct(payload)
    parsed = time.perf_counter()
    result: IngestResult = await ingest(db, records, cluster=cluster)
    done = time.perf_counter()
    return OursRun(
        parse_seconds=parsed - began,
        ingest_seconds=done - parsed,
        cpu=time.process_time() - cpu0,
        records=result.records,
        charged=result.charged,
        entries=result.entries,
        skipped=result.skipped,
    )


def check_ledger(url: str, expected: int) -> list[str]:
    """What is wrong with the ingest's result: counts, usage records against the ledger."""
    problems: list[str] = []
    with psycopg.connect(url) as conn:
        records, usage_units = one(conn, "SELECT COUNT(*), COALESCE(SUM(amount), 0) FROM usage_records")
        [ledger_units] = one(conn, "SELECT COALESCE(SUM(amount), 0) FROM ledger_entries")
        [finals] = one(conn, "SELECT COUNT(*) FROM usage_records WHERE final")
    if records != expected:
        problems.append(f"{records} usage records, expected {expected}")
    if finals != records:
        problems.append(f"{records - finals} usage records not final")
    if usage_units != -ledger_units:
        problems.append(f"usage records sum to {from_units(usage_units)}, the ledger to {from_units(ledger_units)}")
    return problems


async def add_prices(db: Database, since: datetime) -> None:
    async with db.session() as session:
        for resource, amount in PRICES:
            session.add(Price(resource=resource, currency=CURRENCY, amount=Decimal(amount), valid_from=since))
        await session.commit()


def bench_ingest(args: argparse.Namespace, cluster: Cluster, url: str, slurmdb: SlurmDb) -> bool:
    """Real jobs, replicated to ``--records``; sacct's rounds, the replicated rows deleted, then ours on sacct's
    answer; True when the goal is met."""
    start_at = datetime.now(UTC) - timedelta(minutes=1)
    start = start_at.astimezone().strftime("%Y-%m-%dT%H:%M:%S")
    began = time.monotonic()
    real = cluster.submit_jobs(seed=int(time.time()))
    cluster.wait_ended(real, start, timeout=args.job_timeout)
    originals = slurmdb.count(f"account = '{cluster.account}'")
    print(
        f"ingest: {real} real allocations ({len(JOB_SHAPES)} shapes: CPU only, --gres=gpu:1, --gres=gpu:a100:2, "
        f"arrays) ran and ended in {time.monotonic() - began:.0f} s; {originals} rows in {slurmdb.jobs}"
    )
    wait_for_the_hour(args)
    cluster_lines = cluster.lines(start)
    account_lines = cluster.lines(start, "-A", cluster.account)
    rollup = slurmdb.hourly_rollup()
    sacct_runs: list[SacctRun] = []
    try:
        began = time.monotonic()
        jobs, steps = slurmdb.replicate(cluster.account, args.records)
        print(
            f"  replicated: {jobs} job rows and {steps} step rows added under ids {COPY_BASE + originals}.. "
            f"({jobs + originals} jobs of {cluster.account}) in {time.monotonic() - began:.1f} s"
        )
        # every sacct --allusers on the shared cluster reads the copies while they exist: sacct's rounds come
        # first, one after another, and the copies go before ours run (on the last round's answer)
        for _ in range(args.rounds):
            sacct_runs.append(timed_sacct(cluster, start))
            if len(sacct_runs) > 1:
                previous, last = sacct_runs[-2], sacct_runs[-1]
                if len(previous.payload) != len(last.payload):
                    print(f"  NOTE: sacct's answers differ: {len(previous.payload)}, {len(last.payload)} bytes")
                sacct_runs[-2] = msgspec.structs.replace(previous, payload=b"")
    finally:
        exposed = time.monotonic() - began
        left = slurmdb.delete_copies(f"= '{cluster.account}'")
        after_cluster, after_account = cluster.lines(start), cluster.lines(start, "-A", cluster.account)
        print(
            f"  clean-up after {exposed:.0f} s: replicated rows left {left[0]} jobs, {left[1]} steps; "
            f"sacct --allusers -S {start} | wc -l: {cluster_lines} before, {after_cluster} after"
            f"{'' if after_cluster == cluster_lines else ' (other work ran jobs meanwhile)'}; "
            f"of the account: {account_lines} before, {after_account} after"
        )
        if slurmdb.hourly_rollup() != rollup:  # its usage tables (sreport) counted the copies: roll again
            slurmdb.sql(f"UPDATE {slurmdb.last_ran} SET hourly_rollup = LEAST(hourly_rollup, {rollup});")
            print(
                "  WARNING: slurmdbd's hourly rollup ran while the replicated rows existed; its watermark is set "
                f"back to {datetime.fromtimestamp(rollup, UTC):%H:%M} UTC, so its next rollup (at the next full "
                "hour) counts that hour again without them"
            )
        if left != (0, 0) or after_account != account_lines:
            print("  WARNING: replicated rows are still in slurmdbd's database", file=sys.stderr)
    return measure_ingest(args, cluster, url, sacct_runs, start_at)


def measure_ingest(
    args: argparse.Namespace, cluster: Cluster, url: str, sacct_runs: list[SacctRun], since: datetime
) -> bool:
    payload = sacct_runs[-1].payload

    async def run() -> tuple[list[OursRun], OursRun, list[str]]:
        db = Database(url)
        try:
            await add_prices(db, since - timedelta(days=1))
            ours_runs: list[OursRun] = []
            for _ in range(args.rounds):
                await asyncio.to_thread(clear_billing, url)
                ours_runs.append(await timed_ingest(db, payload, cluster.name))
            problems = await db.run(ledger.verify, write=False)  # each balance against its ledger's sum
            problems += await asyncio.to_thread(check_ledger, url, ours_runs[-1].records)
            again = await timed_ingest(db, payload, cluster.name)  # the same answer once more: nothing to charge
            if again.charged or again.entries:
                problems.append(f"re-ingesting the same answer charged {again.charged} records again")
            return ours_runs, again, problems
        finally:
            await db.dispose()

    ours_runs, again, problems = asyncio.run(run())
    print(f"  sacct --json answer: {len(payload) / 1e6:.0f} MB; sacct's rounds first, then ours on its last answer")
    heads = f"  {'round':>5} {'sacct s':>8} {'(sacct':>7} {'slurmdbd':>9} {'mariadb':>8} {'CPU s)':>6}"
    print(heads + f" {'ours s':>8} {'(parse':>7} {'ingest)':>8} {'CPU s':>6} {'records':>8} {'entries':>8}")
    for number, (s, o) in enumerate(zip(sacct_runs, ours_runs, strict=True), 1):
        print(
            f"  {number:5d} {s.seconds:8.2f} {s.sacct_cpu:7.2f} {s.slurmdbd_cpu:9.2f} {s.mariadb_cpu:8.2f} {'':6}"
            f" {o.seconds:8.2f} {o.parse_seconds:7.2f} {o.ingest_seconds:8.2f} {o.cpu:6.2f} {o.charged:8d}"
            f" {o.entries:8d}"
        )
    sacct_s, ours_s = median(s.seconds for s in sacct_runs), median(o.seconds for o in ours_runs)
    parse_s, ingest_s = median(o.parse_seconds for o in ours_runs), median(o.ingest_seconds for o in ours_runs)
    print(f"  median sacct {sacct_s:.2f} s; ours {ours_s:.2f} s (parse {parse_s:.2f} + ingest {ingest_s:.2f});"
          f" {ours_runs[-1].records / ours_s:,.0f} records/s")  # fmt: skip
    print(f"  the same answer ingested again (nothing new to charge): {again.seconds:.2f} s")
    expected = args.records
    for o in ours_runs:
        if (o.records, o.charged, o.skipped) != (expected, expected, 0):
            problems.append(f"a round read {o.records} records, charged {o.charged}, skipped {o.skipped}")
    ratio = ours_s / sacct_s
    verdict = "NOT VALID" if problems else "OK" if ratio <= INGEST_GOAL else "BELOW GOAL"
    print(f"  ratio (ingest / sacct time, medians): {ratio:.2f}  (goal <= {INGEST_GOAL:.1f})  {verdict}")
    for problem in problems:
        print(f"  WARNING: {problem}")
    return verdict == "OK"


# --- balance ----------------------------------------------------------------------------------------------


def fill_ledger(url: str, workspace_id: int, entries: int) -> tuple[float, Decimal, int]:
    """``entries`` ledger entries (a top-up every 100th, charges between), the balance row set to their sum
    and count, statistics gathered; (seconds, SQL sum, SQL count)."""
    began = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO ledger_entries (workspace_id, key, kind, amount, currency, at, created_at, usage_id,
                                        minutes, gpu_minutes, actor_id, note)
            SELECT %(ws)s, 'bench:' || %(ws)s || ':' || g,
                   CASE WHEN g %% 100 = 0 THEN 'topup' ELSE 'usage' END,
                   CASE WHEN g %% 100 = 0 THEN 1000000 ELSE -(g %% 997 + 1) END,
                   %(currency)s, now() - make_interval(secs => g), now(), NULL,
                   CASE WHEN g %% 100 = 0 THEN 0 ELSE 1 END, 0, NULL, ''
            FROM generate_series(1, %(n)s) AS g
            """,
            {"ws": workspace_id, "currency": CURRENCY, "n": entries},
        )
        conn.execute(
            """
            INSERT INTO billing_balances (workspace_id, amount, currency, entries, updated_at)
            SELECT %(ws)s, COALESCE(SUM(amount), 0), %(currency)s, COUNT(*), now()
            FROM ledger_entries WHERE workspace_id = %(ws)s
            ON CONFLICT (workspace_id) DO UPDATE SET amount = excluded.amount, entries = excluded.entries,
                                                     updated_at = excluded.updated_at
            """,
            {"ws": workspace_id, "currency": CURRENCY},
        )
        conn.execute("VACUUM ANALYZE ledger_entries")
        conn.execute("VACUUM ANALYZE billing_balances")
        units, count = one(
            conn, "SELECT SUM(amount), COUNT(*) FROM ledger_entries WHERE workspace_id = %s", (workspace_id,)
        )
    return time.perf_counter() - began, from_units(units), count


async def p50_httpx(http: httpx.AsyncClient, path: str, headers: dict[str, str], n: int, concurrency: int) -> float:
    """Median latency of ``n`` GETs, ``concurrency`` at a time (each task one request after another)."""
    times: list[float] = []

    async def worker(count: int) -> None:
        for _ in range(count):
            began = time.perf_counter()
            (await http.get(path, headers=headers)).raise_for_status()
            times.append(time.perf_counter() - began)

    await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
    return median(times) * 1000


def bench_balance(args: argparse.Namespace, env: dict[str, str], url: str, workdir: Path) -> bool:
    owner, member = f"bo{uuid.uuid4().hex[:6]}", f"bm{uuid.uuid4().hex[:6]}"
    cli(env, "admin", "create-user", owner)
    cli(env, "admin", "create-user", member)
    admin_token = cli(env, "token", "create", "bench-admin").splitlines()[-1]
    member_token = cli(env, "token", "create", member).splitlines()[-1]
    [port] = free_ports(1)
    base = f"http://127.0.0.1:{port}"
    argv = [*remotegpu_command(), "serve", "--host", "127.0.0.1", "--port", str(port), "--no-migrate"]
    slug = "ledger-bench"
    with server("gateway", argv, env, base + "/readyz", workdir):
        admin = {"Authorization": f"Bearer {admin_token}"}
        body = {"slug": slug, "name": "Ledger", "owner": owner, "currency": CURRENCY}
        r = httpx.post(f"{base}/api/v1/workspaces", json=body, headers=admin, timeout=30)
        r.raise_for_status()
        owner_token = cli(env, "token", "create", owner).splitlines()[-1]
        r = httpx.post(
            f"{base}/api/v1/workspaces/{slug}/members",
            json={"username": member, "role": "member"},
            headers={"Authorization": f"Bearer {owner_token}"},
            timeout=30,
        )
        r.raise_for_status()
        with psycopg.connect(url) as conn:
            [workspace_id] = one(conn, "SELECT id FROM workspaces WHERE slug = %s", (slug,))
        seconds, total, count = fill_ledger(url, workspace_id, args.entries)
        print(f"balance: {count:,} ledger entries written with INSERT ... SELECT generate_series in {seconds:.1f} s")
        headers = {"Authorization": f"Bearer {member_token}"}
        path = f"/api/v1/workspaces/{slug}/billing/balance"
        answer = httpx.get(base + path, headers=headers, timeout=30)
        answer.raise_for_status()
        got = answer.json()
        problems = []
        if Decimal(got["balance"]) != total or got["entries"] != count:
            problems.append(f"the API says {got['balance']} over {got['entries']}, SQL {total} over {count}")
        print(f"  API balance {got['balance']} {got['currency']} over {got['entries']:,} entries; "
              f"SQL sum {total} over {count:,}: {'equal' if not problems else 'DIFFERENT'}")  # fmt: skip
        if args.loadgen == "wrk":
            script = workdir / "report.lua"
            script.write_text(WRK_SCRIPT)

            def p50(p: str, h: dict[str, str]) -> float:
                result = run_wrk(base + p, h, args.wrk_seconds, args.concurrency, script)
                if result.errors:
                    problems.append(f"{result.errors} failed requests to {p}")
                return result.p50_ms

            measure = p50
            how = f"wrk, {args.concurrency} connection(s), {args.wrk_seconds} s per target and round"
        else:

            def measure(p: str, h: dict[str, str]) -> float:
                async def go() -> float:
                    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
                        await p50_httpx(http, p, h, 30, args.concurrency)  # its connections, warm
                        return await p50_httpx(http, p, h, args.requests, args.concurrency)

                return asyncio.run(go())

            how = f"httpx, {args.requests} requests per target and round, {args.concurrency} at a time"
        measure("/healthz", {})
        measure(path, headers)
        print(f"  p50 of GET /healthz and GET .../billing/balance ({how}), {args.rounds} round(s), load {load()}")
        ratios = []
        for _ in range(args.rounds):
            health = measure("/healthz", {})
            balance = measure(path, headers)
            ratios.append(balance / health)
            workspace = measure(f"/api/v1/workspaces/{slug}", headers)  # the same access check, no billing
            print(
                f"    GET /healthz {health:.2f} ms; GET .../billing/balance {balance:.2f} ms; ratio {ratios[-1]:.2f}"
                f"  (GET /api/v1/workspaces/{{ws}} {workspace:.2f} ms)"
            )
    ratio = median(ratios)
    verdict = "NOT VALID" if problems else "OK" if ratio <= BALANCE_GOAL else "BELOW GOAL"
    print(f"  ratio (balance / healthz p50): {ratio:.2f}  (goal <= {BALANCE_GOAL:g})  {verdict}")
    for problem in problems:
        print(f"  WARNING: {problem}")
    return verdict == "OK"


# --- main -------------------------------------------------------------------------------------------------


@contextmanager
def bench_user_and_account(conf: str) -> Iterator[tuple[str, str]]:
    """A throw-away POSIX user and Slurm account (the user associated with it), removed at the end."""
    user, account = f"rgbb{uuid.uuid4().hex[:6]}", f"{ACCOUNT_PREFIX}{uuid.uuid4().hex[:6]}"
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "SLURM_CONF": conf}
    subprocess.run(["useradd", "--create-home", user], check=True)
    try:
        for argv in (
            ["sacctmgr", "-i", "add", "account", account, f"Description={account}", f"Organization={account}"],
            ["sacctmgr", "-i", "add", "user", user, f"Account={account}"],
        ):
            subprocess.run(argv, env=env, capture_output=True, check=True, timeout=120)
        for _ in range(50):  # slurmctld learns associations from slurmdbd a moment later
            shown = subprocess.run(
                ["sacctmgr", "-n", "-P", "show", "assoc", f"account={account}", f"user={user}", "format=user"],
                env=env, capture_output=True, text=True, check=False,
            )  # fmt: skip
            if user in shown.stdout:
                break
            time.sleep(0.2)
        yield user, account
    finally:
        subprocess.run(["scancel", "-u", user], env=env, check=False, capture_output=True)
        for argv in (["sacctmgr", "-i", "remove", "user", user], ["sacctmgr", "-i", "remove", "account", account]):
            subprocess.run(argv, env=env, capture_output=True, check=False, timeout=120)
        for _ in range(100):
            if subprocess.run(["pgrep", "-u", user], capture_output=True, check=False).returncode != 0:
                break
            time.sleep(0.2)
        removed = subprocess.run(["userdel", "--remove", user], check=False, capture_output=True, text=True)
        if removed.returncode != 0:
            print(f"warning: userdel {user}: {removed.stderr.strip()}", file=sys.stderr)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000, help="accounting records to ingest")
    parser.add_argument("--entries", type=int, default=1_000_000, help="ledger entries behind the balance")
    parser.add_argument("--rounds", type=int, default=3, help="each side this many times, alternating; medians")
    parser.add_argument("--only", default=",".join(PHASES), help="comma-separated phases: ingest,balance")
    parser.add_argument("--requests", type=int, default=300, help="httpx: requests per target and round")
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight (both load generators)")
    parser.add_argument("--loadgen", choices=["httpx", "wrk"], default="httpx", help="balance: the client")
    parser.add_argument("--wrk-seconds", type=int, default=5, help="wrk: seconds per target and round")
    parser.add_argument("--job-timeout", type=float, default=600, help="seconds the real jobs may take to end")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args()
    phases = set(args.only.split(","))
    if phases - set(PHASES):
        parser.error(f"unknown phase(s): {', '.join(sorted(phases - set(PHASES)))}")
    if args.rounds < 1 or args.records < 1 or args.entries < 1 or args.concurrency < 1:
        parser.error("--rounds, --records, --entries and --concurrency must be >= 1")
    if args.loadgen == "wrk" and not ensure_wrk():
        parser.error("wrk is not installed and apt-get could not install it")
    args.phases = phases
    return args


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, stopped_by_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also where it was inherited ignored (``cmd &``)
    began = time.monotonic()
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    print(
        f"billing benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, code at {rev.strip() or '?'} (+ working tree); "
        f"{os.cpu_count()} CPUs, load {load()}; PostgreSQL on 127.0.0.1:5432"
    )
    met: list[bool] = []
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="remotegpu-bench-")))
        url = stack.enter_context(database("postgresql", workdir))
        upgrade(url)
        env = {k: v for k, v in os.environ.items() if not k.startswith("REMOTEGPU_")}
        env.update(REMOTEGPU_DATABASE_URL=url, REMOTEGPU_LOG_LEVEL="WARNING", REMOTEGPU_PASSWORD=uuid.uuid4().hex)
        cli(env, "admin", "create-user", "bench-admin", "--admin")
        if "ingest" in args.phases:
            slurm = slurm_env()
            conf = slurm["SLURM_CONF"]
            name = slurm.get("REMOTEGPU_SLURM_CLUSTER", "remotegpu")
            slurmdb = SlurmDb(name)
            leftovers = slurmdb.delete_copies(f"LIKE '{ACCOUNT_PREFIX}%'")  # a killed run's (SIGKILL) rows
            user, account = stack.enter_context(bench_user_and_account(conf))
            cli(env, "admin", "create-user", user)
            admin_token = cli(env, "token", "create", "bench-admin").splitlines()[-1]
            workspace = {"slug": "billing-bench", "name": "Billing", "owner": user, "slurm_account": account,
                         "currency": CURRENCY}  # fmt: skip
            [port] = free_ports(1)
            base = f"http://127.0.0.1:{port}"
            argv = [*remotegpu_command(), "serve", "--host", "127.0.0.1", "--port", str(port), "--no-migrate"]
            with server("gateway-setup", argv, env, base + "/readyz", workdir):
                headers = {"Authorization": f"Bearer {admin_token}"}
                httpx.post(f"{base}/api/v1/workspaces", json=workspace, headers=headers, timeout=30).raise_for_status()
            if leftovers != (0, 0):
                print(f"note: rows of an earlier run were still there: {leftovers}")
            cluster = Cluster(conf=conf, name=name, user=user, account=account)
            met.append(bench_ingest(args, cluster, url, slurmdb))
        if "balance" in args.phases:
            met.append(bench_balance(args, env, url, workdir))
    print(f"(the run took {time.monotonic() - began:.0f} s, load {load()})")
    return 1 if args.check and not all(met) else 0


if __name__ == "__main__":
    sys.exit(main())
