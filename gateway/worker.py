"""The background loops of ``remotegpu worker``: the job poller, the reconciliation of Slurm accounts, billing.

The jobs loop polls every job of the cluster with one ``squeue``, then releases the port mappings of sessions
that ended and of those that saw no traffic for their ``auto_release_hours``; the accounts loop reconciles
accounts, associations and GrpTRES with workspaces, members, quotas and billing blocks; the billing loop
ingests Slurm's accounting every ``billing_interval_seconds`` (gateway.billing.loop); the storage loop checks
each enabled storage source every ``storage_health_interval_seconds`` (gateway.datasets.sources); the nodes loop
claims queued provision runs and drives them through salt-api (gateway.nodes.runs). A failed
cycle is logged and the next one starts from the database again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from gateway.billing.loop import Billing
from gateway.config import Settings
from gateway.datasets import sources, sync
from gateway.datasets.stagein import StageInService
from gateway.db.session import Database
from gateway.environments.ports import release_idle_mappings
from gateway.environments.service import release_ended_sessions
from gateway.jobs.poller import Poller
from gateway.jobs.service import JobService
from gateway.nodes import runs as node_runs
from gateway.slurm_client import make_slurm_client
from gateway.workspaces.slurm_sync import AccountSync
from slurm.errors import SlurmError

log = structlog.get_logger("gateway.worker")


async def run_worker(settings: Settings, database: Database, *, once: bool = False) -> None:
    """Run until cancelled (or one cycle, raising its failure, with ``once``).

    Two loops, each every ``poll_interval_seconds`` counted from the start of its last cycle: the jobs (poll,
    then the port mappings of ended or idle sessions) and the Slurm accounts. Apart, so that the account sync's
    slurmdbd round trips (a few hundred ms) never delay what users wait on: a job's or session's start.
    """
    slurm = make_slurm_client(settings)
    jobs = JobService(database, slurm, settings)
    StageInService(database, settings, jobs)  # what a resubmitted job fetches, and its token
    poller = Poller(database, slurm, jobs)  # it finishes what a crash left
    accounts = AccountSync(database, slurm)
    billing = Billing(database, settings, jobs)
    try:
        if once:
            await cycle(poller, accounts, database)
            await billing.cycle()
            await sources.check(database, settings)
            await sync.run_due_tasks(database, settings)
            await node_runs.run_due(database, settings)
            return
        await asyncio.gather(
            _every(settings.poll_interval_seconds, "jobs", lambda: poll_jobs(poller, database)),
            _every(settings.poll_interval_seconds, "accounts", lambda: sync_accounts(accounts)),
            _every(settings.billing_interval_seconds, "billing", billing.cycle),
            _every(settings.storage_health_interval_seconds, "storage", lambda: sources.check(database, settings)),
            _every(settings.sync_interval_seconds, "sync", lambda: sync.run_due_tasks(database, settings, wait=False)),
            _every(settings.node_poll_seconds, "nodes", lambda: node_runs.run_due(database, settings, wait=False)),
        )
    finally:
        await slurm.close()


async def _every(interval: float, name: str, step: Callable[[], Awaitable[Any]]) -> None:
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        try:
            await step()
        except Exception:  # e.g. the database away for a moment: the next cycle starts from the database again
            log.exception("worker_cycle_failed", loop=name)
        await asyncio.sleep(max(0.0, interval - (loop.time() - started)))


async def sync_accounts(accounts: AccountSync) -> None:
    """One reconciliation of Slurm accounts, associations and GrpTRES with workspaces, members and quotas."""
    try:
        await accounts.reconcile()
    except SlurmError as exc:
        log.warning("account_sync_failed", error=exc.message)


async def poll_jobs(poller: Poller, database: Database) -> None:
    """One poll of every job (one squeue), then the port mappings of ended sessions and idle ones released."""
    result = await poller.poll_once()
    log.info(
        "poll",
        changed=result.changed,
        adopted=result.adopted,
        reachable=result.reachable,
        orphans_cancelled=result.orphans_cancelled,
    )
    await release_ended_sessions(database)  # the ports of sessions Slurm has just seen end
    await release_idle_mappings(database)  # logs each release


async def cycle(poller: Poller, accounts: AccountSync, database: Database) -> None:
    """One of each, in turn: the accounts, then the jobs (``remotegpu worker --once``)."""
    await sync_accounts(accounts)
    await poll_jobs(poller, database)
