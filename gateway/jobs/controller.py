from __future__ import annotations

import asyncio
from typing import Annotated, Literal
from urllib.parse import quote

from litestar import Controller, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import HeaderParameter, JSONBody, PathParameter, QueryParameter
from litestar.response import Stream

from gateway.db.session import Database
from gateway.dependencies import BEARER, DbSession
from gateway.dependencies import Page as PageParams
from gateway.errors import Forbidden
from gateway.jobs.logs import LogUnreadable, open_owned, tail
from gateway.jobs.logs import follow as follow_log
from gateway.jobs.schemas import JobCreate, JobEventOut, JobLogs, JobOut, TestOnlyOut
from gateway.jobs.service import LISTABLE_STATES, JobService, has_finished
from gateway.schemas import InstantQuery, Page, instant, whole
from gateway.workspaces.deps import CACHED_ACCESS, WORKSPACE_DEPENDENCIES, WS_PATH, Access

JobId = Annotated[str, PathParameter(pattern=whole(r"[0-9a-f]{32}"))]
IdempotencyKey = Annotated[
    str | None, HeaderParameter(name="Idempotency-Key", max_length=128, pattern=whole(r"[A-Za-z0-9._:-]{1,128}"))
]


def provide_jobs(state: State) -> JobService:
    service: JobService = state.jobs
    return service


Jobs = NamedDependency[JobService]


class JobController(Controller):
    path = WS_PATH + "/jobs"
    tags = ["jobs"]
    security = BEARER
    dependencies = {**WORKSPACE_DEPENDENCIES, "jobs": Provide(provide_jobs, sync_to_thread=False)}

    @post(
        "/",
        opt={CACHED_ACCESS: True},  # sbatch checks the account and association again
        responses={200: ResponseSpec(JobOut, description="A retry with the same Idempotency-Key: the job it made")},
    )
    async def submit(
        self,
        access: Access,
        jobs: Jobs,
        data: JSONBody[JobCreate],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[JobOut]:
        """Submit a training job as the caller. Retrying with the same ``Idempotency-Key`` returns the same job."""
        job, created = await jobs.submit(access, data, idempotency_key)
        return Response(JobOut.of(job, access.actor.name), status_code=201 if created else 200)

    @post("/test", status_code=200, operation_id="testJob", summary="When would a job start (sbatch --test-only)")
    async def test_only(self, access: Access, jobs: Jobs, data: JSONBody[JobCreate]) -> TestOnlyOut:
        """``sbatch --test-only`` as the caller: Slurm's answer; nothing is submitted or recorded."""
        return TestOnlyOut(message=await jobs.test_only(access, data))

    @get("/")
    async def list_jobs(
        self,
        access: Access,
        jobs: Jobs,
        page: PageParams,
        # ``state`` is reserved by Litestar (the app state): the query parameter is read into ``status``.
        status: Annotated[
            str | None,
            QueryParameter(
                name="state",
                max_length=32,
                schema_extra={"enum": sorted(LISTABLE_STATES | {s.lower() for s in LISTABLE_STATES})},
            ),
        ] = None,
        user: Annotated[str | None, QueryParameter(max_length=32)] = None,
        since: InstantQuery = None,
        slurm_job_id: Annotated[
            int | None, QueryParameter(ge=1, le=2**31 - 1, description="the job with this Slurm id")
        ] = None,
        id_prefix: Annotated[
            str | None, QueryParameter(pattern=whole(r"[0-9a-f]{4,32}"), description="jobs whose id starts so")
        ] = None,
    ) -> Page[JobOut]:
        rows, total = await jobs.list(
            access,
            page,
            state=status,
            user=user,
            since=instant("since", since),
            slurm_job_id=slurm_job_id,
            id_prefix=id_prefix,
        )
        return Page([JobOut.of(job, job.owner_name) for job in rows], total, page.limit, page.offset)

    @get("/{job_id:str}")
    async def get_job(self, db_session: DbSession, access: Access, jobs: Jobs, job_id: JobId) -> JobOut:
        job = await jobs.get(db_session, access, job_id)
        return JobOut.of(job, await jobs.owner_name(db_session, job))

    @post("/{job_id:str}/cancel", status_code=202, operation_id="cancelJob", summary="Cancel a job")
    async def cancel(self, db_session: DbSession, access: Access, jobs: Jobs, job_id: JobId) -> JobOut:
        """``scancel`` as the job's owner; its state follows once the poller has seen Slurm act."""
        return await _control(db_session, access, jobs, job_id, "cancel")

    @post("/{job_id:str}/hold", status_code=202, operation_id="holdJob", summary="Hold a pending job")
    async def hold(self, db_session: DbSession, access: Access, jobs: Jobs, job_id: JobId) -> JobOut:
        """``scontrol hold``: the job stays pending until released."""
        return await _control(db_session, access, jobs, job_id, "hold")

    @post("/{job_id:str}/release", status_code=202, operation_id="releaseJob", summary="Release a held job")
    async def release(self, db_session: DbSession, access: Access, jobs: Jobs, job_id: JobId) -> JobOut:
        """``scontrol release``: a held job may be scheduled again."""
        return await _control(db_session, access, jobs, job_id, "release")

    @get("/{job_id:str}/events")
    async def events(self, db_session: DbSession, access: Access, jobs: Jobs, job_id: JobId) -> list[JobEventOut]:
        """The job's state changes, the cancel, hold and release requests (who, when) and what its stage-in
        reported, oldest first."""
        return [
            JobEventOut(
                id=e.id,
                old_state=e.old_state,
                new_state=e.new_state,
                reason=e.reason,
                at=e.at,
                kind=e.kind,
                actor=e.actor,
            )
            for e in await jobs.history(db_session, access, job_id)
        ]

    @get(
        "/{job_id:str}/logs",
        responses={200: ResponseSpec(JobLogs, description="JSON lines; text/plain as they come with follow=true")},
    )
    async def logs(
        self,
        db_session: DbSession,
        access: Access,
        jobs: Jobs,
        state: State,
        job_id: JobId,
        lines: Annotated[int, QueryParameter(ge=1, le=10_000)] = 100,
        follow: Annotated[bool, QueryParameter(description="stream text/plain until the job ends")] = False,
        stream: Annotated[Literal["stdout", "stderr"], QueryParameter()] = "stdout",
        # (schema_extra: Litestar leaves a bound of 0 out of the document)
        task: Annotated[
            int | None, QueryParameter(ge=0, description="an array's task", schema_extra={"minimum": 0})
        ] = None,
    ) -> Response[JobLogs] | Stream:
        """The last ``lines`` lines of the job's output; with ``follow``, then everything it writes until it ends.

        The file is opened as the job's user and must be a regular file (403 otherwise): the answer tells only
        what that user could see for themselves.
        """
        source = await jobs.log_file(db_session, access, job_id, stream, task)
        try:
            if not follow:
                return Response(
                    JobLogs(path=source.path, lines=await asyncio.to_thread(tail, source.path, source.uid, lines))
                )
            opened = await asyncio.to_thread(open_owned, source.path, source.uid)  # a refusal: a 403, not a cut
        except LogUnreadable as exc:
            raise Forbidden(str(exc), field="stdout" if stream == "stdout" else "stderr") from exc
        database: Database = state.database

        async def finished() -> bool:
            return await has_finished(database, source.job_id)

        return Stream(
            follow_log(source.path, source.uid, lines, finished, opened=opened),
            media_type="text/plain",  # (Litestar adds the charset)
            headers={"X-Log-Path": quote(source.path), "Cache-Control": "no-store"},
        )


async def _control(db_session: DbSession, access: Access, jobs: JobService, job_id: str, action: str) -> JobOut:
    job = await jobs.control(db_session, access, job_id, action)
    return JobOut.of(job, await jobs.owner_name(db_session, job))
