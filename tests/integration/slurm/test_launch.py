"""The rendered two-node torchrun launch, run for real with srun across n1 and n2."""

from __future__ import annotations

import asyncio
import os
import pwd
from pathlib import Path

from slurm.cli import CliSlurmClient
from slurm.client import Submission
from slurm.records import JobState
from slurm.script import JobSpec, render
from tests.integration.slurm.conftest import PosixUserFactory, home_of

# Stands in for torchrun (no torch on the test nodes): checks the arguments torchrun would get and starts the
# program once per node with the rank torchrun would give it.
FAKE_TORCHRUN = """#!/bin/bash
set -e
for arg in "$@"; do
  case "$arg" in
    --nnodes=*) NN="${arg#*=}"; shift ;;
    --nproc_per_node=*) NP="${arg#*=}"; shift ;;
    --node_rank=*) RANK="${arg#*=}"; shift ;;
    --master_addr=*) ADDR="${arg#*=}"; shift ;;
    --master_port=*) PORT="${arg#*=}"; shift ;;
  esac
done
RANK="$RANK" NN="$NN" NP="$NP" ADDR="$ADDR" PORT="$PORT" exec "$@"
"""
PROGRAM = (
    "import os, sys; print(f\"node={os.environ['SLURMD_NODENAME']} rank={os.environ['RANK']} "
    "nnodes={os.environ['NN']} nproc={os.environ['NP']} master={os.environ['ADDR']}:{os.environ['PORT']} "
    'args={sys.argv[1:]}")'
)


async def test_torchrun_across_two_nodes(
    cli_client: CliSlurmClient, posix_user: PosixUserFactory, slurm_account: str
) -> None:
    user = posix_user()
    await cli_client.ensure_account(slurm_account)
    await cli_client.ensure_association(user, slurm_account)
    home = Path(home_of(user))
    bin_dir = home / "bin"
    bin_dir.mkdir()
    (bin_dir / "torchrun").write_text(FAKE_TORCHRUN)
    (bin_dir / "torchrun").chmod(0o755)
    owner = pwd.getpwnam(user)
    for path in (bin_dir, bin_dir / "torchrun"):
        os.chown(path, owner.pw_uid, owner.pw_gid)

    spec = JobSpec(
        name="ddp-smoke",
        command=["/usr/bin/python3", "-c", PROGRAM, "--lr", "0.1 two words"],
        nodes=2,
        gpus_per_node=1,
        gpu_type="a100",
        launch="torchrun",
        time_minutes=5,
        stdout=f"{home}/ddp-%j.out",
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
    )
    job_id = await cli_client.submit(
        Submission(user=user, account=slurm_account, script=render(spec), work_dir=str(home))
    )
    for _ in range(120):
        job = next((j for j in await cli_client.jobs() if j.job_id == job_id), None)
        if job is not None and job.state.is_terminal:
            break
        await asyncio.sleep(0.5)
    output = await asyncio.to_thread((home / f"ddp-{job_id}.out").read_text)
    assert job is not None and job.state == JobState.COMPLETED, output
    assert job.nodes == ("n1", "n2")
    lines = sorted(line for line in output.splitlines() if line.startswith("node="))
    assert lines == [
        "node=n1 rank=0 nnodes=2 nproc=1 master=n1:29500 args=['--lr', '0.1 two words']",
        "node=n2 rank=1 nnodes=2 nproc=1 master=n1:29500 args=['--lr', '0.1 two words']",
    ], output
