"""Nothing lost, nothing twice: ``remotegpu serve`` killed with SIGKILL between sbatch and its database commit.

Real processes: the gateway, the worker, the Slurm cluster. The test makes the gate itself: once the job's row
is committed (before sbatch), it takes SQLite's write lock, so the gateway's commit of the Slurm job id waits;
when the Slurm job exists, the gateway is killed. Nothing in the gateway knows about the test.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing, contextmanager, suppress
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from gateway.jobs.origin import parse_comment
from tests.integration.slurm.conftest import Cluster, PosixUserFactory
from tests.integration.test_cli import _free_port

REMOTEGPU = [sys.executable, "-m", "gateway.cli"]


def run_cli(env: dict[str, str], *args: str, password: str | None = None) -> str:
    extra = {"REMOTEGPU_PASSWORD": password} if password else {}
    done = subprocess.run(
        [*REMOTEGPU, *args], env={**env, **extra}, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@contextmanager
def gateway(env: dict[str, str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        server = subprocess.Popen([*REMOTEGPU, "serve", "--port", str(port)], env=env, stdout=out, stderr=out)
    try:
        for _ in range(150):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            raise AssertionError(f"gateway did not start:\n{log.read_text()[-3000:]}")
        yield server
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(10)


def wait_for(what: str, check: Callable[[], object], within: float = 20) -> object:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.002)
    raise AssertionError(f"timed out waiting for {what}")


def slurm_jobs_of(cluster: Cluster, job_id: str) -> list[str]:
    """The Slurm jobs whose comment names gateway job ``job_id`` (``rgpu:<instance>:<id>``)."""
    out = cluster.run("squeue", "--all", "-h", "-o", "%i|%k")
    found = []
    for line in out.splitlines():
        slurm_id, _, comment = line.partition("|")
        origin = parse_comment(comment)
        if origin is not None and origin.job_id == job_id:
            found.append(slurm_id)
    return found


def test_gateway_killed_between_sbatch_and_commit(
    slurm_cluster: Cluster,
    make_database_url: Callable[[str], str],
    posix_user: PosixUserFactory,
    slurm_account: str,
    tmp_path: Path,
) -> None:
    url = make_database_url("sqlite")
    db_file = url.removeprefix("sqlite:///")
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMOTEGPU_")}
    env.update(REMOTEGPU_DATABASE_URL=url, REMOTEGPU_SLURM_CONF=slurm_cluster.conf, REMOTEGPU_LOG_LEVEL="WARNING")
    user = posix_user()
    run_cli(env, "db", "upgrade")
    run_cli(env, "admin", "create-user", "root", "--admin", password="root-password")
    run_cli(env, "admin", "create-user", user, password="user-password")
    root = {"Authorization": f"Bearer {run_cli(env, 'token', 'create', 'root')}"}
    alice = {"Authorization": f"Bearer {run_cli(env, 'token', 'create', user)}"}
    port = _free_port()
    base = f"http://127.0.0.1:{port}/api/v1"
    log = tmp_path / "serve.log"
    body = {"name": "crashy", "command": ["sleep", "300"]}

    caught: tuple[str, str, str] | None = None  # (idempotency key, gateway id, Slurm id)
    with gateway(env, port, log) as server:
        r = httpx.post(
            base + "/workspaces",
            headers=root,
            json={"slug": "crash-lab", "name": "C", "owner": user, "slurm_account": slurm_account},
        )
        assert r.status_code == 201, r.text
        jobs_url = base + "/workspaces/crash-lab/jobs"
        for attempt in range(10):  # the gate can lose the race to a fast sbatch: then try again
            key = f"crash-{attempt}"
            request = threading.Thread(
                target=_post_ignoring_death, args=(jobs_url, body, {**alice, "Idempotency-Key": key}), daemon=True
            )
            request.start()
            with closing(sqlite3.connect(db_file, isolation_level=None, timeout=10)) as db:
                job_id = str(wait_for("the job's row", partial(_job_id, db, key)))
                db.execute("BEGIN IMMEDIATE")  # the gateway's next commit now waits for us
                (slurm_id,) = db.execute("SELECT slurm_job_id FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if slurm_id is not None:  # sbatch and the commit were faster than the gate
                    db.execute("ROLLBACK")
                    request.join(30)
                    continue
                found = wait_for("the Slurm job", partial(slurm_jobs_of, slurm_cluster, job_id))
                assert isinstance(found, list)
                os.kill(server.pid, signal.SIGKILL)
                server.wait(10)
                db.execute("ROLLBACK")
            request.join(30)
            caught = (key, job_id, found[0])
            break
    assert caught is not None, "the gateway was never caught between sbatch and its commit"
    key, job_id, slurm_id = caught

    with closing(sqlite3.connect(db_file)) as db:
        assert db.execute("SELECT state, slurm_job_id FROM jobs WHERE id = ?", (job_id,)).fetchall() == [
            ("SUBMITTING", None)
        ]
    run_cli(env, "worker", "--once")  # reconciliation adopts the Slurm job by the id it carries
    with gateway(env, port, log):
        retry = httpx.post(jobs_url, json=body, headers={**alice, "Idempotency-Key": key}, timeout=60)
        assert retry.status_code == 200 and retry.json()["id"] == job_id, retry.text
        assert retry.json()["slurm_job_id"] == int(slurm_id)
        assert retry.json()["state"] in ("PENDING", "RUNNING")
        listed = httpx.get(jobs_url, headers=alice, params={"limit": 500}).json()
        with closing(sqlite3.connect(db_file)) as db:
            rows = db.execute("SELECT id, slurm_job_id FROM jobs WHERE idempotency_key = ?", (key,)).fetchall()
        assert rows == [(job_id, int(slurm_id))]
        assert [j["id"] for j in listed["items"]].count(job_id) == 1
        assert slurm_jobs_of(slurm_cluster, job_id) == [slurm_id]
        cancel = httpx.post(f"{jobs_url}/{job_id}/cancel", headers=alice, timeout=60)
        assert cancel.status_code == 202, cancel.text
    slurm_cluster.run("scancel", "--account", slurm_account)


def _job_id(db: sqlite3.Connection, key: str) -> str | None:
    row = db.execute("SELECT id FROM jobs WHERE idempotency_key = ?", (key,)).fetchone()
    return str(row[0]) if row else None


def _post_ignoring_death(url: str, body: Mapping[str, object], headers: Mapping[str, str]) -> None:
    """The submission whose gateway is killed: its connection drops, or it completes if the gate lost."""
    with suppress(httpx.TransportError):
        httpx.post(url, json=body, headers=headers, timeout=60)


BURST = 48
"""More than the CLI backend runs at once (32): when the gateway dies, some jobs are recorded and still waiting
for their sbatch, others are in sbatch, others done; the kill comes once most are recorded."""


@pytest.mark.parametrize("db_backend", ["sqlite", "postgresql"])
def test_gateway_killed_during_a_burst_every_retried_job_runs_once(
    db_backend: str,
    slurm_cluster: Cluster,
    make_database_url: Callable[[str], str],
    posix_user: PosixUserFactory,
    slurm_account: str,
    tmp_path: Path,
) -> None:
    """Before recovery finished submissions, a job recorded but not yet sbatched when the gateway died came back
    to the client's retry as SUBMITTING and ended SUBMIT_FAILED "never reached Slurm". Now the restarted gateway
    (no worker runs) submits it once no sbatch of it can still be running, and every retry gets its one job."""
    url = make_database_url(db_backend)
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMOTEGPU_")}
    env.update(
        REMOTEGPU_DATABASE_URL=url,
        REMOTEGPU_SLURM_CONF=slurm_cluster.conf,
        REMOTEGPU_LOG_LEVEL="INFO",
        REMOTEGPU_SLURM_TIMEOUT_SECONDS="5",  # the lease: 10 s after an sbatch began it is surely over
        REMOTEGPU_POLL_INTERVAL_SECONDS="1",
    )
    user = posix_user()
    run_cli(env, "db", "upgrade")
    run_cli(env, "admin", "create-user", "root", "--admin", password="root-password")
    run_cli(env, "admin", "create-user", user, password="user-password")
    root = {"Authorization": f"Bearer {run_cli(env, 'token', 'create', 'root')}"}
    alice = {"Authorization": f"Bearer {run_cli(env, 'token', 'create', user)}"}
    port = _free_port()
    base = f"http://127.0.0.1:{port}/api/v1"
    jobs_url = base + "/workspaces/burst-lab/jobs"
    log = tmp_path / "serve.log"
    keys = [f"burst-{i}" for i in range(BURST)]
    body = {"name": "burst", "command": ["true"], "time_minutes": 2}

    with gateway(env, port, log) as server:
        r = httpx.post(
            base + "/workspaces",
            headers=root,
            json={"slug": "burst-lab", "name": "B", "owner": user, "slurm_account": slurm_account},
        )
        assert r.status_code == 201, r.text
        requests = [
            threading.Thread(
                target=_post_ignoring_death, args=(jobs_url, body, {**alice, "Idempotency-Key": k}), daemon=True
            )
            for k in keys
        ]
        for request in requests:
            request.start()
        wait_for("most jobs recorded", partial(_recorded, url, 40), within=60)
        os.kill(server.pid, signal.SIGKILL)
        server.wait(10)
    for request in requests:
        request.join(30)
    killed_at = datetime.now(UTC)
    left = _unsubmitted(url)
    assert left, "the kill came after every job had its Slurm id: nothing was left to recover"

    with gateway(env, port, log):  # its start-up recovery settles what the kill left; no worker runs
        try:
            answers = {key: _retry_until_settled(jobs_url, body, {**alice, "Idempotency-Key": key}) for key in keys}
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- gateway log:\n{log.read_text()[-6000:]}") from exc
    assert all(job["slurm_job_id"] for job in answers.values()), answers
    rows = _rows(url)
    assert sorted(key for key, _, _ in rows) == sorted(keys)  # one row per key, none lost, none twice
    assert {key: job_id for key, job_id, _ in rows} == {key: job["id"] for key, job in answers.items()}
    resubmitted = [job_id for _, job_id, attempt in rows if attempt is not None and attempt > killed_at]
    assert resubmitted, "no job needed submitting after the restart: the test did not test recovery"
    # exactly one Slurm job per gateway job, and each of them ran
    by_gateway_id = _accounted(slurm_cluster, slurm_account)
    for key, job in answers.items():
        assert by_gateway_id.get(job["id"], []) == [(job["slurm_job_id"], "COMPLETED")], (key, job, left)


def _db(url: str) -> Any:
    if url.startswith("sqlite:///"):
        return closing(sqlite3.connect(url.removeprefix("sqlite:///"), timeout=10))
    return psycopg.connect(url, autocommit=True)


def _query(url: str, sql: str) -> list[tuple[Any, ...]]:
    if not url.startswith("sqlite:///"):
        sql = sql.replace("?", "%s")
    with _db(url) as db:
        return list(db.execute(sql).fetchall())


def _recorded(url: str, at_least: int) -> bool:
    return bool(_query(url, "SELECT count(*) FROM jobs")[0][0] >= at_least)


def _unsubmitted(url: str) -> list[str]:
    return [row[0] for row in _query(url, "SELECT id FROM jobs WHERE slurm_job_id IS NULL")]


def _rows(url: str) -> list[tuple[str, str, datetime | None]]:
    found = []
    for key, job_id, attempt in _query(url, "SELECT idempotency_key, id, submit_attempt_at FROM jobs"):
        if isinstance(attempt, str):  # SQLite stores naive UTC text
            attempt = datetime.fromisoformat(attempt).replace(tzinfo=UTC)
        found.append((key, job_id, attempt))
    return found


def _retry_until_settled(url: str, body: Mapping[str, object], headers: Mapping[str, str]) -> dict[str, Any]:
    """The client's retry with its key, as the draft says: again after Retry-After while it is in progress."""
    deadline = time.monotonic() + 90
    while True:
        r = httpx.post(url, json=body, headers=headers, timeout=60)
        if r.status_code in (200, 201):
            job: dict[str, Any] = r.json()
            return job
        assert r.status_code in (409, 503) and time.monotonic() < deadline, r.text
        time.sleep(float(r.headers.get("retry-after", "1")))


def _accounted(cluster: Cluster, account: str) -> dict[str, list[tuple[int, str]]]:
    """Every Slurm job of ``account`` by the gateway job its comment names, once each has ended. From squeue,
    which lists ended jobs for MinJobAge (this cluster's accounting keeps no comments)."""
    deadline = time.monotonic() + 90
    while True:
        out = cluster.run("squeue", "--all", "-h", "-t", "all", "-A", account, "-o", "%i|%T|%k")
        found: dict[str, list[tuple[int, str]]] = {}
        for line in out.splitlines():
            slurm_id, state, comment = line.split("|", 2)
            if (origin := parse_comment(comment)) is not None:
                found.setdefault(origin.job_id, []).append((int(slurm_id), state))
        states = {state for jobs in found.values() for _, state in jobs}
        if states <= {"COMPLETED"} or time.monotonic() > deadline:
            return found
        time.sleep(1)
