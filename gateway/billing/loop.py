"""The worker's billing cycle: ingest accounting (charging running work), charge yesterday's storage once, then
move workspaces between active, overdue and suspended, and stop what a suspension stops."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from functools import partial

import structlog
from sqlalchemy import select

from gateway.actor import Actor
from gateway.billing import storage
from gateway.billing.ingest import Ingest, IngestResult
from gateway.billing.service import BILLING, settle_states
from gateway.config import Settings
from gateway.db.base import utcnow
from gateway.db.session import Database
from gateway.environments.models import Environment
from gateway.environments.service import EnvironmentService
from gateway.errors import GatewayError
from gateway.jobs.models import ENVIRONMENT, SUBMITTING, TRAINING, TrainingJob
from gateway.jobs.service import FINAL_STATES, JobService
from gateway.workspaces.access import WorkspaceAccess
from gateway.workspaces.models import Workspace

log = structlog.get_logger("gateway.billing")


class Billing:
    def __init__(self, database: Database, settings: Settings, jobs: JobService) -> None:
        self.database = database
        self.settings = settings
        self.jobs = jobs
        self.environments = EnvironmentService(database, settings, jobs)
        self.ingest = Ingest(database, jobs.slurm, overlap=timedelta(minutes=settings.billing_overlap_minutes))
        self._storage_charged: date | None = None

    async def charge_storage(self) -> int:
        """Yesterday's (UTC) storage, once: keys make a repeat a no-op; this process skips it once done."""
        yesterday = utcnow().date() - timedelta(days=1)
        if self._storage_charged == yesterday:
            return 0
        charged = await self.database.run(
            partial(storage.charge_day, day=yesterday, copies=self.settings.storage_billing_copies)
        )
        self._storage_charged = yesterday
        if charged:
            log.info("storage_charged", day=yesterday.isoformat(), workspaces=charged)
        return charged

    async def cycle(self) -> IngestResult | None:
        """One ingest, then the workspaces' states; returns the ingest's result (None: another worker's turn)."""
        result = await self.ingest.run_once()
        await self.charge_storage()
        grace = timedelta(hours=self.settings.billing_grace_hours)
        suspended = await self.database.run(partial(_settle_all, grace))
        if suspended:
            await self.stop_running_work(suspended)
        if result is not None:
            log.info(
                "billing_ingest", records=result.records, charged=result.charged, entries=result.entries,
                skipped=result.skipped,
            )  # fmt: skip
        return result

    async def stop_running_work(self, workspace_ids: Sequence[int]) -> None:
        """A suspension: running environments stopped; running jobs cancelled where ``billing_suspend_jobs`` says."""
        actor = Actor.system(BILLING)
        cancel_jobs = self.settings.billing_suspend_jobs == "cancel"
        for workspace_id in workspace_ids:
            async with self.database.session() as session:
                workspace = await session.get_one(Workspace, workspace_id)
                access = WorkspaceAccess(workspace=workspace, role=None, actor=actor)
                live = (
                    await session.execute(
                        select(TrainingJob.id, TrainingJob.kind, Environment.id)
                        .outerjoin(Environment, Environment.current_job_id == TrainingJob.id)
                        .where(
                            TrainingJob.workspace_id == workspace_id,
                            TrainingJob.state.not_in([*FINAL_STATES, SUBMITTING]),
                            TrainingJob.kind.in_([ENVIRONMENT, TRAINING] if cancel_jobs else [ENVIRONMENT]),
                        )
                    )
                ).all()
                for job_id, kind, environment_id in live:
                    try:
                        if kind == ENVIRONMENT and environment_id is not None:
                            await self.environments.stop(session, access, environment_id)
                        elif kind == TRAINING:
                            await self.jobs.control(session, access, job_id, "cancel")
                    except GatewayError as exc:  # ended meanwhile, or Slurm away: the next suspension pass sees it
                        await session.rollback()
                        log.warning("suspension_stop_failed", workspace=workspace.slug, job=job_id, error=exc.detail)
                log.info("workspace_suspended_work_stopped", workspace=workspace.slug, stopped=len(live))


def _settle_all(grace: timedelta, session: object) -> list[int]:
    return settle_states(session, utcnow(), grace=grace)  # type: ignore[arg-type]
