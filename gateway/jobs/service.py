"""Submitting and controlling training jobs.

Nothing lost, nothing twice: the job is committed (with the caller's idempotency key, a hash of the request and
the time its sbatch begins) before sbatch runs, and the Slurm job carries the gateway's id in its comment
(``rgpu:<instance>:<id>``, gateway.jobs.origin). If the gateway dies between sbatch and recording the Slurm id,
the poller finds the job by that comment and adopts it; if it died before sbatch reached Slurm, recovery
(``finish_submissions``) submits the recorded script once no sbatch of it can still be running.

Idempotency-Key as draft-ietf-httpapi-idempotency-key-header says: the same key with another request is a 422,
a retry while the first is still submitting a 409 with Retry-After, any other retry the job itself.
"""

from __future__ import annotations

import hashlib
import pwd
import re
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import cache, partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
from sqlalchemy import Integer, Table, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from gateway.accounts.models import User
from gateway.audit.writer import AUDIT_LOG, audit_row, record
from gateway.billing.service import check_can_start
from gateway.config import Settings
from gateway.db.base import UTCDateTime, utcnow
from gateway.db.paging import AnySelect, bounded, count_query
from gateway.db.session import Database
from gateway.errors import Conflict, Forbidden, GatewayError, InvalidInput, NotFound
from gateway.jobs import events, statements
from gateway.jobs.events import StateChange
from gateway.jobs.models import SUBMIT_FAILED, SUBMITTING, TRAINING, JobEvent, TrainingJob, new_job_id
from gateway.jobs.origin import instance_id, parse_comment, slurm_comment
from gateway.jobs.quota import check_quota
from gateway.jobs.schemas import LISTED, JobCreate, ListedJob, job_spec, stored_spec
from gateway.schemas import Pagination
from gateway.workspaces.access import WorkspaceAccess
from gateway.workspaces.models import Role, Workspace, WorkspaceStatus
from slurm.arrays import combine_jobs, task_ids
from slurm.client import SlurmClient, Submission
from slurm.environment import submitted as crossing_environment
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
from slurm.script import JobSpec, ScriptError, StageIn, StageInProgram, check_path, render

FINAL_STATES = frozenset({s.value for s in JobState if s.is_terminal} | {SUBMIT_FAILED})
LISTABLE_STATES = frozenset({s.value for s in JobState} | {SUBMITTING, SUBMIT_FAILED})
"""What a job's ``state`` can be, the values the jobs list filters on."""
JOBS: Table = TrainingJob.__table__  # type: ignore[assignment]
JobView = TrainingJob | ListedJob | SimpleNamespace
"""A job as an ORM object, a listed row or the values just written (a submission): all read the same."""
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


class KeyReused(GatewayError):
    status, kind, title = 422, "idempotency-key-reused", "Idempotency-Key used for another request"


class RequestInProgress(GatewayError):
    status, kind, title = 409, "request-in-progress", "A request with this Idempotency-Key is still in progress"
    headers = {"Retry-After": "2"}


Secrets = Callable[[str], Awaitable[Mapping[str, str]]]
"""The variables only the Slurm job of a gateway job id may have (slurm.client.Submission.secrets), made anew
for each sbatch of it: e.g. an environment session's callback token."""

STAGE_IN = "stage-in"
"""The secrets of jobs whose spec has ``stage_in`` (gateway.datasets.stagein), whatever their kind."""
References = Callable[[WorkspaceAccess, Sequence[str], Sequence[str]], Awaitable[list[StageIn]]]
"""(access, datasets, models) -> the stage-ins of the references among them (InvalidInput naming the item)."""

LEASE_MARGIN = timedelta(seconds=5)
"""Added to the Slurm backend's timeout: how long after an sbatch began no part of it can still be running."""


def stage_in_path(settings: Settings) -> str:
    """``remotegpu-stage-in`` as the nodes run it: beside ``session_supervisor`` (a venv every user can execute),
    else beside this Python."""
    supervisor = settings.session_supervisor or str(Path(sys.executable).parent / "remotegpu-session")
    return str(Path(supervisor).with_name("remotegpu-stage-in"))


def request_hash(data: msgspec.Struct) -> str:
    """The request's fingerprint (its decoded body, so key order and spacing do not matter)."""
    return hashlib.sha256(msgspec.json.encode(data, order="sorted")).hexdigest()


def _posix_account(posix_name: str | None) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(posix_name or "")
    except KeyError:
        raise Conflict(f"POSIX account {posix_name!r} does not exist on the cluster", field="user") from None


def _in(work_dir: str, path: str) -> str:
    """A path as sbatch reads it: relative ones are relative to the job's working directory."""
    return path if path.startswith("/") else f"{work_dir}/{path}"


class JobService:
    """Job operations; one instance per process (it remembers which associations exist)."""

    def __init__(self, database: Database, slurm: SlurmClient, settings: Settings) -> None:
        self.database = database
        self.slurm = slurm
        self.settings = settings
        self._associations: set[tuple[str, str]] = set()
        self._instance_id: str | None = None
        self._one = database.backend == "postgresql"
        """Whether the submission's writes are one statement each (gateway.jobs.statements)."""
        self.lease = timedelta(seconds=settings.slurm_timeout_seconds) + LEASE_MARGIN
        """After this long, an sbatch that began is over (done, failed or killed by the backend's timeout)."""
        self.secrets: dict[str, Secrets] = {}
        """By job kind (and ``STAGE_IN``: jobs that fetch datasets): what gives each sbatch of such a job its
        secrets (registered by the domain)."""
        self.references: References | None = None
        """What resolves the dataset and model references among a job's mounts (registered by the datasets
        domain); None: only absolute paths are mounts."""

    async def _secrets(self, kind: str, job_id: str, spec: Mapping[str, Any]) -> Mapping[str, str]:
        """The job's secrets: its kind's, and the stage-in token where it fetches datasets (only there: a job
        sees the environment plain sbatch gives it, and nothing more it does not need)."""
        found: dict[str, str] = {}
        for make in (self.secrets.get(STAGE_IN) if spec.get("stage_in") else None, self.secrets.get(kind)):
            if make is not None:
                found.update(await make(job_id))
        return found

    async def _instance(self) -> str:
        if self._instance_id is None:
            self._instance_id = await instance_id(self.database)
        return self._instance_id

    async def _ensure_association(self, account: str, user: str) -> None:
        if (account, user) in self._associations:
            return
        await self.slurm.ensure_account(account)
        await self.slurm.ensure_association(user, account)
        self._associations.add((account, user))

    async def _sbatch(self, submission: Submission) -> int:
        """Submit, making the user's association first if this process has not seen it yet. One refused for
        the account is tried once more after making it again: the association remembered here may have been
        removed since (the member left and came back, an admin cleaned up), and a refused sbatch made nothing."""
        key = (submission.account, submission.user)
        known = key in self._associations
        await self._ensure_association(*key)
        try:
            return await self.slurm.submit(submission)
        except InvalidAccount:
            self._associations.discard(key)
            if not known:
                raise
        await self._ensure_association(*key)
        return await self.slurm.submit(submission)

    async def _slurm_dependency(self, workspace_id: int, dependency: str) -> str:
        """``dependency`` with the gateway ids of the workspace's jobs replaced by their Slurm ids (sbatch knows
        only those); one that is not a job of this workspace with a Slurm id is a 400 naming ``dependency``."""
        ids = set(_GATEWAY_ID.findall(dependency))
        if not ids:
            return dependency
        known = await self.database.run(partial(_slurm_ids, workspace_id, ids), write=False)
        missing = sorted(i for i in ids if known.get(i) is None)
        if missing:
            raise InvalidInput(f"no job {missing[0]} submitted to Slurm in this workspace", field="dependency")
        return _GATEWAY_ID.sub(lambda m: str(known[m[0]]), dependency)

    async def _prepare(self, access: WorkspaceAccess, data: JobCreate) -> tuple[JobCreate, str, JobSpec, str, str]:
        """Checks before sbatch, and what it is given: the request (dependencies in Slurm ids), the user's POSIX
        name, the spec, its script and the working directory."""
        access.require(Role.MEMBER)
        ws, actor = access.workspace, access.actor
        check_can_start(ws, "new jobs")
        if actor.user_id is None or actor.posix_name is None:
            raise Forbidden("jobs are submitted by users with a POSIX account")
        check_quota(ws.quota, data)
        account = _posix_account(actor.posix_name)  # a 409 where the host has none, given work_dir or not
        work_dir = data.work_dir or account.pw_dir
        if data.dependency is not None:
            data = msgspec.structs.replace(data, dependency=await self._slurm_dependency(ws.id, data.dependency))
        stage_in = await self._stage_in(access, data)
        try:
            check_path("work_dir", work_dir)
            spec = job_spec(data, work_dir)
            if stage_in:
                spec = msgspec.structs.replace(spec, stage_in=stage_in)
            script = render(
                spec,
                container_runtime=self.settings.slurm_container_runtime,
                stage_in=StageInProgram(stage_in_path(self.settings), self.settings.gateway_url) if stage_in else None,
            )
            if spec.environment is not None:  # what never crosses is not even stored
                spec = msgspec.structs.replace(spec, environment=crossing_environment(spec.environment))
        except ScriptError as exc:
            raise InvalidInput(exc.message, field=exc.field) from exc
        except msgspec.ValidationError as exc:
            raise InvalidInput(str(exc), field="spec") from exc
        return data, actor.posix_name, spec, script, work_dir

    async def _stage_in(self, access: WorkspaceAccess, data: JobCreate) -> list[StageIn]:
        """The dataset and model references among the mounts, resolved (none: nothing to stage in)."""
        mounts = [*data.datasets, *data.models]
        if not any(not m.startswith("/") for m in mounts):
            return []
        if self.references is None:
            raise InvalidInput("this gateway mounts absolute paths only", field="datasets")
        return await self.references(access, data.datasets, data.models)

    async def test_only(self, access: WorkspaceAccess, data: JobCreate) -> str:
        """``sbatch --test-only`` of the job as the caller: Slurm's answer; nothing is recorded or submitted."""
        _, posix_name, spec, script, work_dir = await self._prepare(access, data)
        ws = access.workspace
        view = SimpleNamespace(id="test-only", script=script, work_dir=work_dir, spec=msgspec.to_builtins(spec))
        submission = _submission("test", view, posix_name, ws.slurm_account)  # (no instance: nothing is written)
        await self._ensure_association(ws.slurm_account, posix_name)
        try:
            return await self.slurm.test_only(submission)
        except SubmitRejected as exc:
            field = next((f for cls, f in _REJECTION_FIELDS.items() if isinstance(exc, cls)), "spec")
            raise InvalidInput(f"Slurm refused the job: {exc.message}", field=field) from exc
        except SlurmUnavailable as exc:
            raise SlurmDown("Slurm did not answer") from exc

    async def submit(
        self,
        access: WorkspaceAccess,
        data: JobCreate,
        idempotency_key: str | None,
        *,
        kind: str = TRAINING,
        job_id: str | None = None,
    ) -> tuple[JobView, bool]:
        """Submit as the caller. Returns the job and whether it was created now (False: an idempotent retry).

        Two short write transactions around sbatch, each one unit of work in a thread (Database.run): this is
        the hot path of submission throughput. ``kind`` and ``job_id``: for the domains whose Slurm jobs these
        are too (an environment's session names its job before it is made).
        """
        ws, actor = access.workspace, access.actor
        data, posix_name, spec, script, work_dir = await self._prepare(access, data)
        stdout = spec.stdout or ("slurm-%A_%a.out" if spec.array else "slurm-%j.out")  # sbatch's default
        now = utcnow()
        row = {
            "id": job_id or new_job_id(),
            "workspace_id": ws.id,
            "kind": kind,
            "user_id": actor.user_id,
            "name": spec.name,
            "state": SUBMITTING,
            "reason": None,
            "state_unknown": False,
            "slurm_job_id": None,
            "idempotency_key": idempotency_key,
            "request_hash": request_hash(data) if idempotency_key is not None else None,
            "submit_attempt_at": None,  # set in the unit of work: the moment closest to sbatch that is recorded
            "spec": msgspec.to_builtins(spec),
            "script": script,
            "work_dir": work_dir,
            "stdout_path": _in(work_dir, stdout),
            "nodes": [],
            "allocated": {},
            "exit_code": None,
            "array_tasks": None,
            "created_at": now,
            "updated_at": now,
            "submitted_at": None,
            "started_at": None,
            "ended_at": None,
        }
        audit = audit_row(
            actor,
            "job.submit",
            target_type="job",
            target=row["id"],
            workspace_id=ws.id,
            details={"name": spec.name, "nodes": spec.nodes, "gpus_per_node": spec.gpus_per_node},
        )
        instance = await self._instance()  # (made on a first submission: before the job, never between it and sbatch)
        try:
            # recorded before sbatch: a crash from here on is settled by the poller
            existing = await self.database.run(partial(_record_submission, row, audit), one_statement=self._one)
        except IntegrityError:  # a concurrent retry with the same key won (PostgreSQL; SQLite writes one by one)
            existing = await self.database.run(partial(_by_key, actor.user_id, idempotency_key), write=False)
            if existing is None:
                raise
        if existing is not None:
            return _replayed(existing, row["request_hash"]), False
        job = SimpleNamespace(**row)  # the response's view; an ORM object costs a tenth of the request
        submission = _submission(
            instance, job, posix_name, ws.slurm_account, await self._secrets(kind, job.id, job.spec)
        )
        try:
            slurm_id = await self._sbatch(submission)
        except SubmitRejected as exc:
            await self._set(job, state=SUBMIT_FAILED, reason=exc.message)
            field = next((f for cls, f in _REJECTION_FIELDS.items() if isinstance(exc, cls)), "spec")
            if isinstance(exc, InvalidAccount):
                raise Conflict(f"Slurm refused the workspace's account: {exc.message}", field="workspace") from exc
            raise InvalidInput(f"Slurm refused the job: {exc.message}", field=field) from exc
        except SlurmUnavailable as exc:
            # sbatch may or may not have reached the controller: the job stays SUBMITTING for the poller.
            raise SlurmDown(f"Slurm did not answer; job {job.id} will be settled when it does") from exc
        await self._set(job, slurm_job_id=slurm_id, state="PENDING", submitted_at=utcnow())
        return job, True

    async def finish_submissions(self, job_ids: Iterable[str], absent_at: datetime) -> int:
        """Submit recorded jobs that Slurm does not have: their gateway died before its sbatch reached Slurm.

        ``absent_at``: when the controller was asked (squeue, then sacct) and showed no job with their comments.
        Only jobs whose last sbatch began a lease before that are taken: any sbatch of theirs was over by then.
        Each is claimed first (its attempt time moved on, if still older than that), so two recoverers never
        both submit it. Returns how many were submitted.
        """
        submitted = 0
        instance = await self._instance()
        for job_id in job_ids:
            # (never later than a lease ago: a claim just made here must not look claimable again)
            claimed = await self.database.run(partial(_claim, job_id, min(absent_at, utcnow()) - self.lease))
            if claimed is None:
                continue
            job, posix_name, account, active = claimed
            if not active or posix_name is None:
                why = "workspace not active" if not active else "user has no POSIX account"
                await self._set(job, state=SUBMIT_FAILED, reason=f"not submitted after a restart: {why}")
                continue
            try:
                secrets = await self._secrets(job.kind, job.id, job.spec)
                slurm_id = await self._sbatch(_submission(instance, job, posix_name, account, secrets))
            except SubmitRejected as exc:
                await self._set(job, state=SUBMIT_FAILED, reason=exc.message)
                continue
            except SlurmUnavailable:  # maybe submitted, maybe not: the next recovery looks again after the lease
                continue
            await self._set(job, slurm_job_id=slurm_id, state="PENDING", submitted_at=utcnow())
            submitted += 1
        return submitted

    async def _set(self, job: SimpleNamespace, **values: Any) -> None:
        """Update the job's row (and ``job``, the response's view of it), with an event if its state changes."""
        values["updated_at"] = utcnow()
        change = None
        if "state" in values and values["state"] != job.state:
            change = StateChange(
                job_id=job.id,
                workspace_id=job.workspace_id,
                old=job.state,
                new=values["state"],
                reason=values.get("reason"),
            )
        await self.database.run(partial(_update_job, job.id, values, change), one_statement=self._one)
        for key, value in values.items():
            setattr(job, key, value)

    async def get(self, session: AsyncSession, access: WorkspaceAccess, job_id: str) -> TrainingJob:
        """A job of this workspace the caller may see: members see their own, admins and owners all."""
        access.require(Role.MEMBER)
        job = await session.scalar(
            select(TrainingJob).where(
                TrainingJob.id == job_id, TrainingJob.workspace_id == access.workspace.id, TrainingJob.kind == TRAINING
            )
        )
        if job is None or not _may_see(access, job):
            raise NotFound(f"job {job_id!r} not found")
        return job

    async def owner_name(self, session: AsyncSession, job: TrainingJob) -> str:
        """The gateway name of the job's owner, as job answers show it."""
        owner = await session.get_one(User, job.user_id)
        return owner.name

    async def list(
        self,
        access: WorkspaceAccess,
        page: Pagination,
        *,
        state: str | None = None,
        user: str | None = None,
        since: object = None,
        slurm_job_id: int | None = None,
        id_prefix: str | None = None,
    ) -> tuple[list[ListedJob], int | None]:
        """One page of jobs, newest first, with their owners' names, and how many match in all.

        Rows of plain columns, not ORM objects (a list of 50 costs a third as much), and never the scripts.
        ``slurm_job_id`` and ``id_prefix`` find the job a user names by its Slurm id or a prefix of its id.
        """
        access.require(Role.MEMBER)
        if state and state.upper() not in LISTABLE_STATES:
            raise InvalidInput(f"unknown state {state!r}: one of {', '.join(sorted(LISTABLE_STATES))}", field="state")
        own_only = not _sees_all(access)
        lookups = (slurm_job_id is not None, id_prefix is not None)
        statements = _list_statements(own_only, bool(state), bool(user), since is not None, *lookups)
        values = {
            "slurm_job_id": slurm_job_id,
            "id_prefix": f"{id_prefix}%",
            "ws": access.workspace.id,
            "me": access.actor.user_id,
            "state": (state or "").upper(),
            "user": user,
            "since": since,
            "limit": page.limit,
            "offset": page.offset,
        }
        return await _list_page(self.database, statements, values, page)

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
        spec = stored_spec(job.spec)
        is_array = spec.array is not None
        if is_array and task is None:
            raise InvalidInput("this job is an array: say which task's output to read", field="task")
        if not is_array and task is not None:
            raise InvalidInput("this job is not an array", field="task")
        if spec.array is not None and task not in task_ids(spec.array):
            raise NotFound(f"job {job_id!r} has no array task {task}")
        pattern = job.stdout_path
        if stream == "stderr" and spec.stderr:
            pattern = _in(job.work_dir, spec.stderr)
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
        return LogFile(path=path, uid=_posix_account(owner.posix_name).pw_uid, job_id=job.id)

    async def control(self, session: AsyncSession, access: WorkspaceAccess, job_id: str, action: str) -> TrainingJob:
        """cancel, hold or release, run as the job's owner (Slurm checks it too); the job as Slurm has it now.

        A job that has ended (in Slurm, asked first) is a 409 naming its state. The request is a job event (its
        ``kind`` the action, its ``actor`` the caller), written with the audit entry; then Slurm is asked for the
        job's state (one call for that job), and a change is written as a state event, as the poller would.
        """
        job = await self.get(session, access, job_id)
        if job.slurm_job_id is not None and job.state not in FINAL_STATES:
            await self.refresh(session, job)  # the poller may not have seen it end yet (scancel would not say)
        if job.state in FINAL_STATES:
            await session.commit()  # what was just learnt of it
            raise Conflict(f"job {job_id} has already ended ({job.state}): it cannot be {action}ed", field="state")
        if job.slurm_job_id is None:
            raise Conflict(f"job {job_id!r} has no Slurm job (state {job.state})", field="id")
        owner = await session.get_one(User, job.user_id)
        operation = {"cancel": self.slurm.cancel, "hold": self.slurm.hold, "release": self.slurm.release}[action]
        try:
            await operation(job.slurm_job_id, user=owner.posix_name)
        except SlurmUnavailable as exc:
            raise SlurmDown(exc.message) from exc
        except SlurmError as exc:
            if "already completing or completed" in exc.message.lower() or "already finished" in exc.message.lower():
                raise Conflict(f"job {job_id} has already ended in Slurm: {exc.message}", field="state") from exc
            raise Conflict(f"Slurm refused to {action} job {job_id}: {exc.message}", field="id") from exc
        session.add(
            JobEvent(
                job_id=job.id,
                workspace_id=job.workspace_id,
                old_state=job.state,
                new_state=job.state,
                kind=action,
                actor=access.actor.name,
                at=utcnow(),
            )
        )
        record(
            session, access.actor, f"job.{action}", target_type="job", target=job.id, workspace_id=access.workspace.id
        )
        await self.refresh(session, job)
        await session.commit()
        return job

    async def refresh(self, session: AsyncSession, job: TrainingJob) -> None:
        """The job's state and reason as the controller has them now (one call for this job); its change of
        state as an event. Not asked, or not answered: the poller's next cycle brings it."""
        assert job.slurm_job_id is not None
        try:
            entries = [e for e in await self.slurm.job(job.slurm_job_id) if _names_job(e.comment, job.id)]
        except SlurmError:
            return
        if not entries:
            return
        now = combine_jobs(job.slurm_job_id, entries) if job.spec.get("array") else entries[0]
        old = job.state
        job.state, job.reason, job.updated_at = now.state.value, now.reason, utcnow()
        if job.state != old:
            session.add(
                JobEvent(
                    job_id=job.id,
                    workspace_id=job.workspace_id,
                    old_state=old,
                    new_state=job.state,
                    reason=job.reason,
                    at=utcnow(),
                )
            )


def _names_job(comment: str, job_id: str) -> bool:
    """Whether a Slurm job's comment names gateway job ``job_id`` (ids repeat; a job made elsewhere is taken)."""
    origin = parse_comment(comment)
    return origin is None or origin.job_id == job_id


def _submission(
    instance: str, job: SimpleNamespace, posix_name: str, account: str, secrets: Mapping[str, str] | None = None
) -> Submission:
    """The one way a recorded job goes to sbatch (first try or recovery): its script carries every option."""
    options: dict[str, str | None] = {"comment": slurm_comment(instance, job.id, job.spec.get("comment"))}
    if job.spec.get("export") is not None:  # on sbatch's command line: values may hold what a directive cannot
        options["export"] = job.spec["export"]
    return Submission(
        user=posix_name,
        account=account,
        script=job.script,
        work_dir=job.work_dir,
        options=options,
        environment=job.spec.get("environment"),
        secrets=secrets or {},
    )


def _replayed(existing: TrainingJob, fingerprint: str | None) -> TrainingJob:
    """The answer to a retry: the job, unless the key came with another request or the first is not done."""
    if existing.request_hash is not None and existing.request_hash != fingerprint:
        raise KeyReused(
            "this Idempotency-Key was used for a different request: use a new key for a new job",
            field="Idempotency-Key",
        )
    if existing.state == SUBMITTING and existing.slurm_job_id is None:
        raise RequestInProgress(
            f"job {existing.id} is still being submitted: retry with the same key shortly", field="Idempotency-Key"
        )
    return existing


def _claim(
    job_id: str, attempted_before: datetime, session: Session
) -> tuple[SimpleNamespace, str | None, str, bool] | None:
    """Unit of work: take a recorded, never-submitted job for a new sbatch if its last attempt began before
    ``attempted_before`` (compare and set on the attempt time); the job, its user's POSIX name, the workspace's
    Slurm account and whether the workspace takes jobs. None if it is not (or no longer) such a job."""
    attempt = func.coalesce(JOBS.c.submit_attempt_at, JOBS.c.created_at)
    claimed = session.execute(
        update(JOBS)
        .where(
            JOBS.c.id == job_id,
            JOBS.c.state == SUBMITTING,
            JOBS.c.slurm_job_id.is_(None),
            attempt < bindparam("before", type_=UTCDateTime()),
        )
        .values(submit_attempt_at=utcnow()),
        {"before": attempted_before},
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        return None
    row = session.execute(
        select(
            JOBS.c.id,
            JOBS.c.workspace_id,
            JOBS.c.kind,
            JOBS.c.state,
            JOBS.c.script,
            JOBS.c.work_dir,
            JOBS.c.spec,
            User.posix_name,
            Workspace.slurm_account,
            Workspace.status,
        )
        .join(User, User.id == JOBS.c.user_id)
        .join(Workspace, Workspace.id == JOBS.c.workspace_id)
        .where(JOBS.c.id == job_id)
    ).one()
    job = SimpleNamespace(
        id=row.id,
        workspace_id=row.workspace_id,
        kind=row.kind,
        state=row.state,
        script=row.script,
        work_dir=row.work_dir,
        spec=row.spec,
    )
    return job, row.posix_name, row.slurm_account, row.status == WorkspaceStatus.ACTIVE


def _record_submission(row: dict[str, Any], audit: dict[str, Any], session: Session) -> TrainingJob | None:
    """Unit of work: the new job and its audit entry; or the job already made with its key. (Its events
    start with its first change of state: the row itself says when it was made, as SUBMITTING.)"""
    if session.get_bind().dialect.name == "postgresql":  # one statement, in autocommit
        if statements.record_submission(row, audit, session):
            return None
        return _by_key(row["user_id"], row["idempotency_key"], session)
    if row["idempotency_key"] is not None:
        existing = _by_key(row["user_id"], row["idempotency_key"], session)
        if existing is not None:
            return existing
    session.execute(_INSERT_JOB, {**row, "submit_attempt_at": utcnow()})
    session.execute(_INSERT_AUDIT, audit)
    return None


_GATEWAY_ID = re.compile(r"(?<=:)[0-9a-f]{32}(?=[_+:,?]|$)")
"""A gateway job id in a ``--dependency`` list (``afterok:<id>[_task][+time]``)."""


def _slurm_ids(workspace_id: int, ids: set[str], session: Session) -> dict[str, int | None]:
    """Unit of work: the Slurm ids of the workspace's jobs among ``ids``."""
    query = select(TrainingJob.id, TrainingJob.slurm_job_id).where(
        TrainingJob.workspace_id == workspace_id, TrainingJob.id.in_(ids)
    )
    return {job_id: slurm_id for job_id, slurm_id in session.execute(query)}


def _by_key(user_id: int | None, key: str | None, session: Session) -> TrainingJob | None:
    """Unit of work: the caller's job submitted with idempotency ``key``."""
    return session.scalar(select(TrainingJob).where(TrainingJob.user_id == user_id, TrainingJob.idempotency_key == key))


def _update_job(job_id: str, values: dict[str, Any], change: StateChange | None, session: Session) -> None:
    """Unit of work: new values for a job's row, and the event of its change of state."""
    if session.get_bind().dialect.name == "postgresql":  # one statement, in autocommit
        statements.update_job(job_id, values, change, session)
        return
    session.execute(_UPDATE_JOB, {"job_id_": job_id, **values})
    if change is not None:
        events.write(session, [change])


@cache
def _list_statements(
    own_only: bool, state: bool, user: bool, since: bool, slurm_job_id: bool = False, id_prefix: bool = False
) -> tuple[AnySelect, AnySelect]:
    """The page and count statements for one combination of filters, with their values as parameters: built
    once, so that SQLAlchemy finds them in its compiled cache without working out their cache key again.

    The page carries the (bounded) count in every row, a subquery the database runs once: one round trip.
    """
    where = [JOBS.c.workspace_id == bindparam("ws"), JOBS.c.kind == TRAINING]
    if own_only:
        where.append(JOBS.c.user_id == bindparam("me"))
    if state:
        where.append(JOBS.c.state == bindparam("state"))
    if user:
        where.append(JOBS.c.user_id == select(User.id).where(User.name == bindparam("user")).scalar_subquery())
    if since:
        where.append(JOBS.c.created_at >= bindparam("since", type_=UTCDateTime()))
    if slurm_job_id:
        where.append(JOBS.c.slurm_job_id == bindparam("slurm_job_id", type_=Integer()))
    if id_prefix:  # hex only (checked by the controller): no LIKE wildcards in it but the trailing %
        where.append(JOBS.c.id.like(bindparam("id_prefix")))
    count = count_query(select(JOBS.c.id).where(*where))
    page = (
        _LIST.add_columns(count.scalar_subquery().label("total"))
        .where(*where)
        .limit(bindparam("limit", type_=Integer()))
        .offset(bindparam("offset", type_=Integer()))
    )
    return page, count


async def _list_page(
    database: Database, statements: tuple[AnySelect, AnySelect], values: dict[str, Any], page: Pagination
) -> tuple[list[ListedJob], int | None]:
    """One page of jobs (rows of columns, not ORM objects: Database.rows), and how many match in all."""
    page_query, count = statements
    found = await database.rows(page_query, values)
    rows = [ListedJob(*row[:-1]) for row in found]  # all but the total
    if found:
        return rows, bounded(found[0][-1])
    if page.offset == 0:
        return rows, 0
    return rows, bounded((await database.rows(count, values))[0][0])  # past the end: the count alone


_INSERT_JOB = insert(JOBS)
_INSERT_AUDIT = insert(AUDIT_LOG)


_LIST = (
    select(*(JOBS.c[name] for name in LISTED), User.name.label("owner_name"))
    .join(User, User.id == JOBS.c.user_id)
    .order_by(JOBS.c.created_at.desc(), JOBS.c.id)
)
"""What a list shows (never the scripts), built once: building a statement per call costs more than running it."""


def _sees_all(access: WorkspaceAccess) -> bool:
    """Workspace admins and owners see every job; members their own."""
    return access.allows(Role.ADMIN)


def _may_see(access: WorkspaceAccess, job: TrainingJob) -> bool:
    return _sees_all(access) or job.user_id == access.actor.user_id


async def has_finished(database: Database, job_id: str) -> bool:
    """Whether the job is over (or gone), read in a session of its own: for streams outliving their request."""
    async with database.session(write=False) as session:
        state = await session.scalar(select(TrainingJob.state).where(TrainingJob.id == job_id))
    return state is None or state in FINAL_STATES
