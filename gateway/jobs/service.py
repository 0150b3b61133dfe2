"""Submitting and controlling training jobs.

Nothing lost, nothing twice: the job is committed (with the caller's idempotency key) before sbatch runs, and
the Slurm job carries the gateway's id in its comment (``rgpu:<id>``). If the gateway dies between sbatch
and recording the Slurm id, the poller finds the job by that comment and adopts it.
"""

from __future__ import annotations

import pwd
from collections.abc import Mapping
from typing import Any

import msgspec
from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from gateway.audit.service import record, record_now
from gateway.config import Settings
from gateway.db.base import utcnow
from gateway.db.paging import count_rows, page_of
from gateway.errors import Conflict, Forbidden, GatewayError, InvalidInput, NotFound
from gateway.jobs.models import SUBMIT_FAILED, SUBMITTING, TrainingJob, new_job_id
from gateway.jobs.schemas import JobCreate
from gateway.schemas import Pagination
from gateway.users.models import User
from gateway.workspaces.models import Quota, Role, WorkspaceStatus
from gateway.workspaces.service import WorkspaceAccess
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
from slurm.script import JobSpec, ScriptError, check_path, render

COMMENT_PREFIX = "rgpu:"
JOBS: Table = TrainingJob.__table__  # type: ignore[assignment]
_UPDATE_JOB = update(JOBS).where(JOBS.c.id == bindparam("job_id_"))
"""SET clause from the parameters; built once (building statements per call costs more than running them)."""
_REJECTION_FIELDS: Mapping[type[SubmitRejected], str] = {
    InvalidPartition: "partition",
    InvalidQos: "qos",
    NodeConfigUnavailable: "gpus_per_node",
}


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
            await _set(session, job, state=SUBMIT_FAILED, reason=exc.message)
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
    ) -> tuple[list[tuple[TrainingJob, str]], int]:
        access.require(Role.MEMBER)
        query = (
            select(TrainingJob, User.name)
            .options(defer(TrainingJob.script))  # up to 1 MiB each: never loaded for a list
            .join(User, User.id == TrainingJob.user_id)
            .where(TrainingJob.workspace_id == access.workspace.id)
        )
        if not _sees_all(access):
            query = query.where(TrainingJob.user_id == access.actor.user_id)
        if state:
            query = query.where(TrainingJob.state == state.upper())
        if user:
            query = query.where(User.name == user)
        if since is not None:
            query = query.where(TrainingJob.created_at >= since)
        total = await count_rows(session, query)
        rows = await session.execute(page_of(query.order_by(TrainingJob.created_at.desc(), TrainingJob.id), page))
        return [(job, name) for job, name in rows], total

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
    """Update the job's row (and its response view) and commit."""
    values["updated_at"] = utcnow()
    await session.execute(_UPDATE_JOB, {"job_id_": job.id, **values})
    await session.commit()
    for key, value in values.items():
        setattr(job, key, value)


def _sees_all(access: WorkspaceAccess) -> bool:
    return access.actor.is_admin or (access.role is not None and access.role.rank >= Role.ADMIN.rank)


def _may_see(access: WorkspaceAccess, job: TrainingJob) -> bool:
    return _sees_all(access) or job.user_id == access.actor.user_id


def tail(path: str, lines: int) -> list[str]:
    """The last ``lines`` lines of a log file (read backwards in blocks: logs can be large)."""
    try:
        with open(path, "rb") as fh:  # noqa: PTH123
            fh.seek(0, 2)
            end = fh.tell()
            data = b""
            while end > 0 and data.count(b"\n") <= lines:
                step = min(65536, end)
                end -= step
                fh.seek(end)
                data = fh.read(step) + data
    except FileNotFoundError:
        return []
    return data.decode(errors="replace").splitlines()[-lines:]
