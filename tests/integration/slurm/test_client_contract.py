"""The SlurmClient contract, against the real two-node cluster.

Every backend must pass it (``client`` runs each test once per backend: the CLI tools and slurmrestd); the
tests at the end hold the two backends to making the same jobs and reporting the same records.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from msgspec.structs import replace

from slurm.cli import CliSlurmClient
from slurm.client import SlurmClient, Submission
from slurm.errors import (
    AccessDenied,
    InvalidAccount,
    InvalidPartition,
    InvalidQos,
    JobNotFound,
    NodeConfigUnavailable,
    SlurmError,
    SubmitRejected,
)
from slurm.records import AccountingRecord, Job, JobState
from slurm.rest import RestSlurmClient
from slurm.script import JobSpec, render
from slurm.tokens import SignedTokens, TokenCache
from tests.integration.slurm.conftest import Cluster, PosixUserFactory, home_of
from tests.integration.slurm.test_sbatch_parity import CORPUS

# alone: these test the backends' account and association changes themselves, which slurmdbd 22.05 loses or
# delays beside another worker's concurrent ones (seen in CI: associations just kept gone again, InvalidAccount)
pytestmark = pytest.mark.serial


@pytest.fixture(params=["cli", "rest"])
def client(request: pytest.FixtureRequest) -> SlurmClient:
    backend: SlurmClient = request.getfixturevalue(f"{request.param}_client")
    return backend


async def _wait_for(client: SlurmClient, job_id: int, done: set[JobState], within: float = 60) -> Job:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        job = next((j for j in await client.jobs() if j.job_id == job_id), None)
        if job is not None and job.state in done:
            return job
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"job {job_id} not in {done} after {within} s: {job}")
        await asyncio.sleep(0.5)


def _sleeper(user: str, account: str, **options: str | None) -> Submission:
    """A job that sleeps long enough for a test, its output discarded."""
    return Submission(
        user=user,
        account=account,
        script="#!/bin/bash\nsleep 300\n",
        work_dir=home_of(user),
        options={"output": "/dev/null", **options},
    )


async def _member(client: SlurmClient, posix_user: PosixUserFactory, account: str, cluster: Cluster) -> str:
    user = posix_user()
    await client.ensure_account(account, description="contract test")
    await client.ensure_association(user, account)
    await asyncio.to_thread(cluster.wait_association, user, account)
    return user


async def test_submit_as_the_user_with_a_typed_gpu(
    client: SlurmClient, posix_user: PosixUserFactory, slurm_account: str, slurm_cluster: Cluster
) -> None:
    user = await _member(client, posix_user, slurm_account, slurm_cluster)
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


async def test_refusals_are_typed(
    client: SlurmClient, posix_user: PosixUserFactory, slurm_account: str, slurm_cluster: Cluster
) -> None:
    user = await _member(client, posix_user, slurm_account, slurm_cluster)
    base = Submission(user=user, account=slurm_account, script="#!/bin/bash\ntrue\n", work_dir=home_of(user))
    with pytest.raises(InvalidAccount) as err:
        await client.submit(replace(base, account="no-such-account"))
    assert "account" in err.value.message.lower()
    with pytest.raises(InvalidPartition):
        await client.submit(replace(base, options={"partition": "nope"}))
    with pytest.raises(NodeConfigUnavailable):
        await client.submit(replace(base, options={"gres": "gpu:a100:5"}))
    with pytest.raises(InvalidQos):
        await client.submit(replace(base, options={"qos": "no-such-qos"}))
    with pytest.raises(SubmitRejected):
        await client.submit(replace(base, options={"time": "soon"}))
    with pytest.raises(ValueError, match="uid"):
        await client.submit(replace(base, options={"uid": "0"}))


async def test_hold_release_cancel_and_only_the_owner_may(
    client: SlurmClient, posix_user: PosixUserFactory, slurm_account: str, slurm_cluster: Cluster
) -> None:
    owner = await _member(client, posix_user, slurm_account, slurm_cluster)
    other = await _member(client, posix_user, slurm_account, slurm_cluster)
    job_id = await client.submit(_sleeper(owner, slurm_account, hold=None))
    held = await _wait_for(client, job_id, {JobState.PENDING})
    assert held.reason in ("JobHeldUser", "JobHeldAdmin")
    with pytest.raises(AccessDenied):
        await client.cancel(job_id, user=other)
    await client.release(job_id, user=owner)
    await _wait_for(client, job_id, {JobState.RUNNING})
    await client.cancel(job_id, user=owner)
    assert (await _wait_for(client, job_id, {JobState.CANCELLED})).state == JobState.CANCELLED


async def test_accounts_associations_and_limits(
    client: SlurmClient, posix_user: PosixUserFactory, slurm_account: str, slurm_cluster: Cluster
) -> None:
    user = await _member(client, posix_user, slurm_account, slurm_cluster)
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
    await client.remove_account(slurm_account)  # idempotent
    assert await client.associations(slurm_account) == []


async def test_concurrent_associations_are_all_kept(
    client: SlurmClient, posix_user: PosixUserFactory, slurm_account: str
) -> None:
    """slurmdbd 22.05 keeps only some of several associations added at once (each add answered as done): the
    backends add, look and add again until each is listed."""
    await client.ensure_account(slurm_account)
    users = [posix_user() for _ in range(6)]
    await asyncio.gather(*(client.ensure_association(user, slurm_account) for user in users))
    assert {a.user for a in await client.associations(slurm_account)} >= set(users)


async def test_grptres_makes_over_quota_work_pend(
    client: SlurmClient, posix_user: PosixUserFactory, slurm_account: str, slurm_cluster: Cluster
) -> None:
    user = await _member(client, posix_user, slurm_account, slurm_cluster)
    await client.set_account_limits(slurm_account, {"gres/gpu": 1})
    job_id = await client.submit(_sleeper(user, slurm_account, gres="gpu:a100:2"))
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


async def test_hold_and_release_by_the_owner_only(
    client: SlurmClient, posix_user: PosixUserFactory, slurm_account: str, slurm_cluster: Cluster
) -> None:
    owner = await _member(client, posix_user, slurm_account, slurm_cluster)
    other = await _member(client, posix_user, slurm_account, slurm_cluster)
    # over the account's GPU limit, so that it stays pending whatever the other tests run
    await client.set_account_limits(slurm_account, {"gres/gpu": 0})
    job_id = await client.submit(_sleeper(owner, slurm_account, gres="gpu:a100:1"))
    try:
        await client.hold(job_id, user=owner)
        assert (await _wait_for(client, job_id, {JobState.PENDING})).reason == "JobHeldUser"
        with pytest.raises(AccessDenied):
            await client.release(job_id, user=other)
        with pytest.raises(AccessDenied):
            await client.hold(job_id, user=other)
        await client.release(job_id, user=owner)
        for _ in range(20):
            released = await _wait_for(client, job_id, {JobState.PENDING})
            if released.reason != "JobHeldUser":
                break
            await asyncio.sleep(0.5)
        assert released.reason != "JobHeldUser", released
    finally:
        await client.cancel(job_id, user=owner)
    assert (await _wait_for(client, job_id, {JobState.CANCELLED})).state == JobState.CANCELLED
    await client.cancel(job_id, user=owner)  # a cancelled job: nothing to do


async def test_jobs_the_controller_does_not_know(client: SlurmClient, posix_user: PosixUserFactory) -> None:
    user = posix_user()
    unknown = 2_000_000_000
    await client.cancel(unknown, user=user)  # as scancel: nothing said about a job it does not know
    with pytest.raises(JobNotFound):
        await client.hold(unknown, user=user)
    with pytest.raises(JobNotFound):
        await client.release(unknown, user=user)


# --- the two backends against each other ---------------------------------------------------------------------

# scontrol show job fields that differ between any two submissions, or that name the submitting process
_VOLATILE = {
    "JobId",
    "ArrayJobId",
    "SubmitTime",
    "EligibleTime",
    "AccrueTime",
    "StartTime",
    "EndTime",
    "LastSchedEval",
    "AllocNode:Sid",  # sbatch's host and session, or slurmrestd's peer address
}


def _show_job(cluster: Cluster, job_id: int) -> dict[str, str]:
    """Every field of ``scontrol show job -o`` but the volatile ones; the job's own id in paths as ``ID``."""
    line = cluster.run("scontrol", "show", "job", "-o", str(job_id)).splitlines()[0]
    fields = {key: value for key, value in re.findall(r"(\S+?)=(\S*)", line) if key not in _VOLATILE}
    for key in ("StdOut", "StdErr", "StdIn", "Dependency"):
        if key in fields:
            fields[key] = re.sub(rf"(?<![0-9A-Za-z]){job_id}(?![0-9A-Za-z])", "ID", fields[key])  # not in a user name
    return fields


def _rendered() -> str:
    spec = JobSpec(
        name="rendered",
        command=["python3", "train.py", "--epochs", "3"],
        nodes=2,
        gpus_per_node=1,
        gpu_type="a100",
        cpus_per_task=2,
        mem_mib=1024,
        time_minutes=90,
        stdout="train-%j.log",
        env={"SEED": "7"},
    )
    return render(spec)


SUBMISSIONS: dict[str, tuple[str, dict[str, str | None]]] = {
    **{f"corpus-{name}": (script, {}) for name, script in CORPUS.items()},
    "rendered-by-the-gateway": (_rendered(), {"comment": "rgpu:parity"}),
    "options-only": (
        "#!/bin/bash\nhostname\n",
        {
            "job-name": "opts",
            "ntasks": "2",
            "cpus-per-task": "1",
            "mem-per-cpu": "300",
            "gpus": "a100:1",
            "time": "0:45:00",
            "partition": "debug",
            "qos": "normal",
            "error": "err-%j.txt",
            "exclusive": None,
            "comment": "rgpu:opts",
        },
    ),
    "options-over-directives": (
        "#!/bin/bash\n#SBATCH --job-name=from-script --time=10\n#SBATCH -c 2 --exclusive=user\nhostname\n",
        {"job-name": "from-options", "gpus-per-node": "1", "array": "1-3", "dependency": "singleton"},
    ),
    "no-options": ("#!/bin/sh\nexit 0\n", {}),
}


@pytest.mark.parametrize("name", sorted(SUBMISSIONS))
async def test_one_submission_makes_the_same_job_through_both_backends(
    name: str,
    slurm_cluster: Cluster,
    cli_client: CliSlurmClient,
    rest_client: RestSlurmClient,
    posix_user: PosixUserFactory,
    slurm_account: str,
) -> None:
    user = await _member(cli_client, posix_user, slurm_account, slurm_cluster)
    script, options = SUBMISSIONS[name]
    submission = Submission(
        user=user, account=slurm_account, script=script, work_dir=home_of(user), options={**options, "hold": None}
    )
    ids = [await cli_client.submit(submission), await rest_client.submit(submission)]
    try:
        via_cli, via_rest = [await asyncio.to_thread(_show_job, slurm_cluster, job_id) for job_id in ids]
        assert via_rest == via_cli
        assert via_cli["Reason"] == "JobHeldUser" and via_cli["UserId"].startswith(f"{user}(")
    finally:
        for job_id in ids:
            await cli_client.cancel(job_id, user=user)


_NODE_OR_JOB = re.compile(
    r"^(SLURM_JOB_?ID|SLURM_TASK_PID|SLURMD_NODENAME|HOSTNAME|SLURM_TOPOLOGY_ADDR|SLURM_(JOB_)?NODELIST)="
)


@pytest.mark.parametrize("export", [None, "ALL", "NONE", "ALL,FOO=bar", "FOO=bar,HOME,LANG"])
async def test_one_submission_gives_the_job_the_same_environment_through_both_backends(
    export: str | None,
    cli_client: CliSlurmClient,
    rest_client: RestSlurmClient,
    posix_user: PosixUserFactory,
    slurm_account: str,
    slurm_cluster: Cluster,
) -> None:
    user = await _member(cli_client, posix_user, slurm_account, slurm_cluster)
    home = home_of(user)
    options: dict[str, str | None] = {"job-name": "env", "output": f"{home}/env-%j.out"}
    if export is not None:
        options["export"] = export
    submission = Submission(
        user=user,
        account=slurm_account,
        script="#!/bin/bash\nenv | sort\necho umask=$(umask)\nulimit -a\n",
        work_dir=home,
        options=options,
    )
    outputs = []
    for backend in (cli_client, rest_client):
        job_id = await backend.submit(submission)
        job = await _wait_for(cli_client, job_id, {JobState.COMPLETED, JobState.FAILED})
        assert job.state == JobState.COMPLETED, job
        text = await asyncio.to_thread(Path(home, f"env-{job_id}.out").read_text)
        outputs.append([line for line in text.splitlines() if not _NODE_OR_JOB.match(line)])
    via_cli, via_rest = outputs
    assert via_rest == via_cli
    assert f"USER={user}" in via_cli and "umask=0022" in via_cli


async def test_both_backends_report_the_same_jobs_and_accounting(
    cli_client: CliSlurmClient,
    rest_client: RestSlurmClient,
    posix_user: PosixUserFactory,
    slurm_account: str,
    slurm_cluster: Cluster,
) -> None:
    user = await _member(cli_client, posix_user, slurm_account, slurm_cluster)
    started = datetime.now(UTC) - timedelta(seconds=5)
    base = Submission(user=user, account=slurm_account, script="#!/bin/bash\nexit 3\n", work_dir=home_of(user))
    finished = await rest_client.submit(replace(base, options={"gres": "gpu:1", "comment": "rgpu:done"}))
    held = await rest_client.submit(replace(base, options={"hold": None, "array": "0-2%1", "comment": "rgpu:held"}))
    try:
        await _wait_for(cli_client, finished, {JobState.FAILED})

        def pick(jobs: list[Job]) -> list[Job]:
            return sorted((j for j in jobs if j.job_id in (finished, held) or j.array_job_id == held), key=str)

        assert pick(await rest_client.jobs()) == pick(await cli_client.jobs())
        records: list[list[AccountingRecord]] = []
        for _ in range(20):  # accounting is written asynchronously by slurmdbd
            records = [
                [r for r in await backend.accounting(started) if r.job_id == finished]
                for backend in (cli_client, rest_client)
            ]
            if all(r and r[0].state.is_terminal for r in records):
                break
            await asyncio.sleep(0.5)
        via_cli, via_rest = records
        assert via_rest == via_cli and via_cli[0].state == JobState.FAILED
        assert via_cli[0].allocated.get("gres/gpu") == 1
        # billing asks for its workspaces' accounts only: both backends filter the same way
        only = [await backend.accounting(started, accounts=[slurm_account]) for backend in (cli_client, rest_client)]
        assert {r.account for r in only[0]} == {slurm_account} and sorted(map(str, only[0])) == sorted(
            map(str, only[1])
        )
        assert [
            await backend.accounting(started, accounts=["no-such-account"]) for backend in (cli_client, rest_client)
        ] == [[], []]
    finally:
        await rest_client.cancel(held, user=user)


# --- the REST backend's own -----------------------------------------------------------------------------------


async def test_rest_refuses_directives_it_cannot_pass_on(
    rest_client: RestSlurmClient, posix_user: PosixUserFactory, slurm_account: str, slurm_cluster: Cluster
) -> None:
    user = await _member(rest_client, posix_user, slurm_account, slurm_cluster)
    script = "#!/bin/bash\n#SBATCH --bb=x --time=5\n#SBATCH --workspace=ml\ntrue\n"
    before = {j.job_id for j in await rest_client.jobs()}
    with pytest.raises(SubmitRejected, match="--bb, --workspace"):
        await rest_client.submit(Submission(user=user, account=slurm_account, script=script, work_dir=home_of(user)))
    assert not [j for j in await rest_client.jobs() if j.job_id not in before and j.user == user]


async def test_rest_with_tokens_signed_here(
    slurm_cluster: Cluster, posix_user: PosixUserFactory, slurm_account: str, cli_client: CliSlurmClient
) -> None:
    """No ``scontrol`` needed where the gateway holds the cluster's JWT key."""
    tokens = TokenCache(SignedTokens.from_file(str(slurm_cluster.jwt_key)), lifespan=120, margin=30)
    async with RestSlurmClient(slurm_cluster.rest_url, tokens=tokens, limits=cli_client) as client:
        user = await _member(client, posix_user, slurm_account, slurm_cluster)
        job_id = await client.submit(_sleeper(user, slurm_account, hold=None))
        assert (await _wait_for(client, job_id, {JobState.PENDING})).user == user
        await client.cancel(job_id, user=user)
        assert (await _wait_for(client, job_id, {JobState.CANCELLED})).state == JobState.CANCELLED


async def test_rest_limits_without_a_fallback_say_why(slurm_cluster: Cluster, slurm_account: str) -> None:
    async with RestSlurmClient(slurm_cluster.rest_url, slurm_conf=slurm_cluster.conf) as client:
        await client.ensure_account(slurm_account)
        await client.set_account_limits(slurm_account, {})  # nothing to set: nothing asked
        with pytest.raises(SlurmError, match="cannot change the GrpTRES"):
            await client.set_account_limits(slurm_account, {"gres/gpu": 1})
