"""Accounting records as the slurm/ adapter parses them from sacct, for billing tests that feed the ingest."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from slurm.records import AccountingRecord, JobState

A100 = {"cpu": 2, "mem": 1024, "node": 1, "gres/gpu": 1, "gres/gpu:a100": 1}
"""One a100, two cores, 1 GB."""


def accounting_record(
    job_id: int,
    *,
    account: str,
    start: datetime,
    user: str = "alice",
    minutes: float = 10,
    state: JobState = JobState.COMPLETED,
    tres: dict[str, int] | None = None,
    **values: Any,
) -> AccountingRecord:
    """A job of ``minutes`` from ``start`` (ended there if ``state`` is terminal), submitted 5 s before it."""
    elapsed = int(minutes * 60)
    return AccountingRecord(
        job_id=job_id,
        name=f"job{job_id}",
        user=user,
        account=account,
        partition="gpu",
        state=state,
        elapsed_seconds=elapsed,
        submit_time=start - timedelta(seconds=5),
        start_time=start,
        end_time=start + timedelta(seconds=elapsed) if state.is_terminal else None,
        allocated=tres if tres is not None else A100,
        **values,
    )
