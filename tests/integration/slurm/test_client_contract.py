"""The SlurmClient contract, against the real two-node cluster.

Every backend must pass it; the REST backend will join the ``client`` parametrisation.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from msgspec.structs import replace

from slurm.cli import CliSlurmClient
from slurm.client import SlurmClient, Submission
from slurm.errors import AccessDenied, InvalidAccount, InvalidPartition, NodeConfigUnavailable
from slurm.records import Job, JobState
from tests.integration.slurm.conftest import Cluster, PosixUserFactory, home_of


@pytest.fixture(params=["cli"])
def client(request: pytest.FixtureRequest, cli_client: CliSlurmClient) -> SlurmClient:
    return cli_client


async def _wait_for(client: SlurmClient, job_id: int, done: set[JobState], within: float = 60) -> Job:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        job = next((j for j in await client.jobs() if j.job_id == job_id), None)
        if job is not None and job.state in done:
            return job
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"job {job_id} not in {done} after {within} s: {job}")
        await asyncio.sleep(0.5)


async def _member(client: SlurmClient, posix_user: PosixUserFactory, account: str) -> str:
    user = posix_user()
    await client.ensure_account(account, description="contract test")
    await client.ensure_association(user, account)
    return user


async def test_submit_as_the_user_with_a_typed_gpu(
    client: SlurmClient, posix_user: PosixUserFactory, slurm_account: str
) -> None:
    user = await _member(client, posix_user, slurm_account)
    home = home_of(user)
    started = datetime.now(UTC) - timedelta(seconds=5)
    script = "#!/bin/bash\necho user=$(id -un) gpus=$CUDA_VISIBLE_DEVICES node=$SLURMD_NODENAME\n"
    job_id = await client.submit(
        Submission(
            user=user,
            account=slurm_account,
            script=script,
            work_dir=home,
            options={
                "job-name": "contract",
                "gres": "gpu:a100:1",
                "comment": "rgpu:test-1",
                "output": f"{home}/%j.out",
                "time": "5",
            },
        )
    )
    job = await _wait_for(client, job_id, {JobState.COMPLETED, JobState.FAILED})
    assert job.state == JobState.COMPLETED, job
    assert (job.user, job.account, job.comment, job.name) == (user, slurm_account, "rgpu:test-1", "contract")
    assert job.allocated.get("gres/gpu") == 1 and job.time_limit_minutes == 5
    output = await asyncio.to_thread(Path(home, f"{job_id}.out").read_text)
    assert f"user={user}" in output and "gpus=0" in output

    for _ in range(20):  # accounting is written asynchronously by slurmdbd
        records = {r.job_id: r for r in await client.accounting(started)}
        if job_id in records and records[job_id].state.is_terminal:
            break
        await asyncio.sleep(0.5)
    record = records[job_id]
    assert (record.state, record.account, record.user) == (JobState.COMPLETED, slurm_account, user)
    assert record.allocated.get("gres/gpu") == 1 and record.end_time is not None


async def test_refusals_are_typed(client: SlurmClient, posix_user: PosixUserFactory, slurm_account: str) -> None:
    user = await _member(client, posix_user, slurm_account)
    base = Submission(user=user, account=slurm_account, script="#!/bin/bash\ntrue\n", work_dir=home_of(user))
    with pytest.raises(InvalidAccount) as err:
        await client.submit(replace(base, account="no-such-account"))
    assert "account" in err.value.message.lower()
    with pytest.raises(InvalidPartition):
        await client.submit(replace(base, options={"partition": "nope"}))
    with pytest.raises(NodeConfigUnavailable):
        await client.submit(replace(base, options={"gres": "gpu:a100:5"}))


async def test_hold_release_cancel_and_only_the_owner_may(
    client: SlurmClient, posix_user: PosixUserFactory, slurm_account: str
) -> None:
    owner = await _member(client, posix_user, slurm_account)
    other = await _member(client, posix_user, slurm_account)
    job_id = await client.submit(
        Submission(
            user=owner,
            account=slurm_account,
            script="#!/bin/bash\nsleep 300\n",
            work_dir=home_of(owner),
            options={"hold": None, "output": "/dev/null"},
        )
    )
    held = await _wait_for(client, job_id, {JobState.PENDING})
    assert held.reason in ("JobHeldUser", "JobHeldAdmin")
    with pytest.raises(AccessDenied):
        await client.cancel(job_id, user=other)
    await client.release(job_id, user=owner)
    await _wait_for(client, job_id, {JobState.RUNNING})
    await client.cancel(job_id, user=owner)
    assert (await _wait_for(client, job_id, {JobState.CANCELLED})).state == JobState.CANCELLED


async def test_accounts_associations_and_limits(
    client: SlurmClient, posix_user: PosixUserFactory, slurm_account: str
) -> None:
    user = await _member(client, posix_user, slurm_account)
    await client.ensure_account(slurm_account)  # idempotent
    await client.ensure_association(user, slurm_account)
    await client.set_account_limits(slurm_account, {"gres/gpu": 2, "cpu": 4})
    assocs = {a.user: a for a in await client.associations(slurm_account)}
    assert assocs[None].grp_tres == {"cpu": 4, "gres/gpu": 2}
    assert user in assocs
    await client.set_account_limits(slurm_account, {"gres/gpu": None, "cpu": None})
    assert (await client.associations(slurm_account))[0].grp_tres == {}
    await client.remove_association(user, slurm_account)
    await client.remove_association(user, slurm_account)  # idempotent
    assert user not in {a.user for a in await client.associations(slurm_account)}
    await client.remove_account(slurm_account)
    assert await client.associations(slurm_account) == []


async def test_grptres_makes_over_quota_work_pend(
    client: SlurmClient, posix_user: PosixUserFactory, slurm_account: str
) -> None:
    user = await _member(client, posix_user, slurm_account)
    await client.set_account_limits(slurm_account, {"gres/gpu": 1})
    sub = Submission(
        user=user,
        account=slurm_account,
        script="#!/bin/bash\nsleep 300\n",
        work_dir=home_of(user),
        options={"gres": "gpu:a100:2", "output": "/dev/null"},
    )
    job_id = await client.submit(sub)
    for _ in range(40):  # the reason appears once the scheduler has looked at the job
        pending = await _wait_for(client, job_id, {JobState.PENDING})
        if pending.reason not in (None, "Priority", "Resources"):
            break
        await asyncio.sleep(0.5)
    await client.cancel(job_id, user=user)
    assert pending.reason is not None and "Grp" in pending.reason, pending.reason


def test_squeue_sees_every_users_jobs_in_one_call(slurm_cluster: Cluster) -> None:
    # 22.05's squeue --json ignores filters: one call returns every job, which is what the poller wants.
    out = slurm_cluster.run("squeue", "--all", "--json")
    assert '"jobs"' in out
