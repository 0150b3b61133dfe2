"""A job's output through the API: followed as it is written, per array task, stderr, and only the user's own.

The follow test runs real processes (``remotegpu serve`` and a ``remotegpu worker`` polling), so what is
measured is what a user's ``remotegpu logs -f`` sees.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import time
from pathlib import Path
from typing import Any

import httpx

from gateway.db.session import Database
from gateway.jobs.poller import Poller
from slurm.cli import CliSlurmClient
from tests.conftest import UserFactory
from tests.integration.slurm.conftest import WS, Gateway, PosixUserFactory, home_of, make_team, poll_until


def _workspace(gateway: Gateway, user: str, account: str) -> dict[str, str]:
    root = {"Authorization": f"Bearer {gateway.token('root', admin=True)}"}
    headers = {"Authorization": f"Bearer {gateway.token(user)}"}
    r = httpx.post(
        f"{gateway.url}{WS}", headers=root, json={"slug": "lab", "name": "L", "owner": user, "slurm_account": account}
    )
    assert r.status_code == 201, r.text
    return headers


def test_follow_streams_the_output_while_the_job_runs(
    gateway: Gateway, posix_user: PosixUserFactory, slurm_account: str
) -> None:
    user = posix_user()
    headers = _workspace(gateway, user, slurm_account)
    body = {
        "name": "talker",
        "command": ["bash", "-c", "echo first; sleep 4; echo second; echo oops >&2; printf 'no newline'"],
        "stderr": "err-%j.txt",
        "time_minutes": 5,
    }
    job = httpx.post(f"{gateway.url}{WS}/lab/jobs", json=body, headers=headers).json()
    job_url = f"{gateway.url}{WS}/lab/jobs/{job['id']}"
    chunks: list[tuple[float, bytes, str]] = []  # when, what, and the job's state at that moment
    with gateway.worker(interval=0.5):
        started = time.monotonic()
        with httpx.stream("GET", f"{job_url}/logs", params={"follow": "true"}, headers=headers, timeout=90) as got:
            assert got.status_code == 200 and got.headers["content-type"].startswith("text/plain")
            for chunk in got.iter_bytes():
                chunks.append((time.monotonic() - started, chunk, httpx.get(job_url, headers=headers).json()["state"]))
        ended = time.monotonic() - started
        final = httpx.get(job_url, headers=headers).json()
    assert b"".join(c for _, c, _ in chunks) == b"first\nsecond\nno newline"
    (first_at, first, state), (second_at, *_) = chunks[0], chunks[1]
    # sent while the job still ran (the poller may not have seen it start yet), 4 s before the next line
    assert first == b"first\n" and state in ("PENDING", "RUNNING") and second_at - first_at > 2, chunks
    assert final["state"] == "COMPLETED" and ended < 60, (final, ended)  # and the stream ended by itself

    err = httpx.get(f"{job_url}/logs", params={"stream": "stderr"}, headers=headers).json()
    assert err["lines"] == ["oops"] and err["path"] == f"{home_of(user)}/err-{job['slurm_job_id']}.txt"
    followed = gateway.command("logs", "-f", job["id"], extra_env=_cli_env(gateway, headers))
    assert followed.returncode == 0 and followed.stdout == "first\nsecond\nno newline", followed
    refused = httpx.get(f"{job_url}/logs", params={"task": 0}, headers=headers)
    assert refused.status_code == 400 and refused.json()["errors"][0]["field"] == "task"


def _cli_env(gateway: Gateway, headers: dict[str, str]) -> dict[str, str]:
    return {
        "REMOTEGPU_URL": gateway.url,
        "REMOTEGPU_TOKEN": headers["Authorization"].removeprefix("Bearer "),
        "REMOTEGPU_WORKSPACE": "lab",
    }


async def test_only_the_users_own_regular_file_is_read(
    api: httpx.AsyncClient, make_user: UserFactory, posix_user: PosixUserFactory, slurm_account: str
) -> None:
    """The file is opened as the job's user: a user's --output pointing at another's file must not leak it."""
    team = await make_team(api, make_user, posix_user, slurm_account)
    alice = team["names"]["alice"]
    home = Path(home_of(alice))
    body = {"name": "held", "command": ["true"], "hold": True, "stdout": "out.log"}
    job = (await api.post(f"{WS}/lab/jobs", json=body, headers=team["alice"])).json()
    logs = f"{WS}/lab/jobs/{job['id']}/logs"
    try:
        assert (await api.get(logs, headers=team["alice"])).json()["lines"] == []  # not written yet

        out = home / "out.log"
        out.symlink_to("/etc/shadow")  # what alice can do in her home
        refused = await api.get(logs, headers=team["alice"])
        assert refused.status_code == 403 and "root:" not in refused.text, refused.text
        assert refused.json()["errors"][0]["field"] == "stdout"
        follow = await api.get(logs, params={"follow": "true"}, headers=team["alice"])
        assert follow.status_code == 403 and "root:" not in follow.text

        out.unlink()
        os.mkfifo(out)  # would block a reader that waits for a writer
        fifo = await asyncio.wait_for(api.get(logs, headers=team["alice"]), 10)
        assert fifo.status_code == 403 and "regular file" in fifo.text

        out.unlink()
        out.write_text("made by root\n")  # in her home, but not hers, and closed to her
        out.chmod(0o600)
        assert (await api.get(logs, headers=team["alice"])).status_code == 403

        entry = pwd.getpwnam(alice)
        os.chown(out, entry.pw_uid, entry.pw_gid)
        mine = await api.get(logs, headers=team["alice"])
        assert mine.status_code == 200 and mine.json()["lines"] == ["made by root"]
        assert (await api.get(logs, headers=team["bob"])).status_code == 404
    finally:
        await api.post(f"{WS}/lab/jobs/{job['id']}/cancel", headers=team["alice"])


async def test_an_array_is_one_job_with_its_tasks_counted(
    api: httpx.AsyncClient,
    make_user: UserFactory,
    posix_user: PosixUserFactory,
    slurm_account: str,
    clean_database: Database,
    cli_client: CliSlurmClient,
) -> None:
    team = await make_team(api, make_user, posix_user, slurm_account)
    body: dict[str, Any] = {
        "name": "sweep",
        "command": ["bash", "-c", 'echo "task $SLURM_ARRAY_TASK_ID"; exit $((SLURM_ARRAY_TASK_ID == 1 ? 3 : 0))'],
        "array": "0-2",
        "time_minutes": 5,
    }
    r = await api.post(f"{WS}/lab/jobs", json=body, headers=team["alice"])
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["requested"]["array"] == "0-2"
    done = await poll_until(
        Poller(clean_database, cli_client), api, job["id"], team["alice"], {"COMPLETED", "FAILED", "CANCELLED"}
    )
    assert done["state"] == "FAILED" and done["exit_code"] == 3, done  # one task failed: the array did
    assert done["array_tasks"] == {"COMPLETED": 2, "FAILED": 1}, done
    logs = f"{WS}/lab/jobs/{job['id']}/logs"
    for task in (0, 1, 2):
        got = (await api.get(logs, params={"task": task}, headers=team["alice"])).json()
        assert got["lines"] == [f"task {task}"], got
        assert got["path"].endswith(f"slurm-{done['slurm_job_id']}_{task}.out")
    missing = await api.get(logs, headers=team["alice"])
    assert missing.status_code == 400 and missing.json()["errors"][0]["field"] == "task"
    assert (await api.get(logs, params={"task": 9}, headers=team["alice"])).status_code == 404
    history = (await api.get(f"{WS}/lab/jobs/{job['id']}/events", headers=team["alice"])).json()
    assert history[-1]["new_state"] == "FAILED" and len({e["id"] for e in history}) == len(history)

    bad = await api.post(f"{WS}/lab/jobs", json={**body, "array": "5-1"}, headers=team["alice"])
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "array"
