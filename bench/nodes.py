"""The nodes list with many nodes: ``GET /api/v1/nodes`` (as a platform admin) against ``GET /healthz`` of the
same ``remotegpu serve`` process, in the same run. The goal: p50 of the list with 500 nodes <= 3x p50 of /healthz.

The database holds --nodes registered nodes, a cluster snapshot in which Slurm knows each of them (state, reason,
CPUs, memory, GPUs), a running job on every tenth and a finished provision run of every node (its last run); the
list merges all of that per request, with no Slurm call. Requests are sequential (one client, keep-alive),
alternating the two URLs after a warm-up, so both see the same machine; prints p50/p90/p99 of each and the ratios.
A process keeps the list it made while what it is made of stays the same (gateway.nodes.service.list_nodes_json):
a last pass changes a node before each request, so each list is made again, and prints what that costs.

    .venv/bin/python bench/nodes.py [--backend sqlite|postgresql] [--nodes 500] [--requests 300] [--check]

``--check`` exits 1 when the p50 ratio is above 3.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import msgspec
import psycopg
from sqlalchemy import create_engine, text, update

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.accounts.auth import issue_token  # noqa: E402
from gateway.accounts.models import User  # noqa: E402
from gateway.actor import Actor  # noqa: E402
from gateway.cluster.models import ClusterSnapshot  # noqa: E402
from gateway.db import migrate  # noqa: E402
from gateway.db.base import utcnow  # noqa: E402
from gateway.db.session import Database, sync_url  # noqa: E402
from gateway.jobs.models import TrainingJob  # noqa: E402
from gateway.nodes.models import DONE, Node, ProvisionRun, RunTarget  # noqa: E402
from gateway.workspaces.models import Workspace  # noqa: E402
from slurm.records import Node as SlurmNode  # noqa: E402
from slurm.records import NodeGpus  # noqa: E402

GOAL = 3.0
PG_ADMIN = os.environ.get("REMOTEGPU_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def database(backend: str, workdir: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{workdir / 'bench.db'}"
        return
    name = f"remotegpu_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def fill(url: str, count: int) -> str:
    """The nodes, the snapshot, jobs and runs; the admin's bearer token."""
    db = Database(url)
    try:
        async with db.session() as session:
            admin = User(name="bench-admin", posix_name="bench-admin", is_admin=True)
            session.add(admin)
            await session.flush()
            ws = Workspace(slug="bench-ws", name="Bench", slurm_account="bench-ws", currency="CNY")
            session.add(ws)
            await session.flush()
            nodes = [
                Node(
                    name=f"gpu-{i:04d}",
                    address=f"10.1.{i // 250}.{i % 250 + 1}",
                    region=f"dc-{i % 3}",
                    gpu_type="a100" if i % 2 else "h100",
                    gpu_count=8,
                )
                for i in range(count)
            ]
            session.add_all(nodes)
            await session.flush()
            now = utcnow()
            slurm = [
                SlurmNode(
                    name=n.name,
                    state="MIXED" if i % 4 else "IDLE+DRAIN",
                    reason=None if i % 4 else "fan",
                    partitions=("gpu",),
                    cpus=128,
                    cpus_allocated=16 * (i % 8),
                    memory_mib=1_000_000,
                    memory_allocated_mib=64_000 * (i % 8),
                    gpus=(NodeGpus(type=n.gpu_type, total=8, allocated=i % 8),),
                )
                for i, n in enumerate(nodes)
            ]
            session.add(ClusterSnapshot(singleton=1, cluster="bench", updated_at=now, checked_at=now,
                                        nodes=msgspec.to_builtins(slurm), partitions=[]))  # fmt: skip
            for i, n in enumerate(nodes[::10]):
                session.add(TrainingJob(workspace_id=ws.id, user_id=admin.id, name=f"job{i}", state="RUNNING",
                                        slurm_job_id=1000 + i, spec={}, script="", work_dir="/", stdout_path="/x",
                                        nodes=[n.name]))  # fmt: skip
            run = ProvisionRun(states=["remotegpu"], test=False, status=DONE, next_attempt_at=now, finished_at=now)
            session.add(run)
            await session.flush()
            session.add_all(RunTarget(run_id=run.id, node_id=n.id, node_name=n.name, status=DONE, jid=str(i),
                                      states_total=40, states_changed=i % 3, finished_at=now)
                            for i, n in enumerate(nodes))  # fmt: skip
            created = await issue_token(session, Actor.system("bench"), admin, name="bench", ttl_days=1)
            await session.commit()
            return created.token
    finally:
        await db.dispose()


@contextmanager
def serve(url: str, workdir: Path) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMOTEGPU_")}
    env.update(REMOTEGPU_DATABASE_URL=url, REMOTEGPU_RELAY_ENABLED="false", REMOTEGPU_LOG_LEVEL="WARNING",
               REMOTEGPU_POLL_INTERVAL_SECONDS="3600")  # fmt: skip
    log = (workdir / "serve.log").open("w")
    proc = subprocess.Popen(
        [str(ROOT / ".venv/bin/remotegpu"), "serve", "--port", str(port), "--no-migrate"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.TransportError):  # not listening yet
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("remotegpu serve did not start:\n" + (workdir / "serve.log").read_text()[-3000:])
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--check", action="store_true", help="exit 1 when the p50 ratio is above 3")
    args = parser.parse_args()
    print(
        f"nodes list benchmark: {args.nodes} nodes, {args.requests} requests per URL, {args.backend}; "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="remotegpu-bench-nodes-") as tmp, database(args.backend, Path(tmp)) as url:
        migrate.upgrade(url)
        token = asyncio.run(fill(url, args.nodes))
        with serve(url, Path(tmp)) as base, httpx.Client(base_url=base, timeout=30) as client:
            headers = {"Authorization": f"Bearer {token}"}
            first = client.get("/api/v1/nodes", headers=headers)
            first.raise_for_status()
            body = first.json()
            assert len(body["items"]) == args.nodes and all(n["slurm"] for n in body["items"])
            size = len(first.content)
            times: dict[str, list[float]] = {"/healthz": [], "/api/v1/nodes": []}
            for i in range(args.requests + 30):
                for path in times:
                    start = time.perf_counter()
                    got = client.get(path, headers=headers if path != "/healthz" else None)
                    elapsed = (time.perf_counter() - start) * 1000
                    got.raise_for_status()
                    if i >= 30:  # warm-up
                        times[path].append(elapsed)
            # the same list made again each time (a node changed before each request): what a change costs
            engine = create_engine(sync_url(url))
            rebuilt = times["/api/v1/nodes (rebuilt)"] = []
            with engine.begin() as conn:
                conn.execute(text("SELECT 1"))
            for i in range(max(20, args.requests // 5)):
                with engine.begin() as conn:
                    conn.execute(update(Node).where(Node.id == 1 + i % args.nodes).values(updated_at=utcnow()))
                start = time.perf_counter()
                client.get("/api/v1/nodes", headers=headers).raise_for_status()
                rebuilt.append((time.perf_counter() - start) * 1000)
            engine.dispose()
    health, nodes = times["/healthz"], times["/api/v1/nodes"]
    for path, values in times.items():
        print(
            f"{path:<24} p50 {pct(values, 0.5):7.2f} ms   p90 {pct(values, 0.9):7.2f} ms   "
            f"p99 {pct(values, 0.99):7.2f} ms   mean {statistics.fmean(values):7.2f} ms"
        )
    ratio = pct(nodes, 0.5) / pct(health, 0.5)
    print(f"rebuilt / healthz: p50 {pct(rebuilt, 0.5) / pct(health, 0.5):.2f}x (not the goal: a change's cost)")
    verdict = "OK" if ratio <= GOAL else "ABOVE GOAL"
    print(
        f"nodes list ({size / 1024:.0f} KiB) / healthz: p50 {ratio:.2f}x, "
        f"p90 {pct(nodes, 0.9) / pct(health, 0.9):.2f}x (goal p50 <= {GOAL:.0f}x)  {verdict}"
    )
    return 1 if args.check and ratio > GOAL else 0


if __name__ == "__main__":
    sys.exit(main())
