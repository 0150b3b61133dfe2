"""The one poller: per cycle one ``squeue`` for every job of the cluster, and one ``sacct`` only when jobs
left the controller's memory; it writes only what changed.

An unreachable controller marks the jobs' state as unknown; it never fails or forgets a job.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta

import msgspec
import structlog
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.base import utcnow
from gateway.db.session import Database
from gateway.jobs.models import SUBMIT_FAILED, SUBMITTING, TrainingJob
from gateway.jobs.service import COMMENT_PREFIX
from slurm.client import SlurmClient
from slurm.errors import SlurmError
from slurm.records import AccountingRecord, Job, JobState

log = structlog.get_logger("gateway.poller")

CYCLE_SECONDS = Histogram("remotegpu_poller_cycle_seconds", "Duration of one poll cycle")
SLURM_CALLS = Counter("remotegpu_poller_slurm_calls_total", "Slurm commands issued by the poller", ["call"])
JOBS_BY_STATE = Gauge("remotegpu_jobs", "Jobs not yet finished, by state", ["state"])
UNREACHABLE = Counter("remotegpu_poller_unreachable_total", "Cycles in which Slurm did not answer")

LOST_AFTER = timedelta(seconds=60)
"""A job still SUBMITTING after this long, and unknown to Slurm, never reached it."""
FINAL = {s.value for s in JobState if s.is_terminal} | {SUBMIT_FAILED}
ACTIVE = TrainingJob.state.not_in(FINAL)


class StateChange(msgspec.Struct, frozen=True):
    job_id: str
    old: str
    new: str


class PollResult(msgspec.Struct):
    slurm_calls: int = 0
    changed: int = 0
    adopted: int = 0
    orphans_cancelled: int = 0
    reachable: bool = True
    events: list[StateChange] = msgspec.field(default_factory=list)


Listener = Callable[[StateChange], Awaitable[None]]


def _apply_live(job: TrainingJob, sj: Job) -> bool:
    new = {
        "state": sj.state.value,
        "reason": sj.reason,
        "nodes": list(sj.nodes),
        "allocated": dict(sj.allocated),
        "started_at": sj.start_time,
        "ended_at": sj.end_time,
        "exit_code": sj.exit_code,
        "state_unknown": False,
    }
    return _set(job, new)


def _apply_record(job: TrainingJob, rec: AccountingRecord) -> bool:
    return _set(
        job,
        {
            "state": rec.state.value,
            "started_at": rec.start_time,
            "ended_at": rec.end_time,
            "allocated": dict(rec.allocated) or job.allocated,
            "state_unknown": False,
        },
    )


def _set(job: TrainingJob, values: Mapping[str, object]) -> bool:
    changed = False
    for key, value in values.items():
        if getattr(job, key) != value:
            setattr(job, key, value)
            changed = True
    return changed


class Poller:
    def __init__(self, database: Database, slurm: SlurmClient) -> None:
        self.database = database
        self.slurm = slurm
        self.listeners: list[Listener] = []

    async def poll_once(self) -> PollResult:
        """One cycle. No database transaction is open while Slurm is asked (on SQLite a write transaction
        would block every submission for as long as the controller takes to answer)."""
        started = time.perf_counter()
        result = PollResult()
        async with self.database.session(write=False) as session:
            watched = (await session.execute(select(TrainingJob.id, TrainingJob.slurm_job_id).where(ACTIVE))).all()
        try:
            snapshot = await self.slurm.jobs()
            result.slurm_calls += 1
            SLURM_CALLS.labels("squeue").inc()
        except SlurmError as exc:
            UNREACHABLE.inc()
            log.warning("slurm_unreachable", error=exc.message)
            async with self.database.session() as session:
                stale = ACTIVE & TrainingJob.state_unknown.is_(False)
                await session.execute(update(TrainingJob).where(stale).values(state_unknown=True))
                await session.commit()
            result.reachable = False
            return result
        by_id = {j.job_id: j for j in snapshot}
        by_comment = {j.comment: j for j in snapshot if j.comment.startswith(COMMENT_PREFIX)}
        gone = [
            (job_id, slurm_id)
            for job_id, slurm_id in watched
            if (slurm_id is None and COMMENT_PREFIX + job_id not in by_comment)
            or (slurm_id is not None and slurm_id not in by_id)
        ]
        records: dict[int, AccountingRecord] = {}
        if any(slurm_id is not None for _, slurm_id in gone):
            async with self.database.session(write=False) as session:
                oldest = await session.scalar(
                    select(func.min(TrainingJob.created_at)).where(TrainingJob.id.in_([j for j, _ in gone]))
                )
            since = (oldest or utcnow()) - timedelta(minutes=1)
            records = {r.job_id: r for r in await self.slurm.accounting(since)}
            result.slurm_calls += 1
            SLURM_CALLS.labels("sacct").inc()

        async with self.database.session() as session:
            active = list(await session.scalars(select(TrainingJob).where(ACTIVE)))
            for job in active:
                old = job.state
                if job.slurm_job_id is None:
                    found = by_comment.get(COMMENT_PREFIX + job.id)
                    if found is None:
                        if job.state == SUBMITTING and utcnow() - job.created_at > LOST_AFTER:
                            job.state, job.reason = SUBMIT_FAILED, "never reached Slurm"
                            result.events.append(StateChange(job.id, old, job.state))
                        continue
                    job.slurm_job_id, job.submitted_at = found.job_id, found.submit_time
                    result.adopted += 1
                live = by_id.get(job.slurm_job_id) if job.slurm_job_id is not None else None
                rec = records.get(job.slurm_job_id) if job.slurm_job_id is not None else None
                if live is not None:
                    changed = _apply_live(job, live)
                elif rec is not None:
                    changed = _apply_record(job, rec)
                else:
                    continue  # submitted since the snapshot, or accounting has not caught up: next cycle
                if changed and job.state != old:
                    result.events.append(StateChange(job.id, old, job.state))
            orphans = await self._orphans(session, by_comment)
            result.changed = len([o for o in session.dirty if isinstance(o, TrainingJob)])
            await session.commit()
        result.orphans_cancelled = await self._cancel(orphans)
        for event in result.events:
            for listener in self.listeners:
                await listener(event)
        self._export_gauges(active)
        CYCLE_SECONDS.observe(time.perf_counter() - started)
        return result

    @staticmethod
    async def _orphans(session: AsyncSession, by_comment: dict[str, Job]) -> list[Job]:
        """Live Slurm jobs carrying a gateway id the database does not know (e.g. its row was lost).

        Safe against a submission racing this cycle: a job's row is committed before its sbatch runs, so any
        job in the snapshot has its row visible to this later transaction.
        """
        ids = [c.removeprefix(COMMENT_PREFIX) for c, j in by_comment.items() if not j.state.is_terminal]
        if not ids:
            return []
        known = set(await session.scalars(select(TrainingJob.id).where(TrainingJob.id.in_(ids))))
        return [by_comment[COMMENT_PREFIX + job_id] for job_id in ids if job_id not in known]

    async def _cancel(self, orphans: list[Job]) -> int:
        for orphan in orphans:
            log.warning("orphan_cancelled", slurm_job_id=orphan.job_id, gateway_id=orphan.comment)
            await self.slurm.cancel(orphan.job_id, user=orphan.user or "root")
        return len(orphans)

    @staticmethod
    def _export_gauges(active: list[TrainingJob]) -> None:
        counts: dict[str, int] = {}
        for job in active:
            counts[job.state] = counts.get(job.state, 0) + 1
        JOBS_BY_STATE.clear()
        for state, count in counts.items():
            JOBS_BY_STATE.labels(state).set(count)
