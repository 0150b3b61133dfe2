"""A script that works with sbatch works with ``remotegpu submit`` and makes the same Slurm job.

Each script of a small corpus of real-world shapes is submitted twice, held: once with raw ``sbatch`` as the
user, once through the gateway (the CLI's translation, then the API). ``scontrol show job`` must agree.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.app import create_app
from gateway.client.sbatch import job_request
from gateway.config import Settings
from gateway.db.session import Database
from slurm.cli import CliSlurmClient
from tests.conftest import UserFactory, asgi_client
from tests.integration.slurm.conftest import Cluster, PosixUserFactory, home_of

CORPUS = {
    "single-gpu": """#!/bin/bash
#SBATCH --job-name=resnet50
#SBATCH --gres=gpu:a100:1
#SBATCH --cpus-per-task=2
#SBATCH --mem=4G
#SBATCH --time=02:00:00
#SBATCH --output=train-%j.log
python3 train.py --epochs 90
""",
    "multi-node": """#!/bin/bash
#SBATCH -J ddp -N 2 --ntasks-per-node=1
#SBATCH --gpus-per-node=a100:2
#SBATCH -c 1 --mem-per-cpu=512M
#SBATCH -t 1-00:00
#SBATCH -p gpu
srun python3 train.py
""",
    "array": """#!/bin/bash
#SBATCH --job-name=sweep
#SBATCH --array=0-3%2
#SBATCH --ntasks=1
#SBATCH --time=30
#SBATCH -o sweep-%A_%a.out
#SBATCH -e sweep-%A_%a.err
echo task $SLURM_ARRAY_TASK_ID
""",
    "cpu-only-debug": """#!/bin/sh
#SBATCH --partition=debug
#SBATCH --ntasks=2
#SBATCH --mem=1024
#SBATCH --time=5:00
#SBATCH --dependency=singleton
hostname
""",
}
FIELDS = [
    "JobName",
    "Partition",
    "NumNodes",
    "NumTasks",
    "NumCPUs",
    "CPUs/Task",
    "TimeLimit",
    "ReqTRES",
    "TresPerNode",
    "MinMemoryCPU",
    "MinMemoryNode",
    "ArrayTaskId",
    "Dependency",
    "StdOut",
    "StdErr",
    "Account",
    "UserId",
    "WorkDir",
]


def show_job(cluster: Cluster, job_id: int) -> dict[str, str]:
    line = cluster.run("scontrol", "show", "job", "-o", str(job_id)).splitlines()[0]
    pairs = re.findall(r"(\S+?)=(\S*)", line)
    values = dict(pairs)
    return {f: values.get(f, "") for f in FIELDS}


def write_as(user: str, path: Path, text: str) -> None:
    path.write_text(text)
    owner = pwd.getpwnam(user)
    os.chown(path, owner.pw_uid, owner.pw_gid)


@pytest.fixture
async def api(
    settings: Settings, clean_database: Database, cli_client: CliSlurmClient
) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(create_app(settings, database=clean_database, slurm=cli_client)) as client:
        yield client


@pytest.mark.parametrize("name", sorted(CORPUS))
async def test_same_job_both_ways(
    name: str,
    slurm_cluster: Cluster,
    api: httpx.AsyncClient,
    make_user: UserFactory,
    posix_user: PosixUserFactory,
    slurm_account: str,
    cli_client: CliSlurmClient,
) -> None:
    user = posix_user()
    headers = await make_user(user)
    root = await make_user("root", admin=True)
    r = await api.post(
        "/api/v1/workspaces",
        json={"slug": "parity", "name": "P", "slurm_account": slurm_account, "owner": user},
        headers=root,
    )
    assert r.status_code == 201, r.text
    home = home_of(user)
    script = Path(home, f"{name}.sbatch")
    await asyncio.to_thread(write_as, user, script, CORPUS[name])
    await cli_client.ensure_account(slurm_account)
    await cli_client.ensure_association(user, slurm_account)

    raw_out = await asyncio.to_thread(
        slurm_cluster.run,
        "sbatch",
        "--parsable",
        "--hold",
        f"--account={slurm_account}",
        f"--chdir={home}",
        str(script),
        user=user,
    )
    raw_id = int(raw_out.strip().split(";")[0])

    body = job_request(str(script), CORPUS[name], ["--hold"], cwd=home, environ={}).body
    r = await api.post("/api/v1/workspaces/parity/jobs", json=body, headers=headers)
    assert r.status_code == 201, r.text
    ours_id = r.json()["slurm_job_id"]

    try:
        raw, ours = show_job(slurm_cluster, raw_id), show_job(slurm_cluster, ours_id)
        for shown, job_id in ((raw, raw_id), (ours, ours_id)):
            for key in ("StdOut", "StdErr"):
                shown[key] = re.sub(rf"(?<![0-9A-Za-z]){job_id}(?![0-9])", "ID", shown[key])
        assert ours == raw
    finally:
        for job_id in (raw_id, ours_id):
            await cli_client.cancel(job_id, user=user)
