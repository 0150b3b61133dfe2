"""The poller when the controller goes away and comes back: state unknown, nothing failed, then caught up."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import select

from gateway.accounts.models import User
from gateway.db import migrate
from gateway.db.session import Database
from gateway.jobs.models import TrainingJob, new_job_id
from gateway.jobs.poller import Poller
from gateway.workspaces.models import Workspace
from slurm.cli import CliSlurmClient
from slurm.client import Submission
from tests.conftest import PG_ADMIN_URL
from tests.integration.slurm.conftest import REPO, Cluster, PosixUserFactory, home_of


def bring_back() -> None:
    """deploy/dev/slurm/up starts whatever daemon is missing."""
    subprocess.run([str(REPO / "deploy/dev/slurm/up")], capture_output=True, check=True, timeout=300)


@pytest.fixture
def controller_stopper(slurm_cluster: Cluster) -> Iterator[None]:
    """Yields with slurmctld running; the test stops it by PID; the cluster is brought back afterwards."""
    yield
    bring_back()


def stop_controller(cluster: Cluster) -> None:
    pid_file = Path(cluster.conf).parent.parent / "run" / "slurmctld.pid"
    pid = int(pid_file.read_text())
    os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


@pytest.mark.serial  # stops slurmctld: alone, whatever runs beside it
async def test_controller_down_and_back(
    slurm_cluster: Cluster,
    controller_stopper: None,
    clean_database: Database,
    cli_client: CliSlurmClient,
    posix_user: PosixUserFactory,
    slurm_account: str,
) -> None:
    user = posix_user()
    await cli_client.ensure_account(slurm_account)
    await cli_client.ensure_association(user, slurm_account)
    slurm_id = await cli_client.submit(
        Submission(
            user=user,
            account=slurm_account,
            script="#!/bin/bash\nsleep 120\n",
            work_dir=home_of(user),
            options={"output": "/dev/null"},
        )
    )
    async with clean_database.session() as session:
        owner = User(name=user, posix_name=user)
        ws = Workspace(slug="polled", name="P", slurm_account=slurm_account, currency="CNY")
        session.add_all([owner, ws])
        await session.flush()
        job = TrainingJob(
            id=new_job_id(),
            workspace_id=ws.id,
            user_id=owner.id,
            name="sleep",
            state="PENDING",
            slurm_job_id=slurm_id,
            spec={},
            script="",
            work_dir="/",
            stdout_path="/dev/null",
        )
        session.add(job)
        await session.commit()
    poller = Poller(clean_database, CliSlurmClient(slurm_conf=slurm_cluster.conf, timeout=10))
    for _ in range(60):  # let the job start, so there is a running job for the controller to lose sight of
        first = await poller.poll_once()
        async with clean_database.session() as session:
            if (await session.scalar(select(TrainingJob.state))) == "RUNNING":
                break
        await asyncio.sleep(0.5)
    assert first.reachable and first.slurm_calls == 1

    stop_controller(slurm_cluster)
    down = await poller.poll_once()
    assert not down.reachable
    async with clean_database.session() as session:
        seen = await session.scalar(select(TrainingJob))
        assert seen is not None and seen.state_unknown and seen.state == "RUNNING"  # last known, not "gone"

    await asyncio.to_thread(bring_back)
    back = await poller.poll_once()
    assert back.reachable
    async with clean_database.session() as session:
        seen = await session.scalar(select(TrainingJob))
        assert seen is not None and not seen.state_unknown and seen.state == "RUNNING"
    await cli_client.cancel(slurm_id, user=user)


def test_the_worker_outlives_a_database_that_drops_its_connections(
    slurm_cluster: Cluster, make_database_url: Callable[[str], str], tmp_path: Path
) -> None:
    """A real ``remotegpu worker`` on PostgreSQL whose connections are all killed: it logs the failed cycle
    and goes on polling, where an unhandled error would end the process (and every job's updates)."""
    url = make_database_url("postgresql")
    migrate.upgrade(url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMOTEGPU_")}
    env.update(
        REMOTEGPU_DATABASE_URL=url,
        REMOTEGPU_SLURM_CONF=slurm_cluster.conf,
        REMOTEGPU_POLL_INTERVAL_SECONDS="0.3",
    )
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        _wait_for_lines(log_path, '"event": "poll"', 2)
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            killed = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s", (name,)
            ).fetchone()
        assert killed and killed[0] >= 1
        polls = log_path.read_text().count('"event": "poll"')
        _wait_for_lines(log_path, '"event": "poll"', polls + 3)  # polling again after the loss
        assert worker.poll() is None, log_path.read_text()[-2000:]
    finally:
        worker.terminate()
        worker.wait(10)


def _wait_for_lines(path: Path, needle: str, count: int, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while path.read_text().count(needle) < count:
        assert time.monotonic() < deadline, path.read_text()[-2000:]
        time.sleep(0.2)
