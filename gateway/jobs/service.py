"""Submitting and controlling training jobs.

Nothing lost, nothing twice: the job is committed (with the caller's idempotency key) before sbatch runs, and
the Slurm job carries the gateway's id in its comment (``rgpu:<id>``). If the gateway dies between sbatch
and recording the Slurm id, the poller finds the job by that comment and adopts it.
"""

from __future__ import annotations

import pwd
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
from sqlalchemy import Row, Table, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.audit.service import record, record_now
from gateway.config import Settings
from gateway.db.base import utcnow
from gateway.db.paging import count_rows, page_of
from gateway.db.session import Database
from gateway.errors import Conflict, Forbidden, GatewayError, InvalidInput, NotFound
from gateway.jobs import events
from gateway.jobs.events import StateChange
from gateway.jobs.models import SUBMIT_FAILED, SUBMITTING, JobEvent, TrainingJob, new_job_id
from gateway.jobs.schemas import JobCreate, JobOut
from gateway.schemas import Pagination
from gateway.users.models import User
from gateway.workspaces.models import Quota, Role, WorkspaceStatus
from gateway.workspaces.service import WorkspaceAccess
from slurm.arrays import task_ids
from slurm.client import SlurmClient, Submission
from slurm.errors import (
    InvalidAccount,
    InvalidPartition,
    InvalidQos,
    NodeConfigUnavailable,
    SlurmError,
    SlurmUnavailable,
    SubmitRejected,
)
from slurm.filenames import PatternValues, UnknownInPattern, expand
from slurm.records import JobState
from slurm.script import JobSpec, ScriptError, check_path, render

COMMENT_PREFIX = "rgpu:"
FINAL_STATES = frozenset({s.value for s in JobState if s.is_terminal} | {SUBMIT_FAILED})
JOBS: Table = TrainingJob.__table__  # type: ignore[assignment]
JobView = TrainingJob | Row[*tuple[Any, ...]]
"""A job as an ORM object or as a row of its columns (lists): both read the same to a response."""
_UPDATE_JOB = update(JOBS).where(JOBS.c.id == bindparam("job_id_"))
"""SET clause from the parameters; built once (building statements per call costs more than running them)."""
_REJECTION_FIELDS: Mapping[type[SubmitRejected], str] = {
    InvalidPartition: "partition",
    InvalidQos: "qos",
    NodeConfigUnavailable: "gpus_per_node",
}


class LogFile(msgspec.Struct, frozen=True):
    path: str
    uid: int
    """The job user's: only a regular file of theirs is read."""
    job_id: str


class SlurmDown(GatewayError):
    status, kind, title = 503, "slurm-unavailable", "Slurm is not answering"


def slurm_comment(job_id: str) -> str:
    return f"{COMMENT_PREFIX}{job_id}"


def _check_quota(quota: Quota | None, data: JobCreate) -> None:
    """Refuse up front what the quota could never allow; what fits but must wait pends in Slurm (GrpTRES)."""
    if quota is None:
        return
    gpus = (data.nodes or 1) * data.gpus_per_node
    if quota.gpus is not None and gpus > quota.gpus:
        raise InvalidInput(f"{gpus} GPUs requested; the workspace quota allows {quota.gpus}", field="gpus_per_node")
    typed_limit = quota.gpus_by_type.get(data.gpu_type or "")
    if typed_limit is not None and gpus > typed_limit:
        raise InvalidInput(
            f"{gpus} {data.gpu_type} GPUs requested; the workspace quota allows {typed_limit}", field="gpus_per_node"
        )


def _home(posix_name: str) -> str:
    try:
        return pwd.getpwnam(posix_name).pw_dir
    except KeyError:
        raise Conflict(f"POSIX account {posix_name!r} does not exist on the cluster", field="user") from None


class JobService:
    """Job operations; one instance per process (it remembers which associations exist)."""

    def __init__(self, slurm: SlurmClient, settings: Settings) -> None:
        self.slurm = slurm
        self.settings = settings
        self._associations: set[tuple[str, str]] = set()

    async def _ensure_association(self, account: str, user: str) -> None:
        if (account, user) in self._associations:
            return
        await self.slurm.ensure_account(account)
        await self.slurm.ensure_association(user, account)
        self._associations.add((account, user))

    async def submit(
        self, session: AsyncSession, access: WorkspaceAccess, data: JobCreate, idempotency_key: str | None
    ) -> tuple[TrainingJob, bool]:
        """Submit as the caller. Returns the job and whether it was created now (False: an idempotent retry)."""
        access.require(Role.MEMBER)
        ws, actor = access.workspace, access.actor
        if ws.status != WorkspaceStatus.ACTIVE:
            raise Forbidden(f"workspace {ws.slug!r} is {ws.status.value}: new jobs are refused")
        if idempotency_key is not None:
            existing = await session.scalar(
                select(TrainingJob).where(
                    TrainingJob.user_id == actor.user_id, TrainingJob.idempotency_key == idempotency_key
                )
            )
            if existing is not None:
                return existing, False
        if actor.user_id is None or actor.posix_name is None:
            raise Forbidden("jobs are submitted by users with a POSIX account")
        posix_name = actor.posix_name
        _check_quota(ws.quota, data)
        fields = msgspec.structs.asdict(data)
        work_dir = fields.pop("work_dir") or _home(posix_name)
        hold = fields.pop("hold")
        try:
            check_path("work_dir", work_dir)
            spec = msgspec.convert(fields, JobSpec)
            script = render(spec, container_runtime=self.settings.slurm_container_runtime)
        except ScriptError as exc:
            raise InvalidInput(exc.message, field=exc.field) from exc
        except msgspec.ValidationError as exc:
            raise InvalidInput(str(exc), field="spec") from exc
        stdout = spec.stdout or ("slurm-%A_%a.out" if spec.array else "slurm-%j.out")  # sbatch's default
        now = utcnow()
        # Plain INSERT/UPDATE statements, not the ORM's unit of work: this is the hot path of submission
        # throughput, and ``job`` below is only the response's view of the row.
        job = TrainingJob(
            id=new_job_id(),
            workspace_id=ws.id,
            user_id=actor.user_id,
            name=spec.name,
            state=SUBMITTING,
            reason=None,
            state_unknown=False,
            slurm_job_id=None,
            idempotency_key=idempotency_key,
            spec=msgspec.to_builtins(spec),
            script=script,
            work_dir=work_dir,
            stdout_path=stdout if stdout.startswith("/") else f"{work_dir}/{stdout}",
            nodes=[],
            allocated={},
            exit_code=None,
            array_tasks=None,
            created_at=now,
            updated_at=now,
            submitted_at=None,
            started_at=None,
            ended_at=None,
        )
        try:
            await session.execute(insert(JOBS), {c.key: getattr(job, c.key) for c in JOBS.columns})
            await record_now(
                session,
                actor,
                "job.submit",
                target_type="job",
                target=job.id,
                workspace_id=ws.id,
                details={"name": spec.name, "nodes": spec.nodes, "gpus_per_node": spec.gpus_per_node},
            )
            await events.write(session, [StateChange(job_id=job.id, workspace_id=ws.id, old=None, new=SUBMITTING)])
            await session.commit()  # recorded before sbatch: a crash from here on is settled by the poller
        except IntegrityError:
            await session.rollback()  # a concurrent retry with the same key won
            existing = await session.scalar(
                select(TrainingJob).where(
                    TrainingJob.user_id == actor.user_id, TrainingJob.idempotency_key == idempotency_key
                )
            )
            if existing is None:
                raise
            return existing, False

        options: dict[str, str | None] = {"comment": slurm_comment(job.id)}
        if hold:
            options["hold"] = None
        try:
            await self._ensure_association(ws.slurm_account, posix_name)
            slurm_id = await self.slurm.submit(
                Submission(user=posix_name, account=ws.slurm_account, script=script, work_dir=work_dir, options=options)
            )
        except SubmitRejected as exc:
            await _set(session, job, state=SUBMIT_FAILED, reason=exc.message)  # before raising: commits
            field = next((f for cls, f in _REJECTION_FIELDS.items() if isinstance(exc, cls)), "spec")
            if isinstance(exc, InvalidAccount):
                raise Conflict(f"Slurm refused the workspace's account: {exc.message}", field="workspace") from exc
            raise InvalidInput(f"Slurm refused the job: {exc.message}", field=field) from exc
        except SlurmUnavailable as exc:
            # sbatch may or may not have reached the controller: the job stays SUBMITTING for the poller.
            raise SlurmDown(f"Slurm did not answer; job {job.id} will be settled when it does") from exc
        await _set(session, job, slurm_job_id=slurm_id, state="PENDING", submitted_at=utcnow())
        return job, True

    async def get(self, session: AsyncSession, access: WorkspaceAccess, job_id: str) -> TrainingJob:
        """A job of this workspace the caller may see: members see their own, admins and owners all."""
        access.require(Role.MEMBER)
        job = await session.scalar(
            select(TrainingJob).where(TrainingJob.id == job_id, TrainingJob.workspace_id == access.workspace.id)
        )
        if job is None or not _may_see(access, job):
            raise NotFound(f"job {job_id!r} not found")
        return job

    async def list(
        self,
        session: AsyncSession,
        access: WorkspaceAccess,
        page: Pagination,
        *,
        state: str | None = None,
        user: str | None = None,
        since: object = None,
    ) -> tuple[list[tuple[JobView, str]], int | None]:
        """One page of jobs, newest first, with their owners' names, and how many match in all.

        Rows of plain columns, not ORM objects (a list of 50 costs a third as much), and never the scripts.
        """
        access.require(Role.MEMBER)
        where = [JOBS.c.workspace_id == access.workspace.id]
        if not _sees_all(access):
            where.append(JOBS.c.user_id == access.actor.user_id)
        if state:
            where.append(JOBS.c.state == state.upper())
        if user:
            where.append(JOBS.c.user_id == select(User.id).where(User.name == user).scalar_subquery())
        if since is not None:
            where.append(JOBS.c.created_at >= since)
        total = await count_rows(session, select(JOBS.c.id).where(*where))
        rows = await (await session.connection()).execute(page_of(_LIST.where(*where), page))  # rows, not ORM
        return [(row, str(row.owner_name)) for row in rows], total

    async def history(self, session: AsyncSession, access: WorkspaceAccess, job_id: str) -> Sequence[JobEvent]:
        """The job's state changes, oldest first (same visibility as the job)."""
        await self.get(session, access, job_id)
        return await events.history(session, job_id)

    async def log_file(
        self,
        session: AsyncSession,
        access: WorkspaceAccess,
        job_id: str,
        stream: str = "stdout",
        task: int | None = None,
    ) -> LogFile:
        """Where the job's ``stdout`` or ``stderr`` is, as sbatch names it, and whose it must be.

        ``task``: which task of an array (required for one, refused for a single job).
        """
        job = await self.get(session, access, job_id)
        owner = await session.get_one(User, job.user_id)
        is_array = bool(job.spec.get("array"))
        if is_array and task is None:
            raise InvalidInput("this job is an array: say which task's output to read", field="task")
        if not is_array and task is not None:
            raise InvalidInput("this job is not an array", field="task")
        if is_array and task not in task_ids(str(job.spec["array"])):
            raise NotFound(f"job {job_id!r} has no array task {task}")
        pattern = job.stdout_path
        if stream == "stderr" and job.spec.get("stderr"):
            stderr = str(job.spec["stderr"])
            pattern = stderr if stderr.startswith("/") else f"{job.work_dir}/{stderr}"
        if job.slurm_job_id is None:
            raise Conflict(f"job {job_id!r} has no Slurm job yet (state {job.state})", field="id")
        values = PatternValues(
            job_id=None if is_array else job.slurm_job_id,  # an array task's own id is not recorded
            array_job_id=job.slurm_job_id if is_array else None,
            task_id=task,
            user=owner.posix_name or owner.name,
            name=job.name,
        )
        try:
            path = expand(pattern, values)
        except UnknownInPattern as exc:
            hint = "use %A and %a for arrays" if exc.letter in "jJ" else "only the node knows its host name"
            raise Conflict(f"cannot name the output file: {exc} ({hint})", field="stdout") from exc
        try:
            uid = pwd.getpwnam(owner.posix_name or "").pw_uid
        except KeyError:
            raise Conflict(f"POSIX account {owner.posix_name!r} does not exist here", field="user") from None
        return LogFile(path=path, uid=uid, job_id=job.id)

    async def control(self, session: AsyncSession, access: WorkspaceAccess, job_id: str, action: str) -> TrainingJob:
        """cancel, hold or release, run as the job's owner (Slurm checks it too)."""
        job = await self.get(session, access, job_id)
        if job.slurm_job_id is None:
            raise Conflict(f"job {job_id!r} has no Slurm job (state {job.state})", field="id")
        owner = await session.get_one(User, job.user_id)
        operation = {"cancel": self.slurm.cancel, "hold": self.slurm.hold, "release": self.slurm.release}[action]
        try:
            await operation(job.slurm_job_id, user=owner.posix_name)
        except SlurmUnavailable as exc:
            raise SlurmDown(exc.message) from exc
        except SlurmError as exc:
            raise Conflict(f"Slurm refused to {action} job {job_id}: {exc.message}", field="id") from exc
        record(
            session, access.actor, f"job.{action}", target_type="job", target=job.id, workspace_id=access.workspace.id
        )
        await session.commit()
        return job


async def _set(session: AsyncSession, job: TrainingJob, **values: Any) -> None:
    """Update the job's row (and its response view) and commit, with an event if its state changes."""
    values["updated_at"] = utcnow()
    await session.execute(_UPDATE_JOB, {"job_id_": job.id, **values})
    if "state" in values and values["state"] != job.state:
        change = StateChange(
            job_id=job.id,
            workspace_id=job.workspace_id,
            old=job.state,
            new=values["state"],
            reason=values.get("reason"),
        )
        await events.write(session, [change])
    await session.commit()
    for key, value in values.items():
        setattr(job, key, value)


_LIST = (
    select(
        *(c for c in JOBS.columns if c.key in JobOut.__struct_fields__ or c.key == "spec"),
        User.name.label("owner_name"),
    )
    .join(User, User.id == JOBS.c.user_id)
    .order_by(JOBS.c.created_at.desc(), JOBS.c.id)
)
"""What a list shows (never the scripts), built once: building a statement per call costs more than running it."""


def _sees_all(access: WorkspaceAccess) -> bool:
    return access.actor.is_admin or (access.role is not None and access.role.rank >= Role.ADMIN.rank)


def _may_see(access: WorkspaceAccess, job: TrainingJob) -> bool:
    return _sees_all(access) or job.user_id == access.actor.user_id


async def has_finished(database: Database, job_id: str) -> bool:
    """Whether the job is over (or gone), read in a session of its own: for streams outliving their request."""
    async with database.session(write=False) as session:
        state = await session.scalar(select(TrainingJob.state).where(TrainingJob.id == job_id))
    return state is None or state in FINAL_STATES
