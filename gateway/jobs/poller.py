"""The one poller: per cycle one ``squeue`` for every job of the cluster, and one ``sacct`` only when jobs
(or array tasks) left the controller's memory; it writes only what changed, with an event for each change
of state (gateway.jobs.events).

An unreachable controller marks the jobs' state as unknown; it never fails or forgets a job. An array is
one gateway job: its tasks are folded into one state (slurm.arrays) and counted by state.

Recovery: a job recorded but without a Slurm id is adopted when squeue (or sacct) shows its comment; when
neither does and its last sbatch began more than a lease before squeue was asked (so no sbatch of it can still
be running), it is submitted again from its recorded script (JobService.finish_submissions). A gateway runs
this at start-up too (``recover_at_startup``), so what a crash left is settled without a worker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from functools import partial

import msgspec
import structlog
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from gateway.cluster.service import ClusterReader
from gateway.db.base import utcnow
from gateway.db.session import Database
from gateway.jobs import events
from gateway.jobs.events import Listener, StateChange
from gateway.jobs.models import SUBMIT_FAILED, SUBMITTING, TrainingJob
from gateway.jobs.origin import instance_id, parse_comment
from gateway.jobs.service import FINAL_STATES, JobService
from slurm.arrays import combine_jobs, combine_records, listed_task_ids, task_counts, task_ids
from slurm.client import SlurmClient
from slurm.errors import SlurmError
from slurm.records import AccountingRecord, Job

log = structlog.get_logger("gateway.poller")

CYCLE_SECONDS = Histogram("remotegpu_poller_cycle_seconds", "Duration of one poll cycle")
SLURM_CALLS = Counter("remotegpu_poller_slurm_calls_total", "Slurm commands issued by the poller", ["call"])
JOBS_BY_STATE = Gauge("remotegpu_jobs", "Jobs not yet finished, by state", ["state"])
UNREACHABLE = Counter("remotegpu_poller_unreachable_total", "Cycles in which Slurm did not answer")
STATE_CHANGES = Counter("remotegpu_job_state_changes_total", "Job state changes written by the poller", ["state"])

ACTIVE = TrainingJob.state.not_in(FINAL_STATES)
UNSUBMITTED = (TrainingJob.state == SUBMITTING) & TrainingJob.slurm_job_id.is_(None)
REMEMBERED = timedelta(seconds=270)
"""How long Slurm surely still lists a job that ended: its MinJobAge (default 300 s), less a margin. Without job
comments in accounting (``AccountingStoreFlags=job_comment``), only squeue can show that a job was submitted,
so only jobs whose last sbatch began within this long before squeue was asked are submitted again."""
RESUBMITTED = Counter("remotegpu_jobs_resubmitted_total", "Recorded jobs submitted by recovery after a crash")


class PollResult(msgspec.Struct):
    slurm_calls: int = 0
    changed: int = 0
    adopted: int = 0
    orphans_cancelled: int = 0
    reachable: bool = True
    unsubmitted: list[str] = msgspec.field(default_factory=list)
    """Jobs Slurm does not have whose last sbatch is surely over: recovery submits them."""
    resubmitted: int = 0
    events: list[StateChange] = msgspec.field(default_factory=list)


class Snapshot:
    """squeue's answer, indexed: jobs by id, arrays' entries by array id, and the jobs of this gateway
    (``instance``) by their gateway ids (gateway.jobs.origin)."""

    def __init__(self, jobs: Sequence[Job], instance: str | None = None) -> None:
        self.by_id = {j.job_id: j for j in jobs}
        self.arrays: dict[int, list[Job]] = {}
        for job in jobs:
            if job.array_job_id is not None:
                self.arrays.setdefault(job.array_job_id, []).append(job)
        self.by_gateway_id: dict[str, Job] = {}
        """Our jobs, and those of the first comment form (no instance: maybe ours)."""
        self.surely_ours: set[str] = set()
        """The gateway ids our instance is named on: the only ones that may be cancelled as orphans."""
        for job in jobs:
            origin = parse_comment(job.comment)
            if origin is None or origin.instance not in (None, instance):
                continue
            # every task of an array carries the comment; the job is the array
            self.by_gateway_id.setdefault(origin.job_id, job)
            if origin.instance is not None:
                self.surely_ours.add(origin.job_id)

    @staticmethod
    def slurm_id(job: Job) -> int:
        """The id the gateway knows the job by: an array's, for any of its tasks."""
        return job.array_job_id or job.job_id

    def listed(self, slurm_id: int) -> bool:
        return slurm_id in self.arrays or slurm_id in self.by_id

    def missing_tasks(self, slurm_id: int, array_spec: str | None) -> bool:
        """Whether tasks of a listed array have already left squeue (so accounting must fill them in)."""
        if not array_spec or slurm_id not in self.arrays:
            return False
        try:
            total = len(task_ids(array_spec))
        except ValueError:
            return False
        return len(listed_task_ids(self.arrays[slurm_id])) < total


class Accounting:
    """sacct's answer (allocations, no steps), indexed by job id, by array id and by the gateway id in the
    comment. ``complete``: sacct answered (else a job absent here may still exist)."""

    def __init__(self, records: Sequence[AccountingRecord], *, complete: bool = True) -> None:
        self.complete = complete
        self._jobs: dict[int, list[AccountingRecord]] = {}
        self._arrays: dict[int, list[AccountingRecord]] = {}
        self.gateway_ids: set[str] = set()
        for record in records:
            self._jobs.setdefault(record.job_id, []).append(record)
            if record.array_job_id is not None:
                self._arrays.setdefault(record.array_job_id, []).append(record)
            if (origin := parse_comment(record.comment)) is not None:
                self.gateway_ids.add(origin.job_id)

    def all(self) -> list[AccountingRecord]:
        return [record for records in self._jobs.values() for record in records]

    def of_job(self, job_id: int) -> list[AccountingRecord]:
        return self._jobs.get(job_id, [])

    def of_array(self, array_job_id: int) -> list[AccountingRecord]:
        return self._arrays.get(array_job_id, [])


class Poller:
    def __init__(self, database: Database, slurm: SlurmClient, jobs: JobService | None = None) -> None:
        """``jobs``: submits what a crash left unsubmitted; without it such jobs wait (nothing is submitted)."""
        self.database = database
        self.slurm = slurm
        self.jobs = jobs
        self.listeners: list[Listener] = []
        self._instance: str | None = None
        self.cluster: ClusterReader | None = ClusterReader(database, slurm)
        """The cluster snapshot step (nodes, partitions: gateway.cluster), run after the jobs in each cycle."""

    async def poll_once(self) -> PollResult:
        """One cycle. No database transaction is open while Slurm is asked (on SQLite a write transaction
        would block every submission for as long as the controller takes to answer)."""
        started = time.perf_counter()
        result = PollResult()
        watched = await self.database.run(_watched, write=False)
        if self._instance is None:
            self._instance = await instance_id(self.database)
        asked_at = utcnow()  # before squeue: any sbatch over by then shows its job in the answer
        window = Window.at(asked_at, self.jobs.lease) if self.jobs is not None else None
        try:
            snapshot = Snapshot(await self.slurm.jobs(), self._instance)
            result.slurm_calls += 1
            SLURM_CALLS.labels("squeue").inc()
        except SlurmError as exc:
            await self._unreachable(exc)
            result.reachable = False
            if self.cluster is not None:
                await self.cluster.refresh()  # records why the cluster snapshot is stale, if it fails too
            return result
        # jobs to look up in accounting: gone from squeue, or arrays some of whose tasks are
        # (and recorded jobs squeue does not show whose sbatch is surely over: did they run and leave already?)
        accounted = [
            created
            for job_id, slurm_id, array, created, attempt in watched
            if (slurm_id is not None and (not snapshot.listed(slurm_id) or snapshot.missing_tasks(slurm_id, array)))
            or (
                slurm_id is None
                and window is not None
                and window.lease_over(attempt)
                and job_id not in snapshot.by_gateway_id
            )
        ]
        records = Accounting([])
        if accounted:
            try:
                records = Accounting(await self.slurm.accounting(min(accounted) - timedelta(minutes=1)))
            except SlurmError as exc:  # slurmdbd away: what squeue says still counts (but nothing is resubmitted)
                log.warning("accounting_unreachable", error=exc.message)
                records = Accounting([], complete=False)
            result.slurm_calls += 1
            SLURM_CALLS.labels("sacct").inc()

        orphans, by_state = await self.database.run(partial(_settle, snapshot, records, result, window))
        for change in result.events:
            STATE_CHANGES.labels(change.new).inc()
        result.orphans_cancelled = await self._cancel(orphans)
        if result.unsubmitted and self.jobs is not None:
            log.warning("resubmitting", jobs=result.unsubmitted)
            result.resubmitted = await self.jobs.finish_submissions(result.unsubmitted, asked_at)
            RESUBMITTED.inc(result.resubmitted)
        await events.notify(self.listeners, result.events)
        if self.cluster is not None:
            await self.cluster.refresh()
            SLURM_CALLS.labels("nodes").inc()
            SLURM_CALLS.labels("partitions").inc()
        JOBS_BY_STATE.clear()
        for state, count in by_state.items():
            JOBS_BY_STATE.labels(state).set(count)
        CYCLE_SECONDS.observe(time.perf_counter() - started)
        return result

    async def _unreachable(self, exc: SlurmError) -> None:
        UNREACHABLE.inc()
        log.warning("slurm_unreachable", error=exc.message)
        async with self.database.session() as session:
            stale = ACTIVE & TrainingJob.state_unknown.is_(False)
            await session.execute(update(TrainingJob).where(stale).values(state_unknown=True))
            await session.commit()

    async def _cancel(self, orphans: list[Job]) -> int:
        for orphan in orphans:
            slurm_id = Snapshot.slurm_id(orphan)
            log.warning("orphan_cancelled", slurm_job_id=slurm_id, comment=orphan.comment)
            try:
                await self.slurm.cancel(slurm_id, user=orphan.user or "root")
            except SlurmError as exc:  # the next cycle tries again
                log.warning("orphan_cancel_failed", slurm_job_id=slurm_id, error=exc.message)
        return len(orphans)


class Window(msgspec.Struct, frozen=True):
    """Which recorded jobs Slurm does not show may be submitted again: those whose last sbatch began before
    ``over`` (a lease before squeue was asked: that sbatch is over, so its job would be listed) and after
    ``remembered`` (so a job it made that already ended would still be listed, REMEMBERED)."""

    over: datetime
    remembered: datetime

    @classmethod
    def at(cls, asked_at: datetime, lease: timedelta) -> Window:
        return cls(over=asked_at - lease, remembered=asked_at - REMEMBERED)

    def lease_over(self, attempt: datetime) -> bool:
        return attempt < self.over


def _unsettled_before(moment: datetime, session: Session) -> bool:
    """Unit of work: whether a job recorded before ``moment`` still has no Slurm id."""
    query = select(TrainingJob.id).where(UNSUBMITTED, TrainingJob.created_at < moment).limit(1)
    return session.scalar(query) is not None


async def recover_at_startup(poller: Poller, interval: float) -> None:
    """Settle what a crash left (adopt, or submit again), polling until no job recorded before start-up is
    without a Slurm id: by REMEMBERED after start-up each is adopted, submitted or failed (then it stops)."""
    started = utcnow()
    lease = poller.jobs.lease if poller.jobs is not None else timedelta(0)
    deadline = time.monotonic() + (REMEMBERED + 2 * lease).total_seconds() + interval
    while await poller.database.run(partial(_unsettled_before, started), write=False):
        try:
            result = await poller.poll_once()
            log.info("startup_recovery", adopted=result.adopted, resubmitted=result.resubmitted)
        except Exception:  # the database or Slurm away for a moment: try again
            log.exception("startup_recovery_failed")
        if time.monotonic() > deadline:
            log.warning("startup_recovery_left_to_worker")
            return
        await asyncio.sleep(interval)


def _watched(session: Session) -> list[tuple[str, int | None, str | None, datetime, datetime]]:
    """Unit of work: each unfinished job's id, Slurm id, array spec, creation time and last sbatch's start."""
    attempt = func.coalesce(TrainingJob.submit_attempt_at, TrainingJob.created_at)
    query = select(
        TrainingJob.id,
        TrainingJob.slurm_job_id,
        TrainingJob.spec["array"].as_string(),
        TrainingJob.created_at,
        attempt.label("attempt"),
    )
    return [tuple(row) for row in session.execute(query.where(ACTIVE))]


def _settle(
    snapshot: Snapshot, records: Accounting, result: PollResult, window: Window | None, session: Session
) -> tuple[list[Job], dict[str, int]]:
    """Unit of work: every unfinished job brought up to date, with the events of its changes; the orphans to
    cancel, and the unfinished jobs counted by state. Rows another poller is settling are skipped (PostgreSQL:
    SKIP LOCKED), so two gateways, or a gateway's start-up recovery beside a worker, never both adopt a job."""
    active = list(session.scalars(select(TrainingJob).where(ACTIVE).with_for_update(skip_locked=True)))
    for job in active:
        change = update_job(job, snapshot, records, result, window)
        if change is not None:
            result.events.append(change)
    result.changed = len([o for o in session.dirty if isinstance(o, TrainingJob)])
    events.write(session, result.events)
    by_state: dict[str, int] = {}
    for job in active:
        if job.state not in FINAL_STATES:
            by_state[job.state] = by_state.get(job.state, 0) + 1
    return _orphans(session, snapshot), by_state


def _orphans(session: Session, snapshot: Snapshot) -> list[Job]:
    """Live Slurm jobs of this gateway whose ids the database does not know (e.g. rows lost in a restore).

    Safe against a submission racing this cycle: a job's row is committed before its sbatch runs, so any
    job in the snapshot has its row visible to this later transaction.
    """
    live = {
        job_id: job
        for job_id, job in snapshot.by_gateway_id.items()
        if job_id in snapshot.surely_ours and not job.state.is_terminal
    }
    if not live:
        return []
    known = set(session.scalars(select(TrainingJob.id).where(TrainingJob.id.in_(list(live)))))
    return [job for job_id, job in live.items() if job_id not in known]


def update_job(
    job: TrainingJob, snapshot: Snapshot, records: Accounting, result: PollResult, window: Window | None = None
) -> StateChange | None:
    """Bring one job up to date with Slurm's snapshot and accounting; its state change, if any.

    A job without a Slurm id is adopted if Slurm shows its comment. If not, and its last sbatch is over (the
    ``window``) and sacct answered, it goes to ``result.unsubmitted``; if that sbatch began too long ago for
    Slurm to still list what it made, whether it ran cannot be told: the job fails rather than run twice."""
    old = job.state
    if job.slurm_job_id is None:
        found = snapshot.by_gateway_id.get(job.id)
        if found is None:
            found_record = _record_of(records, job.id)
            if found_record is None:
                attempt = job.submit_attempt_at or job.created_at
                if job.state != SUBMITTING or not records.complete or window is None or not window.lease_over(attempt):
                    return None
                if attempt >= window.remembered:
                    result.unsubmitted.append(job.id)
                    return None
                job.state, job.reason = SUBMIT_FAILED, "not known to Slurm, and too long ago to submit it safely"
                return StateChange(
                    job_id=job.id, workspace_id=job.workspace_id, old=old, new=job.state, reason=job.reason
                )
            job.slurm_job_id, job.submitted_at = found_record.array_job_id or found_record.job_id, None
        else:
            job.slurm_job_id, job.submitted_at = snapshot.slurm_id(found), found.submit_time
        result.adopted += 1
    slurm_id = job.slurm_job_id
    is_array = bool(job.spec.get("array"))
    mine = [r for r in (records.of_array(slurm_id) if is_array else records.of_job(slurm_id)) if _is_of(r, job)]
    tasks = [t for t in snapshot.arrays.get(slurm_id, ()) if _is_of(t, job)] if is_array else []
    live = snapshot.by_id.get(slurm_id) if not is_array else None
    if tasks:
        listed = listed_task_ids(tasks)
        finished = [r for r in mine if r.array_task_id is not None and r.array_task_id not in listed]
        changed = _apply_live(job, combine_jobs(slurm_id, tasks, finished), task_counts(tasks, finished))
    elif live is not None and _is_of(live, job):
        changed = _apply_live(job, live, None)
    elif mine:
        record = combine_records(slurm_id, mine) if is_array else mine[0]
        changed = _apply_record(job, record, task_counts((), mine) if is_array else None)
    else:
        return None  # submitted since the snapshot, or accounting has not caught up: next cycle
    if changed and job.state != old:
        return StateChange(job_id=job.id, workspace_id=job.workspace_id, old=old, new=job.state, reason=job.reason)
    return None


def _record_of(records: Accounting, job_id: str) -> AccountingRecord | None:
    """The accounting record whose comment names gateway job ``job_id`` (one that ran and left squeue)."""
    if job_id not in records.gateway_ids:
        return None
    for found in records.all():
        origin = parse_comment(found.comment)
        if origin is not None and origin.job_id == job_id:
            return found
    return None


def _is_of(slurm_job: Job | AccountingRecord, job: TrainingJob) -> bool:
    """Whether the Slurm job under ``job``'s Slurm id is ``job``'s: ids repeat (a cluster's state wiped, MaxJobId
    wrapped), the gateway id in the comment does not. A job without one (made outside the gateway) is taken
    on its id."""
    origin = parse_comment(slurm_job.comment)
    return origin is None or origin.job_id == job.id


def _apply_live(job: TrainingJob, sj: Job, array_tasks: dict[str, int] | None) -> bool:
    return _set(
        job,
        {
            "state": sj.state.value,
            "reason": sj.reason,
            "nodes": list(sj.nodes),
            "allocated": dict(sj.allocated),
            "started_at": sj.start_time,
            "ended_at": sj.end_time,
            "exit_code": sj.exit_code,
            "array_tasks": array_tasks,
            "state_unknown": False,
        },
    )


def _apply_record(job: TrainingJob, rec: AccountingRecord, array_tasks: dict[str, int] | None) -> bool:
    return _set(
        job,
        {
            "state": rec.state.value,
            "started_at": rec.start_time,
            "ended_at": rec.end_time,
            "allocated": dict(rec.allocated) or job.allocated,
            "array_tasks": array_tasks if array_tasks is not None else job.array_tasks,
            "exit_code": rec.exit_code if rec.exit_code is not None else job.exit_code,
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
