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
from functools import partial
from pathlib import Path

import httpx

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
