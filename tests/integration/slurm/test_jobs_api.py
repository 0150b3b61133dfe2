"""Training jobs through the API, on the real cluster, as real POSIX users, on both database backends."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import delete

from gateway.app import create_app
from gateway.config import Settings
from gateway.db import migrate
from gateway.db.session import Database
from gateway.jobs.models import JobEvent, TrainingJob
from gateway.jobs.origin import parse_comment
from gateway.jobs.poller import Poller
from slurm.cli import CliSlurmClient
from slurm.client import SlurmClient, Submission
from slurm.records import JobState
from tests.conftest import UserFactory, asgi_client
from tests.integration.slurm.conftest import BOTH_BACKENDS, WS, PosixUserFactory, make_team, poll_until


@BOTH_BACKENDS
async def test_submit_follow_and_read_logs(
    api: httpx.AsyncClient,
    make_user: UserFactory,
    posix_user: PosixUserFactory,
    slurm_account: str,
    clean_database: Database,
    slurm_client: SlurmClient,
) -> None:
    team = await make_team(api, make_user, posix_user, slurm_account)
    body = {
        "name": "hello",
        "command": ["bash", "-c", 'echo "hi from $(id -un) on $SLURMD_NODENAME gpu=$CUDA_VISIBLE_DEVICES"'],
        "gpus_per_node": 1,
        "gpu_type": "a100",
        "time_minutes": 5,
        "env": {"GREETING": 'it\'s "quoted"'},
    }
    r = await api.post(f"{WS}/lab/jobs", json=body, headers={**team["alice"], "Idempotency-Key": "k-1"})
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["state"] == "PENDING" and job["slurm_job_id"] and job["user"] == team["names"]["alice"]

    again = await api.post(f"{WS}/lab/jobs", json=body, headers={**team["alice"], "Idempotency-Key": "k-1"})
    assert again.status_code == 200 and again.json()["id"] == job["id"]

    poller = Poller(clean_database, slurm_client)
    done = await poll_until(poller, api, job["id"], team["alice"], {"COMPLETED", "FAILED"})
    assert done["state"] == "COMPLETED" and done["exit_code"] == 0 and done["allocated"]["gres/gpu"] == 1
    assert done["started_at"] and done["ended_at"] and done["nodes"] and done["array_tasks"] is None
    history = (await api.get(f"{WS}/lab/jobs/{job['id']}/events", headers=team["alice"])).json()
    states = [(e["old_state"], e["new_state"]) for e in history]
    assert states[0] == ("SUBMITTING", "PENDING") and states[-1][1] == "COMPLETED"
    assert all(a[1] == b[0] for a, b in itertools.pairwise(states)), states  # one unbroken chain
    assert (await api.get(f"{WS}/lab/jobs/{job['id']}/events", headers=team["bob"])).status_code == 404

    logs = (await api.get(f"{WS}/lab/jobs/{job['id']}/logs", headers=team["alice"])).json()
    assert logs["lines"] in (  # the GPU Slurm gave it: 0 or 1, whichever was free (no cgroup renumbering here)
        [f"hi from {team['names']['alice']} on {done['nodes'][0]} gpu={gpu}"] for gpu in (0, 1)
    )

    # members see their own jobs only; workspace owners and admins see everyone's
    assert (await api.get(f"{WS}/lab/jobs/{job['id']}", headers=team["bob"])).status_code == 404
    assert (await api.get(f"{WS}/lab/jobs", headers=team["bob"])).json()["total"] == 0
    listed = (await api.get(f"{WS}/lab/jobs", params={"state": "completed"}, headers=team["owner"])).json()
    assert [j["id"] for j in listed["items"]] == [job["id"]]


@BOTH_BACKENDS
async def test_control_and_permissions(
    api: httpx.AsyncClient,
    make_user: UserFactory,
    posix_user: PosixUserFactory,
    slurm_account: str,
    clean_database: Database,
    slurm_client: SlurmClient,
) -> None:
    team = await make_team(api, make_user, posix_user, slurm_account)
    r = await api.post(
        f"{WS}/lab/jobs", json={"name": "sleepy", "command": ["sleep", "300"], "hold": True}, headers=team["alice"]
    )
    job_id = r.json()["id"]
    poller = Poller(clean_database, slurm_client)
    held = await poll_until(poller, api, job_id, team["alice"], {"PENDING"})
    assert held["reason"] in ("JobHeldUser", "JobHeldAdmin")
    assert (await api.post(f"{WS}/lab/jobs/{job_id}/cancel", headers=team["bob"])).status_code == 404
    assert (await api.post(f"{WS}/lab/jobs/{job_id}/release", headers=team["alice"])).status_code == 202
    await poll_until(poller, api, job_id, team["alice"], {"RUNNING"})
    assert (await api.post(f"{WS}/lab/jobs/{job_id}/cancel", headers=team["owner"])).status_code == 202
    await poll_until(poller, api, job_id, team["alice"], {"CANCELLED"})
    # each action is a route of its own: an unknown one is no route at all
    assert (await api.post(f"{WS}/lab/jobs/{job_id}/explode", headers=team["alice"])).status_code == 404


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"partition": "nope"}, "partition"),
        ({"gpus_per_node": 5, "gpu_type": "a100"}, "gpus_per_node"),
        ({"datasets": ["/a", "/b", "/c", "/d"]}, "datasets"),
        ({"datasets": ["relative"]}, "datasets[0]"),
        ({"code_dir": "/home/../etc"}, "code_dir"),
        ({"env": {"BAD-NAME": "x"}}, "env.BAD-NAME"),
        ({"env": {"SLURM_JOB_ID": "1"}}, "env.SLURM_JOB_ID"),
        ({"name": "two words"}, "name"),
        ({"image": "nvcr.io/nvidia/pytorch:24.01"}, "image"),
        ({"work_dir": "tmp"}, "work_dir"),
        ({"command": None}, "command"),
    ],
)
async def test_bad_jobs_are_refused_naming_the_field(
    api: httpx.AsyncClient,
    make_user: UserFactory,
    posix_user: PosixUserFactory,
    slurm_account: str,
    changes: dict[str, Any],
    field: str,
) -> None:
    team = await make_team(api, make_user, posix_user, slurm_account)
    body = {"name": "bad", "command": ["true"], **changes}
    r = await api.post(f"{WS}/lab/jobs", json=body, headers=team["alice"])
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["field"] == field


async def test_over_quota_is_refused_up_front(
    api: httpx.AsyncClient, make_user: UserFactory, posix_user: PosixUserFactory, slurm_account: str
) -> None:
    team = await make_team(api, make_user, posix_user, slurm_account)
    await api.put(f"{WS}/lab/quota", json={"gpus": 2}, headers=team["owner"])
    r = await api.post(
        f"{WS}/lab/jobs",
        json={"name": "big", "command": ["true"], "nodes": 2, "gpus_per_node": 2},
        headers=team["alice"],
    )
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "gpus_per_node"


async def test_a_removed_association_is_made_again(
    api: httpx.AsyncClient,
    make_user: UserFactory,
    posix_user: PosixUserFactory,
    slurm_account: str,
    cli_client: CliSlurmClient,
) -> None:
    """The gateway remembers which associations it made; one removed behind its back must not lock the user out."""
    team = await make_team(api, make_user, posix_user, slurm_account)
    body = {"name": "held", "command": ["true"], "hold": True}
    first = await api.post(f"{WS}/lab/jobs", json=body, headers=team["alice"])
    assert first.status_code == 201, first.text
    await api.post(f"{WS}/lab/jobs/{first.json()['id']}/cancel", headers=team["alice"])
    await cli_client.remove_association(team["names"]["alice"], slurm_account)
    again = await api.post(f"{WS}/lab/jobs", json=body, headers=team["alice"])
    assert again.status_code == 201 and again.json()["slurm_job_id"], again.text
    assert team["names"]["alice"] in {a.user for a in await cli_client.associations(slurm_account)}
    await api.post(f"{WS}/lab/jobs/{again.json()['id']}/cancel", headers=team["alice"])


async def test_orphans_are_cancelled_but_only_this_gateways(
    api: httpx.AsyncClient,
    make_user: UserFactory,
    posix_user: PosixUserFactory,
    slurm_account: str,
    clean_database: Database,
    cli_client: CliSlurmClient,
    make_database_url: Callable[[str], str],
) -> None:
    """A Slurm job whose row is gone (a database restored from an older backup) is cancelled by its own gateway's
    poller; a second gateway on the same cluster leaves it alone, as it leaves every job not its own."""
    team = await make_team(api, make_user, posix_user, slurm_account)
    job = (
        await api.post(
            f"{WS}/lab/jobs", json={"name": "lost", "command": ["true"], "hold": True}, headers=team["alice"]
        )
    ).json()
    async with clean_database.session() as session:  # the row lost, the Slurm job still there
        await session.execute(delete(JobEvent).where(JobEvent.job_id == job["id"]))
        await session.execute(delete(TrainingJob).where(TrainingJob.id == job["id"]))
        await session.commit()

    other_url = make_database_url("sqlite")
    await asyncio.to_thread(migrate.upgrade, other_url)
    other = Database(other_url)
    try:
        assert (await Poller(other, cli_client).poll_once()).orphans_cancelled == 0
    finally:
        await other.dispose()
    assert [j.state for j in await cli_client.jobs() if j.job_id == job["slurm_job_id"]] == [JobState.PENDING]

    assert (await Poller(clean_database, cli_client).poll_once()).orphans_cancelled == 1
    for _ in range(40):
        states = [j.state for j in await cli_client.jobs() if j.job_id == job["slurm_job_id"]]
        if states == [JobState.CANCELLED]:
            break
        await asyncio.sleep(0.25)
    assert states == [JobState.CANCELLED]


class DiesAfterSbatch:
    """A SlurmClient whose process 'dies' right after sbatch succeeded, before the gateway records the id."""

    def __init__(self, real: CliSlurmClient) -> None:
        self.real = real
        self.slurm_ids: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    async def submit(self, submission: Submission) -> int:
        self.slurm_ids.append(await self.real.submit(submission))
        raise asyncio.CancelledError  # what the event loop does to a request when the process is going down


async def test_crash_between_sbatch_and_commit_leaves_exactly_one_job(
    settings: Settings,
    clean_database: Database,
    cli_client: CliSlurmClient,
    make_user: UserFactory,
    posix_user: PosixUserFactory,
    slurm_account: str,
) -> None:
    dying = DiesAfterSbatch(cli_client)
    slurm: SlurmClient = dying
    async with asgi_client(create_app(settings, database=clean_database, slurm=slurm)) as api:
        team = await make_team(api, make_user, posix_user, slurm_account)
        with pytest.raises(asyncio.CancelledError):
            await api.post(
                f"{WS}/lab/jobs",
                json={"name": "crashy", "command": ["sleep", "30"]},
                headers={**team["alice"], "Idempotency-Key": "crash-1"},
            )
    async with asgi_client(create_app(settings, database=clean_database, slurm=cli_client)) as api:
        listed = (await api.get(f"{WS}/lab/jobs", headers=team["alice"])).json()["items"]
        assert [(j["state"], j["slurm_job_id"]) for j in listed] == [("SUBMITTING", None)]
        result = await Poller(clean_database, cli_client).poll_once()
        assert result.adopted == 1
        job = (await api.get(f"{WS}/lab/jobs/{listed[0]['id']}", headers=team["alice"])).json()
        assert job["slurm_job_id"] == dying.slurm_ids[0]
        # the client retries with the same key: still that one job
        retry = await api.post(
            f"{WS}/lab/jobs",
            json={"name": "crashy", "command": ["sleep", "30"]},
            headers={**team["alice"], "Idempotency-Key": "crash-1"},
        )
        assert retry.status_code == 200 and retry.json()["id"] == job["id"]
        in_slurm = [j for j in await cli_client.jobs() if (o := parse_comment(j.comment)) and o.job_id == job["id"]]
        assert [j.job_id for j in in_slurm] == dying.slurm_ids
        await api.post(f"{WS}/lab/jobs/{job['id']}/cancel", headers=team["alice"])
