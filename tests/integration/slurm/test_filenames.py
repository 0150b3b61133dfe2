"""slurm.filenames.expand names the files real sbatch writes, for single jobs and array tasks."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from slurm.cli import CliSlurmClient
from slurm.client import Submission
from slurm.filenames import PatternValues, expand
from slurm.records import AccountingRecord, JobState
from tests.integration.slurm.conftest import PosixUserFactory, home_of

PATTERN = "o-%A-%a-%j-%J-%n-%t-%s-%u-%x-%5j-%3a-%%-%q.txt"  # %q is no pattern: kept as it is


async def _finished(client: CliSlurmClient, slurm_id: int, tasks: int) -> list[AccountingRecord]:
    """The accounting records of the job (or of each of its ``tasks``) once all have completed."""
    since = datetime.now(UTC) - timedelta(minutes=5)
    for _ in range(120):
        records = [r for r in await client.accounting(since) if slurm_id in (r.job_id, r.array_job_id)]
        if len(records) == max(tasks, 1) and all(r.state == JobState.COMPLETED for r in records):
            return records
        await asyncio.sleep(0.5)
    pytest.fail(f"job {slurm_id} did not finish")


@pytest.mark.parametrize("array", [None, "0-1"])
async def test_expanded_names_are_the_files_sbatch_writes(
    array: str | None, cli_client: CliSlurmClient, posix_user: PosixUserFactory, slurm_account: str
) -> None:
    user = posix_user()
    await cli_client.ensure_account(slurm_account)
    await cli_client.ensure_association(user, slurm_account)
    work = Path(home_of(user))
    options: dict[str, str | None] = {"job-name": "named", "output": PATTERN}
    if array:
        options["array"] = array
    slurm_id = await cli_client.submit(
        Submission(user=user, account=slurm_account, script="#!/bin/bash\ntrue\n", work_dir=str(work), options=options)
    )
    records = await _finished(cli_client, slurm_id, 2 if array else 0)
    expected = {
        expand(
            PATTERN,
            PatternValues(
                job_id=r.job_id,
                user=user,
                name="named",
                array_job_id=slurm_id if array else None,
                task_id=r.array_task_id,
            ),
        )
        for r in records
    }
    written = {p.name for p in await asyncio.to_thread(lambda: list(work.glob("o-*")))}
    assert written == expected
