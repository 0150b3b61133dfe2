"""Idempotency-Key as draft-ietf-httpapi-idempotency-key-header asks, and recovery that finishes a submission a
crash left before its sbatch reached Slurm: real cluster, real POSIX users, both database backends."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import msgspec
from sqlalchemy import select

from gateway.app import create_app
from gateway.config import Settings
from gateway.db.base import utcnow
from gateway.db.session import Database
from gateway.jobs.models import TrainingJob
from gateway.jobs.origin import parse_comment
from gateway.jobs.poller import Poller
from gateway.jobs.service import JobService
from slurm.cli import CliSlurmClient
from slurm.client import SlurmClient, Submission
from tests.conftest import UserFactory, asgi_client
from tests.integration.slurm.conftest import BOTH_BACKENDS, WS, Cluster, PosixUserFactory, make_team

BODY = {"name": "once", "command": ["sleep", "30"], "time_minutes": 5}


def quick(settings: Settings) -> Settings:
    """The same settings with a 1 s Slurm timeout: a lease of 6 s, so tests need not wait a minute."""
    return msgspec.structs.replace(settings, slurm_timeout_seconds=1.0)


async def slurm_jobs_named(slurm: SlurmClient, job_id: str) -> list[int]:
    return [j.job_id for j in await slurm.jobs() if (o := parse_comment(j.comment)) is not None and o.job_id == job_id]


@BOTH_BACKENDS
async def test_a_key_reused_with_another_body_is_422_and_the_same_body_in_any_order_is_the_job(
    api: httpx.AsyncClient, make_user: UserFactory, posix_user: PosixUserFactory, slurm_account: str
) -> None:
    team = await make_team(api, make_user, posix_user, slurm_account)
    alice = {**team["alice"], "Idempotency-Key": "k-1"}
    first = await api.post(f"{WS}/lab/jobs", json=BODY, headers=alice)
    assert first.status_code == 201, first.text
    reordered = dict(reversed(BODY.items()))
    again = await api.post(f"{WS}/lab/jobs", json=reordered, headers=alice)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    other = await api.post(f"{WS}/lab/jobs", json={**BODY, "command": ["sleep", "31"]}, headers=alice)
    assert other.status_code == 422, other.text
    problem = other.json()
    assert other.headers["content-type"].startswith("application/problem+json")
    assert problem["errors"][0]["field"] == "Idempotency-Key" and "different request" in problem["detail"]
    # the key is the caller's: another user may use it for anything
    bob = await api.post(
        f"{WS}/lab/jobs", json={**BODY, "name": "b"}, headers={**team["bob"], "Idempotency-Key": "k-1"}
    )
    assert bob.status_code == 201, bob.text
    await api.post(f"{WS}/lab/jobs/{first.json()['id']}/cancel", headers=team["alice"])
    await api.post(f"{WS}/lab/jobs/{bob.json()['id']}/cancel", headers=team["bob"])


class GatedSbatch:
    """The real client, whose sbatch waits for the test's gate: a submission caught in flight."""

    def __init__(self, real: SlurmClient) -> None:
        self.real, self.entered, self.gate = real, asyncio.Event(), asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    async def submit(self, submission: Submission) -> int:
        self.entered.set()
        await self.gate.wait()
        return await self.real.submit(submission)


async def test_a_retry_while_the_first_is_still_submitting_is_409_with_retry_after(
    settings: Settings,
    clean_database: Database,
    cli_client: CliSlurmClient,
    make_user: UserFactory,
    posix_user: PosixUserFactory,
    slurm_account: str,
) -> None:
    gated = GatedSbatch(cli_client)
    slurm: SlurmClient = gated
    async with asgi_client(create_app(settings, database=clean_database, slurm=slurm)) as api:
        team = await make_team(api, make_user, posix_user, slurm_account)
        alice = {**team["alice"], "Idempotency-Key": "in-flight"}
        first = asyncio.create_task(api.post(f"{WS}/lab/jobs", json=BODY, headers=alice))
        await asyncio.wait_for(gated.entered.wait(), 30)
        retry = await api.post(f"{WS}/lab/jobs", json=BODY, headers=alice)
        assert retry.status_code == 409, retry.text
        assert int(retry.headers["retry-after"]) > 0 and retry.json()["type"].endswith("request-in-progress")
        gated.gate.set()
        made = await first
        assert made.status_code == 201, made.text
        after = await api.post(f"{WS}/lab/jobs", json=BODY, headers=alice)
        assert after.status_code == 200 and after.json()["id"] == made.json()["id"]
        assert after.json()["slurm_job_id"] == made.json()["slurm_job_id"]
        await api.post(f"{WS}/lab/jobs/{made.json()['id']}/cancel", headers=team["alice"])


class DiesBeforeSbatch:
    """The real client in a process that 'dies' with the job recorded and its sbatch not yet run."""

    def __init__(self, real: SlurmClient) -> None:
        self.real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    async def submit(self, submission: Submission) -> int:
        raise asyncio.CancelledError  # what the event loop does to a request when the process is going down


@BOTH_BACKENDS
async def test_recovery_submits_a_recorded_job_once_no_sbatch_of_it_can_be_running(
    settings: Settings,
    clean_database: Database,
    slurm_client: SlurmClient,
    slurm_cluster: Cluster,
    make_user: UserFactory,
    posix_user: PosixUserFactory,
    slurm_account: str,
) -> None:
    """Before: the retry got SUBMITTING and a minute later the job was SUBMIT_FAILED "never reached Slurm"."""
    settings = quick(settings)
    dying: SlurmClient = DiesBeforeSbatch(slurm_client)
    held = {**BODY, "hold": True}  # what the recorded script says reaches Slurm on the second sbatch too
    async with asgi_client(create_app(settings, database=clean_database, slurm=dying)) as api:
        team = await make_team(api, make_user, posix_user, slurm_account)
        alice = {**team["alice"], "Idempotency-Key": "lost-1"}
        with contextlib.suppress(asyncio.CancelledError):
            await api.post(f"{WS}/lab/jobs", json=held, headers=alice)
    jobs = JobService(clean_database, slurm_client, settings)
    poller = Poller(clean_database, slurm_client, jobs)
    async with asgi_client(create_app(settings, database=clean_database, slurm=slurm_client)) as api:
        (job_id,) = await clean_database.run(lambda s: list(s.scalars(select(TrainingJob.id))), write=False)
        early = await poller.poll_once()  # its sbatch might still be running: hands off
        assert early.unsubmitted == [] and early.resubmitted == 0
        retry = await api.post(f"{WS}/lab/jobs", json=held, headers=alice)
        assert retry.status_code == 409, retry.text  # still submitting, and the client is told so
        await asyncio.sleep(jobs.lease.total_seconds() + 0.5)
        resubmitted = 0
        for _ in range(30):  # a cycle that finds Slurm or its accounting slow to answer leaves it to the next
            recovered = await poller.poll_once()
            resubmitted += recovered.resubmitted
            if resubmitted:
                break
            await asyncio.sleep(1)
        assert resubmitted == 1 and recovered.unsubmitted == [job_id], recovered
        again = await poller.poll_once()
        assert again.resubmitted == 0 and again.unsubmitted == []
        retry = await api.post(f"{WS}/lab/jobs", json=held, headers=alice)
        assert retry.status_code == 200 and retry.json()["id"] == job_id, retry.text
        slurm_id = retry.json()["slurm_job_id"]
        assert slurm_id and await slurm_jobs_named(slurm_client, job_id) == [slurm_id]
        assert "JobHeldUser" in slurm_cluster.run("squeue", "-h", "-j", str(slurm_id), "-o", "%r")
        events = (await api.get(f"{WS}/lab/jobs/{job_id}/events", headers=team["alice"])).json()
        assert [(e["old_state"], e["new_state"]) for e in events][:1] == [("SUBMITTING", "PENDING")]
        await api.post(f"{WS}/lab/jobs/{job_id}/cancel", headers=team["alice"])


async def test_two_recoverers_submit_a_lost_job_once(
    settings: Settings,
    clean_database: Database,
    cli_client: CliSlurmClient,
    make_user: UserFactory,
    posix_user: PosixUserFactory,
    slurm_account: str,
) -> None:
    settings = quick(settings)
    dying: SlurmClient = DiesBeforeSbatch(cli_client)
    async with asgi_client(create_app(settings, database=clean_database, slurm=dying)) as api:
        team = await make_team(api, make_user, posix_user, slurm_account)
        for key in ("a", "b", "c"):
            with contextlib.suppress(asyncio.CancelledError):
                await api.post(f"{WS}/lab/jobs", json=BODY, headers={**team["alice"], "Idempotency-Key": key})
    ids = await clean_database.run(lambda s: list(s.scalars(select(TrainingJob.id))), write=False)
    one, two = (JobService(clean_database, cli_client, settings) for _ in range(2))
    await asyncio.sleep(one.lease.total_seconds() + 0.5)
    absent_at = utcnow()  # as if squeue had just been asked, and showed none of them
    counts = await asyncio.gather(one.finish_submissions(ids, absent_at), two.finish_submissions(ids, absent_at))
    assert sum(counts) == 3
    for job_id in ids:
        assert len(await slurm_jobs_named(cli_client, job_id)) == 1
    cli_client_jobs = await clean_database.run(
        lambda s: list(s.execute(select(TrainingJob.state, TrainingJob.slurm_job_id))), write=False
    )
    assert all(state == "PENDING" and slurm_id for state, slurm_id in cli_client_jobs)
    for job_id in ids:
        for slurm_id in await slurm_jobs_named(cli_client, job_id):
            await cli_client.cancel(slurm_id, user=team["names"]["alice"])
