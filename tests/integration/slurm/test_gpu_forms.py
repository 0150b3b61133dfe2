"""GPU requests and daily sbatch options reach Slurm as the user wrote them: raw ``sbatch`` and the gateway's
path (``remotegpu submit``'s translation -> JobCreate -> job spec -> rendered script -> each backend) make jobs
that ``scontrol show job`` shows alike, on the fields those options determine."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from pathlib import Path

import msgspec
import pytest

from gateway.client.sbatch import job_request
from gateway.jobs.schemas import JobCreate, job_spec
from slurm.cli import CliSlurmClient
from slurm.client import SlurmClient, Submission
from slurm.script import render
from tests.integration.slurm.conftest import Cluster, PosixUserFactory, home_of

pytestmark = pytest.mark.integration

FIELDS = (
    "TresPerJob",
    "TresPerNode",
    "TresPerTask",
    "MemPerTres",
    "CpusPerTres",
    "NtasksPerTRES",
    "NumNodes",
    "NumTasks",
    "NumCPUs",
    "TRES",
    "MinMemoryNode",
    "MinMemoryCPU",
    "ReqNodeList",
    "ExcNodeList",
    "Requeue",
    "Nice",
    "OverSubscribe",
    "MailUser",
    "MailType",
    "Features",
    "Licenses",
    "KillOInInvalidDependent",
    "TimeMin",
    "TimeLimit",
    "Partition",
)
"""What the options below determine (scontrol show job's names)."""

CASES: dict[str, list[str]] = {
    "gres-untyped-one": ["--gres=gpu:1"],
    "gres-typed": ["--gres=gpu:a100:2"],
    "gpus-per-node": ["--gpus-per-node=a100:1"],
    "gpus-per-job": ["-G", "3"],
    "gpus-per-job-typed-two-nodes": ["-N", "2", "--gpus=a100:3"],
    "gpus-per-task": ["-n", "2", "--gpus-per-task=1"],
    "mem-per-gpu": ["--gpus=1", "--mem-per-gpu=1G"],
    "cpus-per-gpu": ["--gpus=2", "--cpus-per-gpu=2"],
    "ntasks-per-gpu": ["--gpus=2", "--ntasks-per-gpu=1"],
    "node-range": ["-N", "1-2", "--gres=gpu:1"],
    "daily-options": [
        "--mail-type=END,FAIL",
        "--mail-user=someone@example.org",
        "--exclusive=user",
        "--no-requeue",
        "--open-mode=append",
        "-w",
        "n1",
        "--nice=10",
        "--time=20",
        "--time-min=10",
        "--kill-on-invalid-dep=yes",
        "--distribution=block:cyclic",
    ],
    "exclude": ["-x", "n2"],
}

SCRIPT = "#!/bin/bash\ntrue\n"


def _show(cluster: Cluster, job_id: int) -> dict[str, str]:
    line = cluster.run("scontrol", "show", "job", "-o", str(job_id)).splitlines()[0]
    found = dict(re.findall(r"(\S+?)=(\S*)", line))
    return {key: found.get(key, "") for key in FIELDS}


def _raw_sbatch(cluster: Cluster, user: str, account: str, argv: list[str]) -> int:
    script = Path(home_of(user), "raw.sh")
    script.write_text(SCRIPT)
    script.chmod(0o644)
    out = subprocess.run(
        ["runuser", "-u", user, "--", "sbatch", "--parsable", "-H", f"--account={account}", *argv, str(script)],
        env={"PATH": os.environ["PATH"], "SLURM_CONF": cluster.conf},
        cwd=home_of(user),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return int(out.stdout.strip().split(";")[0])


def _gateway_submission(user: str, account: str, argv: list[str]) -> Submission:
    """What the gateway submits for ``remotegpu submit ARGV raw.sh`` (the API's body, decoded and rendered)."""
    request = job_request("raw.sh", SCRIPT, [*argv, "-H"], cwd=home_of(user), environ={"PATH": "/usr/bin:/bin"})
    body = {k: v for k, v in request.body.items() if k not in ("environment", "export")}
    data = msgspec.convert(body, JobCreate)
    spec = job_spec(data, home_of(user))
    return Submission(user=user, account=account, script=render(spec), work_dir=home_of(user))


@pytest.fixture(params=["cli", "rest"])
def backend(request: pytest.FixtureRequest) -> SlurmClient:
    client: SlurmClient = request.getfixturevalue(f"{request.param}_client")
    return client


@pytest.mark.parametrize("case", sorted(CASES))
async def test_gateway_makes_the_job_raw_sbatch_makes(
    case: str,
    backend: SlurmClient,
    slurm_cluster: Cluster,
    cli_client: CliSlurmClient,
    posix_user: PosixUserFactory,
    slurm_account: str,
) -> None:
    user = posix_user()
    await cli_client.ensure_account(slurm_account, description="gpu forms")
    await cli_client.ensure_association(user, slurm_account)
    argv = CASES[case]
    raw = await asyncio.to_thread(_raw_sbatch, slurm_cluster, user, slurm_account, argv)
    ours = await backend.submit(_gateway_submission(user, slurm_account, argv))
    try:
        expected, got = [await asyncio.to_thread(_show, slurm_cluster, job_id) for job_id in (raw, ours)]
        assert got == expected
    finally:
        for job_id in (raw, ours):
            await cli_client.cancel(job_id, user=user)
