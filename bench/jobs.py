"""Training-job benchmarks on the local Slurm cluster, each against a baseline measured in the same run.

1. submit: N submissions through the API vs N raw ``runuser -u USER -- sbatch`` (same concurrency); goal >= 0.8x.
2. poll: Slurm calls per poll cycle with 1, 100 and 500 jobs; goal: constant (batchspawner needs one per job).
3. list: p50 of ``GET .../jobs`` with 10,000 jobs in the database vs ``GET /healthz``; goal <= 3x.

    .venv/bin/python bench/jobs.py [--submissions 200] [--concurrency 8]
Runs as root (it creates a POSIX user and starts the gateway); needs deploy/dev/slurm/up (run by it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from statistics import median

import httpx

from bench.api import free_ports, server
from gateway.db.session import Database
from gateway.jobs.models import TrainingJob, new_job_id
from gateway.jobs.poller import Poller
from gateway.users.models import User
from gateway.workspaces.models import Workspace
from slurm.cli import CliSlurmClient

ROOT = Path(__file__).resolve().parent.parent


def slurm_env() -> dict[str, str]:
    out = subprocess.run([str(ROOT / "deploy/dev/slurm/up")], capture_output=True, text=True, check=True).stdout
    return dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines() if line.startswith("export "))


async def run_concurrently(n: int, concurrency: int, one: Callable[[], Awaitable[None]]) -> float:
    """Seconds to run ``one()`` n times with ``concurrency`` in flight."""
    gate = asyncio.Semaphore(concurrency)

    async def guarded() -> None:
        async with gate:
            await one()

    started = time.perf_counter()
    await asyncio.gather(*(guarded() for _ in range(n)))
    return time.perf_counter() - started


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--submissions", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    senv = slurm_env()
    conf = senv["SLURM_CONF"]
    slurm = CliSlurmClient(slurm_conf=conf)
    user, account = f"rgb{uuid.uuid4().hex[:6]}", f"bench{uuid.uuid4().hex[:6]}"
    subprocess.run(["useradd", "--create-home", user], check=True)
    try:
        with tempfile.TemporaryDirectory(prefix="remotegpu-bench-") as tmp:
            db_url = f"sqlite:///{tmp}/bench.db"
            env = {k: v for k, v in os.environ.items() if not k.startswith("REMOTEGPU_")}
            env.update(
                REMOTEGPU_DATABASE_URL=db_url,
                REMOTEGPU_SLURM_CONF=conf,
                REMOTEGPU_LOG_LEVEL="WARNING",
                REMOTEGPU_PASSWORD="bench-password",
            )

            def cli(*a: str) -> str:
                return subprocess.run(
                    [sys.executable, "-m", "gateway.cli", *a],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                    cwd=ROOT,
                ).stdout.strip()

            cli("db", "upgrade")
            cli("admin", "create-user", "root", "--admin")
            cli("admin", "create-user", user)
            root_token, user_token = cli("token", "create", "root"), cli("token", "create", user)
            await slurm.ensure_account(account)
            await slurm.ensure_association(user, account)
            [port] = free_ports(1)
            base = f"http://127.0.0.1:{port}"
            argv = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), "--no-migrate"]
            with server("gateway", argv, env, base + "/readyz", Path(tmp)):
                async with httpx.AsyncClient(base_url=base, timeout=120) as http:
                    r = await http.post(
                        "/api/v1/workspaces",
                        headers={"Authorization": f"Bearer {root_token}"},
                        json={"slug": "bench", "name": "B", "owner": user, "slurm_account": account},
                    )
                    r.raise_for_status()
                    home = f"/home/{user}"
                    raw_env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "SLURM_CONF": conf}

                    async def raw_submit() -> None:
                        proc = await asyncio.create_subprocess_exec(
                            "runuser",
                            "-u",
                            user,
                            "--",
                            "sbatch",
                            "--parsable",
                            "--hold",
                            f"--account={account}",
                            f"--chdir={home}",
                            "--output=/dev/null",
                            "--wrap",
                            "true",
                            env=raw_env,
                            stdout=asyncio.subprocess.DEVNULL,
                        )
                        assert await proc.wait() == 0

                    body = {"name": "bench", "command": ["true"], "hold": True, "stdout": "/dev/null"}
                    headers = {"Authorization": f"Bearer {user_token}"}

                    async def api_submit() -> None:
                        (
                            await http.post("/api/v1/workspaces/bench/jobs", json=body, headers=headers)
                        ).raise_for_status()

                    await api_submit()  # warm up: association cache, connections
                    n, c = args.submissions, args.concurrency
                    raw_s = await run_concurrently(n, c, raw_submit)
                    api_s = await run_concurrently(n, c, api_submit)
                    print(f"submit: {n} jobs, {c} at a time")
                    print(f"  raw runuser sbatch   {n / raw_s:8.1f} jobs/s")
                    print(f"  gateway API          {n / api_s:8.1f} jobs/s")
                    print(f"  ratio (API / raw): {raw_s / api_s:.2f}  (goal >= 0.80)")
                    subprocess.run(["scancel", "-u", user], env=raw_env, check=False)

                    # --- poll: Slurm calls per cycle ---------------------------------------------------------
                    database = Database(db_url)
                    async with database.session() as session:
                        ws_id = (await session.scalars(Workspace.__table__.select())).first()
                        owner = (await session.scalars(User.__table__.select().where(User.name == user))).first()
                    print("poll: Slurm calls per cycle")
                    for count in (1, 100, 500):
                        ids = []
                        for _ in range(count):
                            out = subprocess.run(
                                [
                                    "runuser",
                                    "-u",
                                    user,
                                    "--",
                                    "sbatch",
                                    "--parsable",
                                    "--hold",
                                    f"--account={account}",
                                    f"--chdir={home}",
                                    "--wrap",
                                    "true",
                                ],
                                env=raw_env,
                                capture_output=True,
                                text=True,
                                check=True,
                            ).stdout
                            ids.append(int(out.strip()))
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
                                    work_dir=home,
                                    stdout_path="/dev/null",
                                )
                                for i in ids
                            )
                            await session.commit()
                        result = await Poller(database, slurm).poll_once()
                        print(f"  {count:4d} jobs: gateway {result.slurm_calls} call(s); per-job polling: {count}")
                        subprocess.run(["scancel", "-u", user], env=raw_env, check=False)

                    # --- list: 10,000 jobs in the database --------------------------------------------------
                    async with database.session() as session:
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
                                    work_dir=home,
                                    stdout_path="/dev/null",
                                )
                                for _ in range(1000)
                            )
                            await session.flush()
                        await session.commit()
                    await database.dispose()

                    async def p50(path: str, hdrs: dict[str, str]) -> float:
                        times = []
                        for _ in range(200):
                            t = time.perf_counter()
                            (await http.get(path, headers=hdrs)).raise_for_status()
                            times.append(time.perf_counter() - t)
                        return median(times) * 1000

                    await p50("/healthz", {})
                    health = await p50("/healthz", {})
                    listing = await p50("/api/v1/workspaces/bench/jobs?limit=50", headers)
                    print("list: p50 with 10,000+ jobs in the database")
                    print(
                        f"  GET /healthz {health:.2f} ms; GET .../jobs {listing:.2f} ms; "
                        f"ratio {listing / health:.2f}  (goal <= 3)"
                    )
    finally:
        subprocess.run(["scancel", "-u", user], env={"PATH": "/usr/bin:/bin", "SLURM_CONF": conf}, check=False)
        await slurm.remove_account(account)
        subprocess.run(["userdel", "--remove", user], check=False, capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
