"""Environments: create, start, stop, restart, delete; what their sessions' supervisors report.

A start is a Slurm job made through the one submission path (JobService.submit, kind ``environment``) and
followed by the one poller. Nothing lost, nothing twice: a start first names its job (a compare-and-set of
``current_job_id`` with the session's row, committed), then submits it under that id; two starts racing cannot
both get past the first step, and a crash between the steps leaves a session without a job, which shows as
failed and may be started again. The state shown is derived (gateway.environments.state), never stored.
"""

from __future__ import annotations

import asyncio
import pwd
import shlex
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import structlog
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from gateway.accounts.models import User
from gateway.accounts.ssh_keys import authorized_keys
from gateway.actor import Actor
from gateway.audit.writer import record
from gateway.billing.service import check_can_start
from gateway.config import Settings
from gateway.db.base import utcnow
from gateway.db.session import Database
from gateway.environments import hub, ports, tokens
from gateway.environments.models import Environment, EnvironmentEvent, EnvironmentSession, PortMapping
from gateway.environments.schemas import (
    CallbackIn,
    CallbackOut,
    EnvironmentCreate,
    EnvironmentEventOut,
    EnvironmentOut,
    EnvironmentPatch,
    EnvironmentSpec,
    HubLaunch,
    PortMappingOut,
    SessionOut,
    SshAccess,
    spec_dict,
)
from gateway.environments.state import Derived, derive, is_active
from gateway.environments.states import STATES
from gateway.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized
from gateway.jobs.models import ENVIRONMENT, STAGE_IN_EVENT, JobEvent, TrainingJob, new_job_id
from gateway.jobs.schemas import JobCreate
from gateway.jobs.service import FINAL_STATES, JobService, SlurmDown
from gateway.schemas import Pagination
from gateway.workspaces.access import WorkspaceAccess
from gateway.workspaces.models import Member, Role, Workspace
from slurm.errors import SlurmError, SlurmUnavailable

log = structlog.get_logger("gateway.environments")

STOP_WAIT_SECONDS = 60.0
"""How long a restart waits for Slurm to end the old session before it starts the new one."""
UNSUBMITTED_GRACE = timedelta(minutes=5)
"""A session whose job row was never written (the gateway died between naming and submitting it) counts as
being started for this long, then as failed."""


def supervisor_path(settings: Settings) -> str:
    """``remotegpu-session`` as the nodes run it: the setting, else the one beside this Python."""
    return settings.session_supervisor or str(Path(sys.executable).parent / "remotegpu-session")


class Paths(msgspec.Struct, frozen=True):
    """Where an environment keeps what outlives its sessions, under its owner's home directory."""

    state: str
    """Per environment: the supervisor's files (sshd's host key, its config, the session logs)."""
    code: str
    """Per user and workspace: ``/gemini/code``."""
    output: str
    """Per environment: ``/gemini/output``."""

    @classmethod
    def of(cls, home: str, workspace: str, environment_id: str) -> Paths:
        state = f"{home}/.remotegpu/environments/{environment_id}"
        return cls(state=state, code=f"{home}/remotegpu/code/{workspace}", output=f"{state}/output")


def tensorboard_prefix(workspace: str, environment_id: str) -> str:
    return f"/api/v1/workspaces/{workspace}/environments/{environment_id}/tensorboard"


def session_script(spec: EnvironmentSpec, paths: Paths, supervisor: str, gateway_url: str, prefix: str) -> str:
    """The session job's script body (after the /gemini layout lines): its directories, its log, the supervisor."""
    services = list(spec.services)  # JupyterLab: run when the start came from the hub (its variables are set)
    log_file = f"{paths.state}/session-$SLURM_JOB_ID.log"
    argv = [supervisor, "--gateway", gateway_url, "--services", ",".join(services), "--state-dir", paths.state]
    if "tensorboard" in services:
        argv += ["--tensorboard-logdir", spec.tensorboard_logdir or paths.output, "--tensorboard-prefix", prefix]
    if spec.env:  # what an SSH login sees besides the job's own SLURM_*, GEMINI_* and GPU variables
        argv += ["--pass-env", ",".join(sorted(spec.env))]
    dirs = " ".join(shlex.quote(d) for d in (paths.state, paths.code, paths.output))
    return "\n".join(
        [
            f"mkdir -p -- {dirs} || exit 1",
            f'exec >>{shlex.quote(paths.state)}/"session-$SLURM_JOB_ID.log" 2>&1',
            f'echo "remotegpu: session {log_file.rsplit("/", 1)[-1]} on $(hostname)"',
            "exec " + shlex.join(argv),
            "",
        ]
    )


def job_request(env: Environment, spec: EnvironmentSpec, script: str, paths: Paths, home: str) -> JobCreate:
    """The session's job as the jobs API would take it: one node, the environment's resources."""
    return JobCreate(
        name=f"env-{env.name}"[:64],
        script=script,
        gpus_per_node=spec.gpus,
        gpu_type=spec.gpu_type if spec.gpus else None,
        cpus_per_task=spec.cpus,
        mem_mib=spec.mem_mib,
        time_minutes=spec.time_minutes,
        partition=spec.partition,
        image=spec.image,
        datasets=list(spec.datasets),
        models=list(spec.models),
        env=dict(spec.env),
        code_dir=paths.code,
        output_dir=paths.output,
        work_dir=home,
        stdout="/dev/null",  # the script sends its output to the session log in the state directory (made then)
    )


class Row(msgspec.Struct):
    """An environment with what its view needs: its session, that session's job, its owner."""

    env: Environment
    owner: User
    session: EnvironmentSession | None
    job: TrainingJob | None
    mappings: list[PortMapping]

    def derived(self) -> Derived:
        session, job = self.session, self.job
        if self.env.current_job_id is None or session is None:
            return Derived("stopped")
        if job is None:  # named, not (yet) submitted
            if utcnow() - session.created_at < UNSUBMITTED_GRACE:
                return Derived("pending", "being submitted")
            return Derived("failed", "not submitted: the gateway stopped before submitting it")
        return derive(
            job.state,
            state_unknown=job.state_unknown,
            job_reason=job.reason,
            exit_code=job.exit_code,
            reported_at=session.reported_at,
            stop_requested=session.stop_requested_at is not None,
            stop_requested_by=session.stop_actor,
        )

    def active(self) -> bool:
        if self.env.current_job_id is None or self.session is None:
            return False
        if self.job is None:
            return utcnow() - self.session.created_at < UNSUBMITTED_GRACE
        return is_active(self.job.state)


class EnvironmentService:
    """Environment operations; one per process. It registers the sessions' secrets with the jobs service."""

    def __init__(self, database: Database, settings: Settings, jobs: JobService) -> None:
        self.database = database
        self.settings = settings
        self.jobs = jobs
        self.slurm = jobs.slurm
        self.key = tokens.SessionKey(database)
        self.mapped: list[Callable[[], Awaitable[None]]] = []
        """Called after a callback made port mappings (the relay listens at once instead of at its next look)."""
        self.launching: dict[str, str] = {}
        """Sealed hub variables of the starts this process is submitting (read from the database otherwise: a
        recovery's resubmission)."""
        jobs.secrets[ENVIRONMENT] = self.session_secrets

    async def session_secrets(self, job_id: str) -> Mapping[str, str]:
        """The callback token, and for a start from JupyterHub the single-user server's variables."""
        key = await self.key.get()
        sealed = self.launching.get(job_id)
        if sealed is None:
            sealed = await self.database.run(partial(_hub_env, job_id), write=False)
        return {**(hub.unseal(key, sealed) if sealed else {}), tokens.VARIABLE: tokens.make(key, job_id)}

    # --- reading ---------------------------------------------------------------------------------------

    async def _rows(self, session: AsyncSession, query: Any) -> list[Row]:
        found = (await session.execute(query)).all()
        job_ids = [env.current_job_id for env, _ in found if env.current_job_id]
        sessions = {
            s.job_id: s
            for s in await session.scalars(select(EnvironmentSession).where(EnvironmentSession.job_id.in_(job_ids)))
        }
        jobs = {j.id: j for j in await session.scalars(select(TrainingJob).where(TrainingJob.id.in_(job_ids)))}
        mappings: dict[str, list[PortMapping]] = {}
        live = select(PortMapping).where(PortMapping.job_id.in_(job_ids), PortMapping.released_at.is_(None))
        for mapping in await session.scalars(live):
            mappings.setdefault(mapping.job_id, []).append(mapping)
        return [
            Row(
                env=env,
                owner=owner,
                session=sessions.get(env.current_job_id or ""),
                job=jobs.get(env.current_job_id or ""),
                mappings=mappings.get(env.current_job_id or "", []),
            )
            for env, owner in found
        ]

    def _visible(self, access: WorkspaceAccess) -> Any:
        query = (
            select(Environment, User)
            .join(User, User.id == Environment.user_id)
            .where(Environment.workspace_id == access.workspace.id, Environment.deleted_at.is_(None))
        )
        if not access.allows(Role.ADMIN):
            query = query.where(Environment.user_id == access.actor.user_id)
        return query

    async def row(self, session: AsyncSession, access: WorkspaceAccess, environment_id: str) -> Row:
        """An environment of this workspace the caller may see (members: their own; admins, owners: all)."""
        access.require(Role.MEMBER)
        found = await self._rows(session, self._visible(access).where(Environment.id == environment_id))
        if not found:
            raise NotFound(f"environment {environment_id!r} not found", field="id")
        return found[0]

    async def search(
        self,
        session: AsyncSession,
        access: WorkspaceAccess,
        page: Pagination,
        *,
        state: str | None = None,
        user: str | None = None,
        name: str | None = None,
    ) -> tuple[list[Row], int]:
        """The environments the caller may see, newest first; the state filter is on the derived state."""
        access.require(Role.MEMBER)
        if state is not None and state not in STATES:
            raise InvalidInput(f"unknown state {state!r}: one of {', '.join(STATES)}", field="state")
        query = self._visible(access).order_by(Environment.created_at.desc(), Environment.id)
        if user is not None:
            query = query.where(User.name == user)
        if name is not None:
            query = query.where(Environment.name == name)
        rows = await self._rows(session, query)
        if state is not None:
            rows = [r for r in rows if r.derived().state == state]
        return rows[page.offset : page.offset + page.limit], len(rows)

    def view(self, row: Row, access: WorkspaceAccess) -> EnvironmentOut:
        derived = row.derived()
        env, job, session = row.env, row.job, row.session
        ssh = None
        tensorboard = None
        if derived.state == "running":
            mapping = next((m for m in row.mappings if m.service == "ssh"), None)
            if mapping is not None:
                ssh = self._ssh_access(env, row.owner, mapping.public_port)
            if session is not None and "tensorboard" in session.services:
                tensorboard = self.settings.gateway_url + tensorboard_prefix(access.workspace.slug, env.id) + "/"
        return EnvironmentOut(
            id=env.id,
            name=env.name,
            description=env.description,
            user=row.owner.name,
            state=derived.state,  # type: ignore[arg-type]
            reason=derived.reason,
            spec=msgspec.convert(env.spec, EnvironmentSpec),
            starts=env.starts,
            session=None
            if session is None
            else SessionOut(
                job_id=session.job_id,
                number=session.number,
                slurm_job_id=job.slurm_job_id if job else None,
                slurm_state=job.state if job else "SUBMITTING",
                node=session.node or (job.nodes[0] if job and job.nodes else None),
                host=session.host,
                hub=session.hub_env is not None,
                started_at=job.started_at if job else None,
                ended_at=job.ended_at if job else None,
                reported_at=session.reported_at,
            ),
            ssh=ssh,
            tensorboard_url=tensorboard,
            jupyterlab_url=self._jupyterlab_url(row, access, derived.state),
            created_at=env.created_at,
            updated_at=env.updated_at,
        )

    def _jupyterlab_url(self, row: Row, access: WorkspaceAccess, state: str) -> str | None:
        """The environment's named server on the hub: open while the hub's session runs, else its spawn page
        (which starts it there with the environment's settings, in this workspace)."""
        hub_url = self.settings.jupyterhub_url
        if hub_url is None or "jupyterlab" not in row.env.spec.get("services", ()):
            return None
        base, user, name = hub_url.rstrip("/"), row.owner.name, row.env.name
        if state == "running" and row.session is not None and row.session.hub_env is not None:
            return f"{base}/user/{user}/{name}/"
        return f"{base}/hub/spawn/{user}/{name}?workspace={access.workspace.slug}"

    def _ssh_access(self, env: Environment, owner: User, port: int) -> SshAccess:
        host = self.settings.ssh_host or urlsplit(self.settings.gateway_url).hostname or "localhost"
        user = owner.posix_name or owner.name
        alias = f"rgpu-{env.name}"
        return SshAccess(
            host=host,
            port=port,
            user=user,
            command=f"ssh -p {port} {user}@{host}",
            # the host key is the environment's whatever its port (a released port may come to another one)
            config=(
                f"Host {alias}\n    HostName {host}\n    Port {port}\n    User {user}\n"
                f"    HostKeyAlias remotegpu-env-{env.id}\n"
            ),
        )

    # --- changing ----------------------------------------------------------------------------------------

    async def _manageable(self, session: AsyncSession, access: WorkspaceAccess, environment_id: str) -> Row:
        row = await self.row(session, access, environment_id)
        if row.env.user_id != access.actor.user_id and not access.allows(Role.ADMIN):
            raise Forbidden("only its owner and workspace admins manage an environment")
        return row

    def _event(
        self, session: AsyncSession, env: Environment, kind: str, actor: str | None, message: str | None = None
    ) -> None:
        session.add(
            EnvironmentEvent(
                environment_id=env.id, kind=kind, actor=actor, message=message, job_id=env.current_job_id, at=utcnow()
            )
        )

    async def create(self, session: AsyncSession, access: WorkspaceAccess, data: EnvironmentCreate) -> Row:
        access.require(Role.MEMBER)
        _check_workspace(access)
        if access.actor.user_id is None or access.actor.posix_name is None:
            raise Forbidden("environments belong to users with a POSIX account")
        spec = EnvironmentSpec(**{f: getattr(data, f) for f in EnvironmentSpec.__struct_fields__})
        _check_spec(spec, self.jobs)
        if data.start:  # refused before it is made (the start checks again, under the workspace's lock)
            await self._check_concurrency(session, access, None)
        env = Environment(
            workspace_id=access.workspace.id,
            user_id=access.actor.user_id,
            name=data.name,
            description=data.description,
            spec=spec_dict(spec),
        )
        session.add(env)
        try:
            await session.flush()
        except IntegrityError:
            await session.rollback()
            raise Conflict(f"you already have an environment named {data.name!r} here", field="name") from None
        self._event(session, env, "created", access.actor.name)
        record(
            session,
            access.actor,
            "environment.create",
            target_type="environment",
            target=env.id,
            workspace_id=access.workspace.id,
            details={"name": env.name},
        )
        await session.commit()
        if not data.start:
            return await self.row(session, access, env.id)
        try:
            return await self._start(session, access, env.id)
        except InvalidInput:  # Slurm refused its first start: it is not made (a retry must not meet its name)
            await session.execute(update(Environment).where(Environment.id == env.id).values(deleted_at=utcnow()))
            self._event(session, env, "deleted", access.actor.name, "its first start was refused by Slurm")
            await session.commit()
            raise

    async def patch(
        self, session: AsyncSession, access: WorkspaceAccess, environment_id: str, data: EnvironmentPatch
    ) -> Row:
        row = await self._manageable(session, access, environment_id)
        env = row.env
        changes = {f: v for f in data.__struct_fields__ if (v := getattr(data, f)) is not msgspec.UNSET}
        if "name" in changes:
            env.name = changes.pop("name")
        if "description" in changes:
            env.description = changes.pop("description")
        if changes:
            try:
                spec = msgspec.convert({**env.spec, **changes}, EnvironmentSpec)
            except msgspec.ValidationError as exc:
                raise InvalidInput(str(exc), field="spec") from exc
            _check_spec(spec, self.jobs)
            env.spec = spec_dict(spec)
        env.updated_at = utcnow()
        try:
            await session.flush()
        except IntegrityError:
            name = env.name  # (a rollback expires what the session holds)
            await session.rollback()
            raise Conflict(f"an environment named {name!r} exists already", field="name") from None
        record(
            session,
            access.actor,
            "environment.update",
            target_type="environment",
            target=env.id,
            workspace_id=access.workspace.id,
            details={"fields": sorted(changes)},
        )
        await session.commit()
        return await self.row(session, access, environment_id)

    async def start(
        self, session: AsyncSession, access: WorkspaceAccess, environment_id: str, launch: HubLaunch | None = None
    ) -> Row:
        """Start a stopped (or failed) environment: a new session on a new allocation with its settings.

        ``launch``: a start from JupyterHub; the session runs the hub's single-user server too. Settings the
        workspace's quota or Slurm refuse are a conflict here (409: the request is fine, the stored settings are
        not; PATCH them), where a create's are its own body's (400)."""
        if launch is not None and (problem := hub.problems(launch.env)) is not None:
            raise InvalidInput(problem, field="jupyterhub.env")  # the body's own: 400
        try:
            return await self._start(session, access, environment_id, launch)
        except InvalidInput as exc:
            raise Conflict(exc.detail, field=exc.errors[0].field if exc.errors else None) from exc

    async def _start(
        self, session: AsyncSession, access: WorkspaceAccess, environment_id: str, launch: HubLaunch | None = None
    ) -> Row:
        key = ""
        if launch is not None:
            # the key may be made now (a write): the request's transaction (the workspace's access was read in it)
            # ends first, as SQLite takes its write lock at BEGIN
            await session.commit()
            key = await self.key.get()
        row = await self._manageable(session, access, environment_id)
        _check_workspace(access)
        if row.active():
            raise Conflict(f"environment {row.env.name!r} is {row.derived().state} already", field="state")
        env, owner = row.env, row.owner
        self._check_launch(env, launch)
        sealed = hub.seal(key, launch.env) if launch is not None else None
        owner_access = await self._owner_access(session, access, owner)
        await self._check_concurrency(session, access, env)
        old, job_id, number = env.current_job_id, new_job_id(), env.starts + 1
        named = await session.execute(
            update(Environment)
            .where(Environment.id == env.id, _same(Environment.current_job_id, old))
            .values(current_job_id=job_id, starts=number, updated_at=utcnow())
        )
        if named.rowcount != 1:  # type: ignore[attr-defined]
            name = env.name  # (a rollback expires what the session holds)
            await session.rollback()
            raise Conflict(f"environment {name!r} is being started by another request", field="state")
        session.add(
            EnvironmentSession(job_id=job_id, environment_id=env.id, number=number, created_at=utcnow(), hub_env=sealed)
        )
        session.add(
            EnvironmentEvent(
                environment_id=env.id,
                kind="start",
                actor=access.actor.name,
                job_id=job_id,
                message=f"session {number}",
                at=utcnow(),
            )
        )
        record(
            session,
            access.actor,
            "environment.start",
            target_type="environment",
            target=env.id,
            workspace_id=access.workspace.id,
            details={"job_id": job_id, "session": number, "jupyterhub": launch is not None},
        )
        await session.commit()
        spec = msgspec.convert(env.spec, EnvironmentSpec)
        home = _home(owner)
        paths = Paths.of(home, access.workspace.slug, env.id)
        script = session_script(
            spec,
            paths,
            supervisor_path(self.settings),
            self.settings.gateway_url,
            tensorboard_prefix(access.workspace.slug, env.id),
        )
        if sealed is not None:
            self.launching[job_id] = sealed
        try:
            await self.jobs.submit(
                owner_access, job_request(env, spec, script, paths, home), None, kind=ENVIRONMENT, job_id=job_id
            )
        finally:
            self.launching.pop(job_id, None)
        return await self.row(session, access, environment_id)

    def _check_launch(self, env: Environment, launch: HubLaunch | None) -> None:
        """A start from the hub needs JupyterLab among the services; a JupyterLab-only environment starts from
        the hub only."""
        services = set(env.spec.get("services", ()))
        if launch is None:
            if services == {"jupyterlab"}:
                where = f" at {self.settings.jupyterhub_url}" if self.settings.jupyterhub_url else ""
                raise Conflict(
                    f"environment {env.name!r} runs JupyterLab only: start it from JupyterHub{where}", field="services"
                )
            return
        if "jupyterlab" not in services:
            raise Conflict(f"environment {env.name!r} has no JupyterLab: add it to its services", field="services")

    async def _owner_access(self, session: AsyncSession, access: WorkspaceAccess, owner: User) -> WorkspaceAccess:
        """The workspace as the environment's owner acts in it: sessions run as them, whoever starts one."""
        if owner.id == access.actor.user_id:
            return access
        role = await session.scalar(
            select(Member.role).where(
                Member.workspace_id == access.workspace.id, Member.user_id == owner.id, Member.deleted_at.is_(None)
            )
        )
        if role is None:
            raise Conflict(f"{owner.name} is no longer a member of this workspace", field="user")
        actor = Actor(name=owner.name, user_id=owner.id, posix_name=owner.posix_name)
        return WorkspaceAccess(workspace=access.workspace, role=role, actor=actor)

    async def _check_concurrency(self, session: AsyncSession, access: WorkspaceAccess, env: Environment | None) -> None:
        """The workspace's ``concurrent_environments`` quota, counted under a lock on the workspace's row
        (PostgreSQL; SQLite's write lock is taken at BEGIN), so that two starts cannot both take the last one."""
        quota = access.workspace.quota
        limit = quota.concurrent_environments if quota is not None else None
        if limit is None:
            return
        await session.execute(select(Workspace.id).where(Workspace.id == access.workspace.id).with_for_update())
        others = self._visible_all(access.workspace.id)
        if env is not None:
            others = others.where(Environment.id != env.id)
        running = sum(1 for r in await self._rows(session, others) if r.active())
        if running >= limit:
            raise Conflict(
                f"the workspace's quota of {limit} concurrent environments is reached: stop one first",
                field="concurrent_environments",
            )

    @staticmethod
    def _visible_all(workspace_id: int) -> Any:
        return (
            select(Environment, User)
            .join(User, User.id == Environment.user_id)
            .where(
                Environment.workspace_id == workspace_id,
                Environment.deleted_at.is_(None),
                Environment.current_job_id.is_not(None),
            )
        )

    async def stop(self, session: AsyncSession, access: WorkspaceAccess, environment_id: str) -> Row:
        """scancel the session as its owner; the state is ``stopping`` until the poller sees the job end."""
        row = await self._manageable(session, access, environment_id)
        if not row.active():
            raise Conflict(f"environment {row.env.name!r} is {row.derived().state}: nothing to stop", field="state")
        await self._cancel(session, access, row, "stop")
        await session.commit()
        return await self.row(session, access, environment_id)

    async def _cancel(self, session: AsyncSession, access: WorkspaceAccess, row: Row, kind: str) -> None:
        assert row.session is not None
        job = row.job
        if job is None or job.slurm_job_id is None:
            raise Conflict(f"environment {row.env.name!r} is still being submitted: try again shortly", field="state")
        try:
            await self.slurm.cancel(job.slurm_job_id, user=row.owner.posix_name or row.owner.name)
        except SlurmUnavailable as exc:
            raise SlurmDown(exc.message) from exc
        except SlurmError as exc:
            if "already completing or completed" not in exc.message.lower():
                raise Conflict(f"Slurm refused to stop the session: {exc.message}", field="state") from exc
        row.session.stop_requested_at, row.session.stop_actor = utcnow(), access.actor.name
        self._event(session, row.env, kind, access.actor.name)
        record(
            session,
            access.actor,
            f"environment.{kind}",
            target_type="environment",
            target=row.env.id,
            workspace_id=access.workspace.id,
            details={"job_id": job.id},
        )

    async def restart(
        self, session: AsyncSession, access: WorkspaceAccess, environment_id: str, launch: HubLaunch | None = None
    ) -> Row:
        """Stop the session, wait for Slurm to end it (its GPUs free), start a new one with the settings."""
        row = await self._manageable(session, access, environment_id)
        self._check_launch(row.env, launch)  # refused before the old session is stopped
        if row.active():
            await self._cancel(session, access, row, "restart")
            await session.commit()
            assert row.job is not None and row.job.slurm_job_id is not None
            if not await self._ended(row.job.slurm_job_id, row.job.id):
                raise Conflict("the old session has not ended yet: start it again once it has", field="state")
            await self.jobs.refresh(session, row.job)  # its end, now rather than at the poller's next cycle
            await session.commit()
        return await self.start(session, access, environment_id, launch)

    async def _ended(self, slurm_job_id: int, job_id: str) -> bool:
        """Whether Slurm ends the job within STOP_WAIT_SECONDS (asked once a second: a user's restart only)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_WAIT_SECONDS
        while loop.time() < deadline:
            try:
                entries = await self.slurm.job(slurm_job_id)
            except SlurmError:
                entries = []
            mine = [e for e in entries if job_id in e.comment]
            if not mine or all(e.state.is_terminal for e in mine):
                return True
            await asyncio.sleep(1.0)
        return False

    async def delete(self, session: AsyncSession, access: WorkspaceAccess, environment_id: str) -> None:
        """Stop it if it runs, release its ports, hide it; its code directory stays (it is the user's)."""
        row = await self._manageable(session, access, environment_id)
        if row.active():
            await self._cancel(session, access, row, "stop")
        row.env.deleted_at = utcnow()
        await session.flush()
        if row.env.current_job_id is not None:
            await session.run_sync(ports.release_for_job, row.env.current_job_id, "environment deleted")
        self._event(session, row.env, "deleted", access.actor.name)
        record(
            session,
            access.actor,
            "environment.delete",
            target_type="environment",
            target=row.env.id,
            workspace_id=access.workspace.id,
        )
        await session.commit()

    # --- ports and events -------------------------------------------------------------------------------

    async def ports(self, session: AsyncSession, access: WorkspaceAccess, environment_id: str) -> list[PortMappingOut]:
        row = await self.row(session, access, environment_id)
        found = await session.scalars(
            select(PortMapping)
            .where(PortMapping.environment_id == row.env.id)
            .order_by(PortMapping.released_at.is_not(None), PortMapping.id.desc())
            .limit(100)
        )
        return [_mapping_out(m) for m in found]

    async def remap(self, session: AsyncSession, access: WorkspaceAccess, environment_id: str) -> list[PortMappingOut]:
        """Map the running session's services again where their ports were released (idle, say)."""
        row = await self._manageable(session, access, environment_id)
        if row.derived().state != "running" or row.session is None or row.session.host is None:
            raise Conflict(f"environment {row.env.name!r} is {row.derived().state}: nothing to map", field="state")
        await session.commit()
        await self.database.run(partial(_swap, self._map, row.session.job_id))
        await self._notify()
        return await self.ports(session, access, environment_id)

    def _map(self, session: Session, job_id: str) -> None:
        """Unit of work: a live mapping for each mapped service of the session (sshd only: TensorBoard is
        behind the gateway's own authentication)."""
        found = session.get_one(EnvironmentSession, job_id)
        for service, port in found.services.items():
            if service != "ssh":
                continue
            ports.map_service(
                session,
                environment_id=found.environment_id,
                job_id=job_id,
                service=service,
                node=found.node,
                host=found.host or "",
                node_port=int(port),
                auto_release_hours=self.settings.port_auto_release_hours,
                port_range=(self.settings.port_range_start, self.settings.port_range_end),
            )

    async def _notify(self) -> None:
        for listener in self.mapped:
            try:
                await listener()
            except Exception:  # the relay's own periodic look catches up
                log.exception("relay_notify_failed")

    async def events(
        self, session: AsyncSession, access: WorkspaceAccess, environment_id: str
    ) -> list[EnvironmentEventOut]:
        """The environment's own events and its sessions' state changes, oldest first."""
        row = await self.row(session, access, environment_id)
        own = await session.scalars(
            select(EnvironmentEvent).where(EnvironmentEvent.environment_id == row.env.id).order_by(EnvironmentEvent.id)
        )
        out = [
            EnvironmentEventOut(id=f"e{e.id}", at=e.at, kind=e.kind, message=e.message, actor=e.actor, job_id=e.job_id)
            for e in own
        ]
        sessions = select(EnvironmentSession.job_id).where(EnvironmentSession.environment_id == row.env.id)
        changes = await session.scalars(
            select(JobEvent)
            .where(JobEvent.job_id.in_(sessions), JobEvent.kind.in_(("state", STAGE_IN_EVENT)))
            .order_by(JobEvent.id)
        )
        out += [
            EnvironmentEventOut(
                id=f"j{e.id}",
                at=e.at,
                kind="session_state" if e.kind == "state" else "stage_in",
                message=(
                    f"{e.old_state} -> {e.new_state}" + (f" ({e.reason})" if e.reason else "")
                    if e.kind == "state"
                    else e.reason or ""
                ),
                actor=None,
                job_id=e.job_id,
            )
            for e in changes
        ]
        return sorted(out, key=lambda e: e.at)

    # --- the supervisor's callback ----------------------------------------------------------------------

    async def callback(self, session: AsyncSession, token: str, peer: str, data: CallbackIn) -> CallbackOut:
        """A session's supervisor says where its services listen: once, while its job runs, from its node.

        The relay's target is the address the call came from (not what the body says): a job cannot point a
        public port at another host. A wrong, replayed or expired token is a 401 that tells nothing more.
        """
        job_id = tokens.verified_job_id(await self.key.get(), token)
        refused = Unauthorized("invalid, used or expired session token")
        if job_id is None:
            raise refused
        found = await session.get(EnvironmentSession, job_id, with_for_update=True)
        job = await session.get(TrainingJob, job_id)
        env = await session.get(Environment, found.environment_id) if found is not None else None
        if found is None or job is None or env is None or env.deleted_at is not None:
            raise refused
        if found.reported_at is not None or job.state in FINAL_STATES or env.current_job_id != job_id:
            raise refused
        # everything in one transaction, committed just before the answer: a failure on the way spends nothing
        # (the supervisor retries 5xx answers), and the token is spent by the commit that answers it
        keys = await authorized_keys(session, env.user_id)
        spent = await session.execute(
            update(EnvironmentSession)
            .where(EnvironmentSession.job_id == job_id, EnvironmentSession.reported_at.is_(None))
            .values(reported_at=utcnow(), node=data.node, host=peer, services=dict(data.services))
        )
        if spent.rowcount != 1:  # type: ignore[attr-defined]
            raise refused
        message = f"on {data.node}: " + ", ".join(sorted(data.services))
        try:
            await session.run_sync(self._map, job_id)
        except ports.PortsExhausted:
            # the session runs; its SSH port can be asked for again (POST .../ports) once one is free
            message += "; no public port free for SSH (ask again with POST .../ports)"
        session.add(EnvironmentEvent(environment_id=env.id, kind="ready", job_id=job_id, at=utcnow(), message=message))
        await session.commit()
        await self._notify()
        return CallbackOut(authorized_keys=keys)


async def release_ended_sessions(database: Database) -> int:
    """Worker step: the port mappings of sessions whose jobs have ended are released (in one transaction)."""
    return await database.run(_release_ended)


def _release_ended(session: Session) -> int:
    ended = (
        select(PortMapping.job_id)
        .join(TrainingJob, TrainingJob.id == PortMapping.job_id)
        .where(PortMapping.released_at.is_(None), TrainingJob.state.in_(FINAL_STATES))
    )
    released = 0
    for job_id in set(session.scalars(ended)):
        released += len(ports.release_for_job(session, job_id, "session ended"))
    return released


def _hub_env(job_id: str, session: Session) -> str | None:
    return session.scalar(select(EnvironmentSession.hub_env).where(EnvironmentSession.job_id == job_id))


def _swap(fn: Callable[[Session, str], None], job_id: str, session: Session) -> None:
    """``fn(session, job_id)`` as a unit of work (Database.run passes the session last)."""
    fn(session, job_id)


def _same(column: Any, value: str | None) -> Any:
    return column.is_(None) if value is None else column == value


def _home(owner: User) -> str:
    try:
        return pwd.getpwnam(owner.posix_name or "").pw_dir
    except KeyError:
        raise Conflict(f"POSIX account {owner.posix_name!r} does not exist on the cluster", field="user") from None


def _check_workspace(access: WorkspaceAccess) -> None:
    check_can_start(access.workspace, "environment starts")


def _check_spec(spec: EnvironmentSpec, jobs: JobService) -> None:
    if spec.image is not None and jobs.settings.slurm_container_runtime is None:
        raise InvalidInput("this cluster runs no container runtime; remove the image", field="image")
    if spec.gpu_type is not None and not spec.gpus:
        raise InvalidInput("a GPU type without GPUs: give gpus too", field="gpu_type")
    if len(set(spec.services)) != len(spec.services):
        raise InvalidInput("each service at most once", field="services")


def _mapping_out(m: PortMapping) -> PortMappingOut:
    return PortMappingOut(
        id=m.id,
        service=m.service,
        node=m.node,
        node_port=m.node_port,
        public_port=m.public_port,
        created_at=m.created_at,
        last_accessed_at=m.last_accessed_at,
        auto_release_hours=m.auto_release_hours,
        released_at=m.released_at,
        release_reason=m.release_reason,
    )


def rows_view(service: EnvironmentService, rows: Sequence[Row], access: WorkspaceAccess) -> list[EnvironmentOut]:
    return [service.view(r, access) for r in rows]
