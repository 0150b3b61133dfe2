"""Training-job benchmarks on the local Slurm cluster, each against a baseline measured in the same run.

1. submit: N submissions through the API vs N raw ``runuser -u USER -- sbatch`` (same concurrency); goal >= 0.8x.
2. poll: slurmctld requests (counted by sdiag) per poll cycle with 1, 100 and 500 jobs, against polling each
   job with ``squeue -j`` as batchspawner does; goal: constant.
3. list: p50 of ``GET .../jobs`` with 10,000 jobs in the database vs ``GET /healthz``; goal <= 3x (``--rounds``:
   the median ratio of that many measurements).

    .venv/bin/python bench/jobs.py [--submissions 200] [--concurrency 8] [--backend sqlite|postgresql]
                                   [--slurm cli|rest] [--only submit,poll,list] [--rounds 1]
Runs as root (it creates a POSIX user and starts the gateway); needs deploy/dev/slurm/up (run by it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from statistics import median

import httpx
import msgspec
from sqlalchemy import text, update

from bench.api import cli, cpu_seconds, database, free_ports, remotegpu_command, server
from gateway.accounts.models import User
from gateway.config import load_settings
from gateway.db.session import Database
from gateway.jobs.models import TrainingJob, new_job_id
from gateway.jobs.poller import Poller
from gateway.slurm_client import make_slurm_client
from gateway.workspaces.models import Workspace
from slurm.cli import CliSlurmClient
from slurm.client import SlurmClient

ROOT = Path(__file__).resolve().parent.parent
SLURM_ROOT = Path("/var/tmp/remotegpu-slurm")
PHASES = ("submit", "poll", "list")


class Setup(msgspec.Struct, frozen=True, kw_only=True):
    conf: str
    user: str
    account: str
    home: str
    db_url: str
    base: str
    gateway_pid: int
    user_token: str

    @property
    def raw_env(self) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "SLURM_CONF": self.conf}

    def sbatch_argv(self, *extra: str) -> list[str]:
        return [
            "runuser",
            "-u",
            self.user,
            "--",
            "sbatch",
            "--parsable",
            "--hold",
            f"--account={self.account}",
            f"--chdir={self.home}",
            *extra,
            "--wrap",
            "true",
        ]

    def cancel_all(self) -> None:
        """Cancel the user's jobs and wait until the controller has let go of them (so rounds do not overlap)."""
        subprocess.run(["scancel", "-u", self.user], env=self.raw_env, check=False)
        for _ in range(100):
            listed = subprocess.run(
                ["squeue", "-h", "-u", self.user, "-o", "%i"], env=self.raw_env, capture_output=True, text=True
            )
            if not listed.stdout.strip():
                return
            time.sleep(0.2)


def slurm_env() -> dict[str, str]:
    out = subprocess.run([str(ROOT / "deploy/dev/slurm/up")], capture_output=True, text=True, check=True).stdout
    return dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines() if line.startswith("export "))


def slurmctld_pid() -> int | None:
    try:
        return int((SLURM_ROOT / "run/slurmctld.pid").read_text())
    except (OSError, ValueError):
        return None


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def reaped_children_cpu(pid: int) -> float:
    """CPU of the finished children a process has waited for (cutime + cstime in /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


class Cost(msgspec.Struct, frozen=True):
    """Wall time and CPU of one measured batch."""

    seconds: float
    spawned_cpu: float
    """CPU of the runuser/setpriv and sbatch processes: spawned by the benchmark (raw) or the gateway (API)."""
    gateway_cpu: float
    controller_cpu: float


async def measured(n: int, concurrency: int, one: Callable[[], Awaitable[None]], gateway_pid: int) -> Cost:
    """Run ``one()`` n times with ``concurrency`` in flight; wall time and who spent the CPU."""
    gate = asyncio.Semaphore(concurrency)
    ctld = slurmctld_pid()

    async def guarded() -> None:
        async with gate:
            await one()

    cpu0, gw0, ct0 = children_cpu(), cpu_seconds(gateway_pid) or 0.0, cpu_seconds(ctld) if ctld else 0.0
    gwc0 = reaped_children_cpu(gateway_pid)
    started = time.perf_counter()
    await asyncio.gather(*(guarded() for _ in range(n)))
    seconds = time.perf_counter() - started
    return Cost(
        seconds=seconds,
        spawned_cpu=children_cpu() - cpu0 + reaped_children_cpu(gateway_pid) - gwc0,
        gateway_cpu=(cpu_seconds(gateway_pid) or 0.0) - gw0,
        controller_cpu=((cpu_seconds(ctld) or 0.0) if ctld else 0.0) - (ct0 or 0.0),
    )


async def bench_submit(s: Setup, http: httpx.AsyncClient, n: int, concurrency: int, rounds: int) -> None:
    async def raw_submit() -> None:
        proc = await asyncio.create_subprocess_exec(
            *s.sbatch_argv("--output=/dev/null"), env=s.raw_env, stdout=asyncio.subprocess.DEVNULL
        )
        assert await proc.wait() == 0

    body = {"name": "bench", "command": ["true"], "hold": True, "stdout": "/dev/null"}
    headers = {"Authorization": f"Bearer {s.user_token}"}

    async def api_submit() -> None:
        (await http.post("/api/v1/workspaces/bench/jobs", json=body, headers=headers)).raise_for_status()

    await api_submit()  # warm up: association cache, connections
    print(f"submit: {n} jobs, {concurrency} at a time, {rounds} round(s)")
    print(f"  {'':22} {'jobs/s':>8} {'ms CPU/job:':>12} {'gateway':>8} {'as-user+sbatch':>15} {'slurmctld':>10}")
    ratios = []
    for _ in range(rounds):
        raw = await measured(n, concurrency, raw_submit, s.gateway_pid)
        s.cancel_all()
        api = await measured(n, concurrency, api_submit, s.gateway_pid)
        s.cancel_all()
        for label, cost in (("raw runuser sbatch", raw), ("gateway API", api)):
            print(
                f"  {label:22} {n / cost.seconds:8.1f} {'':12} {cost.gateway_cpu / n * 1000:8.2f} "
                f"{cost.spawned_cpu / n * 1000:15.2f} {cost.controller_cpu / n * 1000:10.2f}"
            )
        ratios.append(raw.seconds / api.seconds)
    print(f"  ratio per round: {', '.join(f'{r:.2f}' for r in ratios)}")
    print(f"  ratio (API / raw throughput): {median(ratios):.2f}  (goal >= 0.80)")


_SDIAG_LINE = re.compile(r"^\s*(REQUEST_\w+)\s+\(\s*\d+\)\s+count:(\d+)")


def controller_requests(env: dict[str, str]) -> dict[str, int]:
    """slurmctld's count of each client request type so far (``sdiag``): what a design costs the controller."""
    out = subprocess.run(["sdiag"], env=env, capture_output=True, text=True, check=True).stdout
    section = out.split("Remote Procedure Call statistics by message type", 1)[1].split("by user", 1)[0]
    return {m[1]: int(m[2]) for line in section.splitlines() if (m := _SDIAG_LINE.match(line))}


def requests_between(before: dict[str, int], after: dict[str, int]) -> int:
    return sum(count - before.get(kind, 0) for kind, count in after.items())


async def bench_poll(s: Setup, slurm: SlurmClient) -> None:
    """Controller requests per cycle, read off slurmctld (sdiag), for the gateway's poller and for polling
    each job with ``squeue -j`` as batchspawner does, with 1, 100 and 500 jobs."""
    database = Database(s.db_url)
    async with database.session() as session:
        ws_id = (await session.scalars(Workspace.__table__.select())).first()
        owner = (await session.scalars(User.__table__.select().where(User.name == s.user))).first()
    print("poll: slurmctld requests per cycle (sdiag), gateway poller vs one squeue -j per job")
    print(f"  {'jobs':>5} {'gateway':>8} {'per job':>8} {'gateway ms':>11} {'per job ms':>11}")
    poller = Poller(database, slurm)
    for count in (1, 100, 500):
        ids = [
            int(subprocess.run(s.sbatch_argv(), env=s.raw_env, capture_output=True, text=True, check=True).stdout)
            for _ in range(count)
        ]
        async with database.session() as session:
            session.add_all(
                TrainingJob(
                    id=new_job_id(),
                    workspace_id=ws_id,
                    user_id=owner,
                    name="p",
                    state="PENDING",
                    slurm_job_id=i,
                    spec={},
                    script="",
                    work_dir=s.home,
                    stdout_path="/dev/null",
                )
                for i in ids
            )
            await session.commit()
        await poller.poll_once()  # settle what the new rows change, so the measured cycle is a steady one
        before = controller_requests(s.raw_env)
        started = time.perf_counter()
        await poller.poll_once()
        gateway_ms = (time.perf_counter() - started) * 1000
        middle = controller_requests(s.raw_env)
        started = time.perf_counter()
        for job_id in ids:
            subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T %B"], env=s.raw_env, capture_output=True)
        per_job_ms = (time.perf_counter() - started) * 1000
        after = controller_requests(s.raw_env)
        gateway, per_job = requests_between(before, middle), requests_between(middle, after)
        print(f"  {count:5d} {gateway:8d} {per_job:8d} {gateway_ms:11.1f} {per_job_ms:11.1f}")
        async with database.session() as session:
            await session.execute(update(TrainingJob).values(state="CANCELLED"))
            await session.commit()
        s.cancel_all()
    await database.dispose()


async def bench_list(s: Setup, http: httpx.AsyncClient, rounds: int) -> None:
    database = Database(s.db_url)
    async with database.session() as session:
        ws_id = (await session.scalars(Workspace.__table__.select())).first()
        owner = (await session.scalars(User.__table__.select().where(User.name == s.user))).first()
        for _ in range(10):
            session.add_all(
                TrainingJob(
                    id=new_job_id(),
                    workspace_id=ws_id,
                    user_id=owner,
                    name="l",
                    state="COMPLETED",
                    spec={},
                    script="",
                    work_dir=s.home,
                    stdout_path="/dev/null",
                )
                for _ in range(1000)
            )
            await session.flush()
        await session.commit()
        if database.backend == "postgresql":  # planner statistics, as autovacuum gathers them after bulk inserts
            await session.execute(text("ANALYZE"))
            await session.commit()
    await database.dispose()
    headers = {"Authorization": f"Bearer {s.user_token}"}

    async def p50(path: str, hdrs: dict[str, str]) -> float:
        times = []
        for _ in range(300):
            t = time.perf_counter()
            (await http.get(path, headers=hdrs)).raise_for_status()
            times.append(time.perf_counter() - t)
        return median(times) * 1000

    await p50("/healthz", {})
    await p50("/api/v1/workspaces/bench/jobs?limit=50", headers)
    print(f"list: p50 with 10,000+ jobs in the database, 50 per page, {rounds} round(s)")
    ratios = []
    for _ in range(rounds):  # each round both targets, one after the other: a busy moment shows in one round
        health = await p50("/healthz", {})
        listing = await p50("/api/v1/workspaces/bench/jobs?limit=50", headers)
        ratios.append(listing / health)
        print(f"  GET /healthz {health:.2f} ms; GET .../jobs {listing:.2f} ms; ratio {listing / health:.2f}")
    print(f"  ratio (list / healthz p50): {median(ratios):.2f}  (goal <= 3)")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--submissions", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--rounds", type=int, default=1, help="submit: alternate raw/API this many times; list: measure it so often"
    )
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite", help="the gateway's database")
    parser.add_argument("--slurm", choices=["cli", "rest"], default="cli", help="how the gateway talks to Slurm")
    parser.add_argument("--only", default=",".join(PHASES), help="comma-separated phases: submit,poll,list")
    args = parser.parse_args()
    phases = set(args.only.split(","))
    if phases - set(PHASES):
        parser.error(f"unknown phase(s): {', '.join(sorted(phases - set(PHASES)))}")
    cluster = slurm_env()
    conf = cluster["SLURM_CONF"]
    slurm_settings = {
        "REMOTEGPU_SLURM_CONF": conf,
        "REMOTEGPU_SLURM_BACKEND": args.slurm,
        "REMOTEGPU_SLURMRESTD_URL": cluster["REMOTEGPU_SLURMRESTD_URL"],
    }
    admin = CliSlurmClient(slurm_conf=conf)  # the benchmark's own set-up and clean-up
    slurm = make_slurm_client(load_settings(environ=slurm_settings))
    user, account = f"rgb{uuid.uuid4().hex[:6]}", f"bench{uuid.uuid4().hex[:6]}"
    subprocess.run(["useradd", "--create-home", user], check=True)
    try:
        with tempfile.TemporaryDirectory(prefix="remotegpu-bench-") as tmp, database(args.backend, Path(tmp)) as url:
            env = {k: v for k, v in os.environ.items() if not k.startswith("REMOTEGPU_")}
            env.update(
                slurm_settings,
                REMOTEGPU_DATABASE_URL=url,
                REMOTEGPU_LOG_LEVEL="WARNING",
                REMOTEGPU_PASSWORD="bench-password",
            )
            cli(env, "db", "upgrade")
            cli(env, "admin", "create-user", "root", "--admin")
            cli(env, "admin", "create-user", user)
            root_token, user_token = cli(env, "token", "create", "root"), cli(env, "token", "create", user)
            await admin.ensure_account(account)
            await admin.ensure_association(user, account)
            [port] = free_ports(1)
            base = f"http://127.0.0.1:{port}"
            argv = [*remotegpu_command(), "serve", "--port", str(port), "--no-migrate"]
            with server("gateway", argv, env, base + "/readyz", Path(tmp)) as pid:
                setup = Setup(
                    conf=conf,
                    user=user,
                    account=account,
                    home=f"/home/{user}",
                    db_url=url,
                    base=base,
                    gateway_pid=pid,
                    user_token=user_token,
                )
                async with httpx.AsyncClient(base_url=base, timeout=120) as http:
                    r = await http.post(
                        "/api/v1/workspaces",
                        headers={"Authorization": f"Bearer {root_token}"},
                        json={"slug": "bench", "name": "B", "owner": user, "slurm_account": account},
                    )
                    r.raise_for_status()
                    print(f"database: {args.backend}; Slurm through: {args.slurm}")
                    if "submit" in phases:
                        await bench_submit(setup, http, args.submissions, args.concurrency, args.rounds)
                    if "poll" in phases:
                        await bench_poll(setup, slurm)
                    if "list" in phases:
                        await bench_list(setup, http, args.rounds)
    finally:
        subprocess.run(["scancel", "-u", user], env={"PATH": "/usr/bin:/bin", "SLURM_CONF": conf}, check=False)
        await admin.remove_account(account)
        await slurm.close()
        subprocess.run(["userdel", "--remove", user], check=False, capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
