"""The background loops of ``remotegpu worker``: the job poller and the reconciliation of Slurm accounts.

One cycle reconciles accounts, associations and GrpTRES with workspaces, members and quotas, then polls every job
of the cluster with one ``squeue``. A failed cycle is logged and the next one starts from the database again.
"""

from __future__ import annotations

import asyncio

import structlog

from gateway.config import Settings
from gateway.db.session import Database
from gateway.jobs.poller import Poller
from gateway.jobs.service import JobService
from gateway.slurm_client import make_slurm_client
from gateway.workspaces.slurm_sync import AccountSync
from slurm.errors import SlurmError

log = structlog.get_logger("gateway.worker")


async def run_worker(settings: Settings, database: Database, *, once: bool = False) -> None:
    """Run cycles every ``poll_interval_seconds`` until cancelled (or one, raising its failure, with ``once``)."""
    slurm = make_slurm_client(settings)
    poller = Poller(database, slurm, JobService(database, slurm, settings))  # it finishes what a crash left
    accounts = AccountSync(database, slurm)
    try:
        while True:
            try:
                await cycle(poller, accounts)
            except Exception:
                if once:
                    raise
                # e.g. the database away for a moment: the next cycle starts from the database again
                log.exception("worker_cycle_failed")
            if once:
                return
            await asyncio.sleep(settings.poll_interval_seconds)
    finally:
        await slurm.close()


async def cycle(poller: Poller, accounts: AccountSync) -> None:
    """One reconciliation of Slurm accounts, then one poll of every job."""
    try:
        await accounts.reconcile()
    except SlurmError as exc:
        log.warning("account_sync_failed", error=exc.message)
    result = await poller.poll_once()
    log.info(
        "poll",
        changed=result.changed,
        adopted=result.adopted,
        reachable=result.reachable,
        orphans_cancelled=result.orphans_cancelled,
    )
