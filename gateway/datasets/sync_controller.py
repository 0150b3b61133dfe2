"""Sync tasks through the API: platform admins list, create (manual, or scheduled with ``not_before``), retry and
cancel them under ``/api/v1/sync-tasks``; whoever may read a dataset or model sees its version's replicas and the
progress of its open tasks under ``.../versions/{version}/replicas``. The copying is gateway.datasets.sync's."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from litestar import Controller, get, post
from litestar.params import JSONBody, PathParameter, QueryParameter
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from gateway.actor import Actor
from gateway.audit.writer import record
from gateway.datasets.controller import DatasetIdParam, VersionParam
from gateway.datasets.models import (
    CANCELLED,
    DATASET,
    DONE,
    FAILED,
    FULL,
    INCREMENTAL,
    MANUAL,
    MODEL,
    ONE_WAY,
    QUEUED,
    READY,
    RUNNING,
    SCHEDULED,
    TWO_WAY,
    Dataset,
    DatasetVersion,
    Replica,
    StorageSource,
    SyncTask,
)
from gateway.datasets.schemas import SourceName
from gateway.datasets.service import DatasetService
from gateway.datasets.sync import MAX_ATTEMPTS, OPEN_STATUSES
from gateway.db.base import utcnow
from gateway.db.paging import SelectT, count_rows, page_of
from gateway.dependencies import ADMIN_DEPENDENCIES, BEARER, AppSettings, CurrentActor, DbSession
from gateway.dependencies import Page as PageParams
from gateway.errors import Conflict, InvalidInput, NotFound
from gateway.schemas import Page, Pagination, whole
from gateway.workspaces.access import WorkspaceAccess
from gateway.workspaces.deps import WORKSPACE_DEPENDENCIES, WS_PATH, Access
from gateway.workspaces.models import Workspace

MAX_ID = 2**31 - 1
TaskId = Annotated[int, msgspec.Meta(ge=1, le=MAX_ID)]
Number = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
DatasetId = Annotated[str, msgspec.Meta(pattern=whole(r"[0-9a-f]{32}"), description="a dataset's or model's id")]
Status = Literal["queued", "running", "done", "failed", "cancelled"]
Kind = Literal["dataset", "model"]
Mode = Literal["full", "incremental"]
Direction = Literal["one-way", "two-way"]
Instant = Annotated[datetime, msgspec.Meta(tz=True, description="an RFC 3339 date-time with its offset")]


class SyncTaskCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Copy a ready version to the store ``target``: name the version by ``version_id``, or by ``dataset_id`` and
    ``version`` (``kind`` says whether it is a dataset or a model; either when left out). ``source``: where it is
    read from (default: its primary store, or another ready replica). ``not_before``: a scheduled task, run once
    that time has come. ``two-way``: also a task back from the target to the source (incremental only: each
    direction copies what its target lacks)."""

    json_schema_rules: ClassVar[dict[str, Any]] = {
        "oneOf": [
            {
                "required": ["version_id"],
                "properties": {"dataset_id": {"type": "null"}, "version": {"type": "null"}, "kind": {"type": "null"}},
            },
            {"required": ["dataset_id", "version"], "properties": {"version_id": {"type": "null"}}},
        ],
        "not": {
            "required": ["direction", "mode"],
            "properties": {"direction": {"const": TWO_WAY}, "mode": {"const": FULL}},
        },
    }

    target: SourceName
    version_id: TaskId | None = None
    kind: Kind | None = None
    dataset_id: DatasetId | None = None
    version: Number | None = None
    source: SourceName | None = None
    mode: Mode = "incremental"
    direction: Direction = "one-way"
    not_before: Instant | None = None


class SyncTaskOut(msgspec.Struct, kw_only=True):
    id: int
    kind: Kind
    dataset_id: str
    workspace: str
    version: int
    version_id: int
    source: str
    target: str
    policy: Literal["realtime", "scheduled", "manual"]
    direction: Direction
    mode: Mode
    status: Status
    paired_task_id: int | None
    """The other direction's task of a two-way sync."""
    attempts: int
    max_attempts: int
    not_before: datetime | None
    next_attempt_at: datetime
    lease_owner: str | None
    """The worker running it (while running)."""
    lease_until: datetime | None
    objects_total: int
    objects_done: int
    """Files the target holds as the manifest says (copied, or found in place)."""
    objects_copied: int
    bytes_total: int
    bytes_done: int
    bytes_copied: int
    bytes_per_second: float | None
    last_error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class ReplicaOut(msgspec.Struct, kw_only=True):
    source: str
    status: Literal["uploading", "syncing", "ready", "error"]
    bytes: int
    synced_at: datetime | None


class SyncProgressOut(msgspec.Struct, kw_only=True):
    """An open sync task of the version, as its readers see it."""

    id: int
    source: str
    target: str
    policy: Literal["realtime", "scheduled", "manual"]
    mode: Mode
    status: Status
    attempts: int
    next_attempt_at: datetime
    objects_total: int
    objects_done: int
    bytes_total: int
    bytes_done: int
    bytes_per_second: float | None


class VersionReplicasOut(msgspec.Struct, kw_only=True):
    version: int
    replicas: list[ReplicaOut]
    tasks: list[SyncProgressOut]
    """Queued and running copies to other stores."""


# --- what the routes do ---------------------------------------------------------------------------------------

_SOURCE = aliased(StorageSource)
_TARGET = aliased(StorageSource)


def _with_names(query: SelectT) -> SelectT:
    return (
        query.join(DatasetVersion, DatasetVersion.id == SyncTask.version_id)
        .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
        .join(Workspace, Workspace.id == Dataset.workspace_id)
        .join(_SOURCE, _SOURCE.id == SyncTask.source_id)
        .join(_TARGET, _TARGET.id == SyncTask.target_id)
    )


_NAMED = _with_names(
    select(SyncTask, Dataset.kind, Dataset.id, Workspace.slug, DatasetVersion.version, _SOURCE.name, _TARGET.name)
)


def _out(row: Any) -> SyncTaskOut:
    task, kind, dataset_id, slug, number, source, target = row
    return SyncTaskOut(
        id=task.id,
        kind=kind,
        dataset_id=dataset_id,
        workspace=slug,
        version=number,
        version_id=task.version_id,
        source=source,
        target=target,
        policy=task.policy,
        direction=task.direction,
        mode=task.mode,
        status=task.status,
        paired_task_id=task.pair_id,
        attempts=task.attempts,
        max_attempts=MAX_ATTEMPTS,
        not_before=task.not_before,
        next_attempt_at=task.next_attempt_at,
        lease_owner=task.lease_owner,
        lease_until=task.lease_until,
        objects_total=task.objects_total,
        objects_done=task.objects_done,
        objects_copied=task.objects_copied,
        bytes_total=task.bytes_total,
        bytes_done=task.bytes_done,
        bytes_copied=task.bytes_copied,
        bytes_per_second=task.bytes_per_second,
        last_error=task.last_error,
        created_at=task.created_at,
        started_at=task.started_at,
        finished_at=task.finished_at,
    )


async def task_out(session: AsyncSession, task_id: int) -> SyncTaskOut:
    row = (await session.execute(_NAMED.where(SyncTask.id == task_id))).one_or_none()
    if row is None:
        raise NotFound(f"no sync task {task_id}", field="task_id")
    return _out(row)


async def list_tasks(
    session: AsyncSession,
    page: Pagination,
    *,
    status: str | None = None,
    version_id: int | None = None,
    dataset_id: str | None = None,
) -> Page[SyncTaskOut]:
    """Newest first."""
    query = _NAMED
    if status is not None:
        query = query.where(SyncTask.status == status)
    if version_id is not None:
        query = query.where(SyncTask.version_id == version_id)
    if dataset_id is not None:
        query = query.where(Dataset.id == dataset_id)
    total = await count_rows(session, query)
    rows = (await session.execute(page_of(query.order_by(SyncTask.id.desc()), page))).all()
    return Page([_out(r) for r in rows], total, page.limit, page.offset)


async def _version_of(session: AsyncSession, data: SyncTaskCreate) -> tuple[Dataset, DatasetVersion]:
    if data.version_id is not None:
        if data.dataset_id is not None or data.version is not None or data.kind is not None:
            raise InvalidInput("give version_id, or dataset_id and version: not both", field="version_id")
        version = await session.get(DatasetVersion, data.version_id)
        if version is None:
            raise NotFound(f"no version {data.version_id}", field="version_id")
        return await session.get_one(Dataset, version.dataset_id), version
    if data.dataset_id is None or data.version is None:
        raise InvalidInput("give version_id, or dataset_id and version", field="dataset_id")
    dataset = await session.get(Dataset, data.dataset_id)
    if dataset is None or dataset.deleted_at is not None or data.kind not in (None, dataset.kind):
        raise NotFound(f"no {data.kind or 'dataset or model'} {data.dataset_id!r}", field="dataset_id")
    found = await session.scalar(
        select(DatasetVersion).where(DatasetVersion.dataset_id == dataset.id, DatasetVersion.version == data.version)
    )
    if found is None:
        raise NotFound(f"no version {data.version} of {dataset.kind} {dataset.id!r}", field="version")
    return dataset, found


async def _source_named(session: AsyncSession, name: str, field: str) -> StorageSource:
    source = await session.scalar(select(StorageSource).where(StorageSource.name == name))
    if source is None:
        raise NotFound(f"no storage source {name!r}", field=field)
    return source


async def _read_from(session: AsyncSession, version: DatasetVersion, target: StorageSource) -> StorageSource:
    """The primary store if its replica is ready, else another store with a ready replica (not the target)."""
    rows = (
        await session.scalars(
            select(StorageSource)
            .join(Replica, Replica.source_id == StorageSource.id)
            .where(Replica.version_id == version.id, Replica.status == READY, StorageSource.id != target.id)
            .order_by(StorageSource.priority, StorageSource.id)
        )
    ).all()
    if not rows:
        raise Conflict("no store but the target holds a ready replica of this version", field="source")
    return next((s for s in rows if s.id == version.primary_source_id), rows[0])


async def create_task(session: AsyncSession, admin: Actor, data: SyncTaskCreate) -> list[SyncTask]:
    """The task (and, for two-way, the one back), queued; audited."""
    if data.direction == TWO_WAY and data.mode == FULL:
        raise InvalidInput("a two-way sync is incremental (each direction copies what its target lacks)", field="mode")
    dataset, version = await _version_of(session, data)
    if version.status != READY:
        raise Conflict(
            f"version {version.version} is {version.status}: only a ready version is copied", field="version"
        )
    target = await _source_named(session, data.target, "target")
    source = (
        await _source_named(session, data.source, "source")
        if data.source is not None
        else await _read_from(session, version, target)
    )
    if source.id == target.id:
        raise Conflict(f"{target.name!r} is both the source and the target", field="target")
    now = utcnow()
    policy = SCHEDULED if data.not_before is not None else MANUAL
    due = max(now, data.not_before) if data.not_before is not None else now
    pairs = [(source, target)] + ([(target, source)] if data.direction == TWO_WAY else [])
    made = [
        SyncTask(
            version_id=version.id,
            source_id=src.id,
            target_id=dst.id,
            policy=policy,
            direction=data.direction,
            mode=data.mode if data.direction == ONE_WAY else INCREMENTAL,
            status=QUEUED,
            attempts=0,
            not_before=data.not_before,
            next_attempt_at=due,
            created_by=admin.user_id,
        )
        for src, dst in pairs
    ]
    session.add_all(made)
    taken = f"a sync of this version to {target.name!r}{' or back' if len(made) > 1 else ''} is queued or running"
    try:
        await session.flush()
    except IntegrityError:
        await session.rollback()  # (which expires what the session loaded: the message was made before)
        raise Conflict(taken, field="target") from None
    if len(made) == 2:
        made[0].pair_id, made[1].pair_id = made[1].id, made[0].id
    for task, (src, dst) in zip(made, pairs, strict=True):
        record(
            session,
            admin,
            "sync_task.create",
            target_type="sync_task",
            target=str(task.id),
            workspace_id=dataset.workspace_id,
            details={
                "version_id": version.id,
                "policy": policy,
                "source": src.name,
                "target": dst.name,
                "mode": task.mode,
                "direction": data.direction,
                "not_before": data.not_before.isoformat() if data.not_before else None,
            },
        )
    await session.commit()
    return made


async def _task(session: AsyncSession, task_id: int) -> SyncTask:
    task = await session.get(SyncTask, task_id, with_for_update=True)
    if task is None:
        raise NotFound(f"no sync task {task_id}", field="task_id")
    return task


async def retry_task(session: AsyncSession, admin: Actor, task_id: int) -> None:
    """A failed or cancelled task queued again with its attempts back to none; a queued one (waiting out its
    backoff or its time) made due now."""
    task = await _task(session, task_id)
    if task.status in (RUNNING, DONE):
        raise Conflict(f"sync task {task_id} is {task.status}: nothing to retry", field="task_id")
    was = task.status
    now = utcnow()
    if task.status != QUEUED:
        task.status, task.attempts, task.finished_at = QUEUED, 0, None
    task.next_attempt_at, task.lease_owner, task.lease_until = now, None, None
    workspace_id = await _workspace_id(session, task.version_id)
    record(session, admin, "sync_task.retry", target_type="sync_task", target=str(task.id),
           workspace_id=workspace_id, details={"from": was})  # fmt: skip
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise Conflict("another sync of this version to the same store is queued or running", field="task_id") from None


async def cancel_task(session: AsyncSession, admin: Actor, task_id: int) -> None:
    """A queued or running task stops (a running one at its worker's next step; its unfinished multipart copies
    are aborted); cancelling a cancelled one again changes nothing."""
    task = await _task(session, task_id)
    if task.status == CANCELLED:
        return
    if task.status in (DONE, FAILED):
        raise Conflict(f"sync task {task_id} is {task.status} already", field="task_id")
    was = task.status
    task.status, task.finished_at, task.lease_until = CANCELLED, utcnow(), None
    workspace_id = await _workspace_id(session, task.version_id)
    record(session, admin, "sync_task.cancel", target_type="sync_task", target=str(task.id),
           workspace_id=workspace_id, details={"from": was})  # fmt: skip
    await session.commit()


async def _workspace_id(session: AsyncSession, version_id: int) -> int | None:
    return await session.scalar(
        select(Dataset.workspace_id)
        .join(DatasetVersion, DatasetVersion.dataset_id == Dataset.id)
        .where(DatasetVersion.id == version_id)
    )


async def version_replicas(
    session: AsyncSession, service: DatasetService, access: WorkspaceAccess, dataset_id: str, number: int
) -> VersionReplicasOut:
    """The version's replicas and open tasks, for whoever may read it (the dataset service's rule: 404 else)."""
    await service.version(session, access, dataset_id, number)
    version_id = await session.scalar(
        select(DatasetVersion.id).where(DatasetVersion.dataset_id == dataset_id, DatasetVersion.version == number)
    )
    replicas = (
        await session.execute(
            select(StorageSource.name, Replica.status, Replica.bytes, Replica.synced_at)
            .join(Replica, Replica.source_id == StorageSource.id)
            .where(Replica.version_id == version_id)
            .order_by(StorageSource.priority, StorageSource.name)
        )
    ).all()
    tasks = [
        _out(row)
        for row in await session.execute(
            _NAMED.where(SyncTask.version_id == version_id, SyncTask.status.in_(OPEN_STATUSES)).order_by(SyncTask.id)
        )
    ]
    return VersionReplicasOut(
        version=number,
        replicas=[ReplicaOut(source=n, status=s, bytes=b, synced_at=at) for n, s, b, at in replicas],  # type: ignore[arg-type]
        tasks=[
            SyncProgressOut(**{field: getattr(t, field) for field in SyncProgressOut.__struct_fields__}) for t in tasks
        ],
    )


# --- routes -------------------------------------------------------------------------------------------------

TaskIdParam = Annotated[int, PathParameter(ge=1, le=MAX_ID)]
StatusQuery = Annotated[Status | None, QueryParameter(description="only tasks in this state")]
VersionIdQuery = Annotated[int | None, QueryParameter(ge=1, le=MAX_ID, description="only this version's tasks")]
DatasetIdQuery = Annotated[
    str | None, QueryParameter(pattern=r"^[0-9a-f]{32}$", max_length=32, description="only this dataset's tasks")
]


class SyncTaskController(Controller):
    """Copies of versions between storage sources (platform admins)."""

    path = "/api/v1/sync-tasks"
    tags = ["storage"]
    security = BEARER
    dependencies = ADMIN_DEPENDENCIES

    @get("/")
    async def list_sync_tasks(
        self,
        db_session: DbSession,
        admin: CurrentActor,
        page: PageParams,
        status: StatusQuery = None,
        version_id: VersionIdQuery = None,
        dataset_id: DatasetIdQuery = None,
    ) -> Page[SyncTaskOut]:
        """Every sync task, newest first, with its progress."""
        del admin  # the dependency checked it
        return await list_tasks(db_session, page, status=status, version_id=version_id, dataset_id=dataset_id)

    @post("/")
    async def create_sync_task(
        self, db_session: DbSession, admin: CurrentActor, data: JSONBody[SyncTaskCreate]
    ) -> SyncTaskOut:
        """A manual copy of a ready version to another store (scheduled with ``not_before``); the worker runs it.
        Two-way: the answer is the task to the target, ``paired_task_id`` the one back."""
        made = await create_task(db_session, admin, data)
        return await task_out(db_session, made[0].id)

    @get("/{task_id:int}")
    async def get_sync_task(self, db_session: DbSession, admin: CurrentActor, task_id: TaskIdParam) -> SyncTaskOut:
        del admin
        return await task_out(db_session, task_id)

    @post("/{task_id:int}/retry", status_code=200)
    async def retry_sync_task(self, db_session: DbSession, admin: CurrentActor, task_id: TaskIdParam) -> SyncTaskOut:
        """Queue a failed or cancelled task again (attempts from zero), or run a waiting one now."""
        await retry_task(db_session, admin, task_id)
        return await task_out(db_session, task_id)

    @post("/{task_id:int}/cancel", status_code=200)
    async def cancel_sync_task(self, db_session: DbSession, admin: CurrentActor, task_id: TaskIdParam) -> SyncTaskOut:
        """Stop a queued or running task (a running one at its worker's next step)."""
        await cancel_task(db_session, admin, task_id)
        return await task_out(db_session, task_id)


class _ReplicaRoutes(Controller):
    """A version's replicas, beside the dataset and model routes (``kind``: which of them)."""

    security = BEARER
    dependencies = WORKSPACE_DEPENDENCIES
    kind: str

    @get("/{dataset_id:str}/versions/{version:int}/replicas")
    async def list_replicas(
        self,
        db_session: DbSession,
        access: Access,
        settings: AppSettings,
        dataset_id: DatasetIdParam,
        version: VersionParam,
    ) -> VersionReplicasOut:
        """Which stores hold the version (status, bytes, when synced) and the progress of its open copies."""
        return await version_replicas(db_session, DatasetService(settings, self.kind), access, dataset_id, version)


class DatasetReplicaController(_ReplicaRoutes):
    path = f"{WS_PATH}/datasets"
    tags = ["datasets"]
    kind = DATASET


class ModelReplicaController(_ReplicaRoutes):
    path = f"{WS_PATH}/models"
    tags = ["models"]
    kind = MODEL


SYNC_CONTROLLERS = (SyncTaskController, DatasetReplicaController, ModelReplicaController)
"""The admin's sync-task routes and each kind's replica routes (gateway.app)."""
