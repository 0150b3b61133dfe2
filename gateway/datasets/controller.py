"""Routes of storage sources (platform admins: gateway.datasets.sources) and of workspaces' datasets and models
(gateway.datasets.service): thin."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.datastructures import State
from litestar.params import JSONBody, PathParameter, QueryParameter

from gateway.config import Settings
from gateway.datasets import sources
from gateway.datasets.models import KINDS
from gateway.datasets.schemas import (
    DatasetCreate,
    DatasetOut,
    DatasetPatch,
    DownloadOut,
    FileOut,
    StorageSourceCreate,
    StorageSourceOut,
    StorageSourcePatch,
    UploadCreate,
    UploadOut,
    VersionCreate,
    VersionOut,
)
from gateway.datasets.service import DatasetService
from gateway.datasets.stagein import StageInService, StageManifest, StageReport
from gateway.dependencies import ADMIN_DEPENDENCIES, BEARER, AppSettings, CurrentActor, DbSession
from gateway.dependencies import Page as PageParams
from gateway.errors import NotFound, Unauthorized
from gateway.schemas import Page
from gateway.workspaces.deps import WORKSPACE_DEPENDENCIES, WS_PATH, Access

SourceNameParam = Annotated[str, PathParameter(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", max_length=63)]


class StorageSourceController(Controller):
    """The S3 stores datasets and models are kept in; their keys go in and never come out."""

    path = "/api/v1/storage-sources"
    tags = ["storage"]
    security = BEARER
    dependencies = ADMIN_DEPENDENCIES

    @get("/")
    async def list_storage_sources(self, db_session: DbSession, admin: CurrentActor) -> list[StorageSourceOut]:
        """Every source, by priority; with each one's last health check."""
        return [StorageSourceOut.of(s) for s in await sources.list_sources(db_session, admin)]

    @post("/")
    async def create_storage_source(
        self, db_session: DbSession, admin: CurrentActor, settings: AppSettings, data: JSONBody[StorageSourceCreate]
    ) -> StorageSourceOut:
        """A new source; its keys are stored encrypted (503 when the gateway has no ``secret_keys``)."""
        return StorageSourceOut.of(await sources.create(db_session, admin, settings, data))

    @get("/{name:str}")
    async def get_storage_source(
        self, db_session: DbSession, admin: CurrentActor, name: SourceNameParam
    ) -> StorageSourceOut:
        return StorageSourceOut.of(await sources.get(db_session, admin, name))

    @patch("/{name:str}")
    async def update_storage_source(
        self,
        db_session: DbSession,
        admin: CurrentActor,
        settings: AppSettings,
        name: SourceNameParam,
        data: JSONBody[StorageSourcePatch],
    ) -> StorageSourceOut:
        """Change what is given; new keys replace the stored ones (and the source is checked again)."""
        return StorageSourceOut.of(await sources.update(db_session, admin, settings, name, data))

    @delete("/{name:str}")
    async def delete_storage_source(self, db_session: DbSession, admin: CurrentActor, name: SourceNameParam) -> None:
        await sources.delete(db_session, admin, name)

    @post("/{name:str}/check")
    async def check_storage_source(
        self, admin: CurrentActor, settings: AppSettings, state: State, name: SourceNameParam
    ) -> StorageSourceOut:
        """Check the source now (a HEAD of its bucket), as the worker does every ``storage_health_interval_seconds``
        (no request session: the check writes its result in a transaction of its own)."""
        del admin  # the dependency checked it
        checked = await sources.check(state.database, settings, only=name)
        if not checked:
            raise NotFound(f"storage source {name!r} not found", field="name")
        return StorageSourceOut.of(checked[0])


DatasetIdParam = Annotated[str, PathParameter(pattern=r"^[0-9a-f]{32}$", max_length=32)]
VersionParam = Annotated[int, PathParameter(ge=1, le=1_000_000)]
UploadIdParam = Annotated[str, PathParameter(pattern=r"^[0-9a-f]{32}$", max_length=32)]
NameQuery = Annotated[str | None, QueryParameter(max_length=64, description="exactly this name")]
PathQuery = Annotated[str, QueryParameter(min_length=1, max_length=1024, description="a file's path in the version")]


class _DatasetRoutes(Controller):
    """The same routes for datasets and models (``service``: which of them)."""

    tags = ["datasets"]
    security = BEARER
    dependencies = WORKSPACE_DEPENDENCIES
    service: DatasetService

    @post("/")
    async def create(self, db_session: DbSession, access: Access, data: JSONBody[DatasetCreate]) -> DatasetOut:
        return await self.service.create(db_session, access, data)

    @get("/")
    async def list_all(
        self, db_session: DbSession, access: Access, page: PageParams, name: NameQuery = None
    ) -> Page[DatasetOut]:
        """The workspace's own and those other workspaces share with it (read-only)."""
        return await self.service.list_page(db_session, access, page, name)

    @get("/{dataset_id:str}")
    async def get_one(self, db_session: DbSession, access: Access, dataset_id: DatasetIdParam) -> DatasetOut:
        return await self.service.get(db_session, access, dataset_id)

    @patch("/{dataset_id:str}")
    async def update(
        self, db_session: DbSession, access: Access, dataset_id: DatasetIdParam, data: JSONBody[DatasetPatch]
    ) -> DatasetOut:
        return await self.service.update(db_session, access, dataset_id, data)

    @delete("/{dataset_id:str}")
    async def remove(self, db_session: DbSession, access: Access, dataset_id: DatasetIdParam) -> None:
        await self.service.delete(db_session, access, dataset_id)

    @post("/{dataset_id:str}/versions")
    async def create_version(
        self, db_session: DbSession, access: Access, dataset_id: DatasetIdParam, data: JSONBody[VersionCreate]
    ) -> VersionOut:
        """A new version to upload files to (one at a time is uploading), in the store routing picks."""
        return await self.service.create_version(db_session, access, dataset_id, data)

    @get("/{dataset_id:str}/versions")
    async def list_versions(
        self, db_session: DbSession, access: Access, dataset_id: DatasetIdParam
    ) -> list[VersionOut]:
        return await self.service.versions(db_session, access, dataset_id)

    @get("/{dataset_id:str}/versions/{version:int}")
    async def get_version(
        self, db_session: DbSession, access: Access, dataset_id: DatasetIdParam, version: VersionParam
    ) -> VersionOut:
        return await self.service.version(db_session, access, dataset_id, version)

    @post("/{dataset_id:str}/versions/{version:int}/finish", status_code=200)
    async def finish_version(
        self, db_session: DbSession, access: Access, dataset_id: DatasetIdParam, version: VersionParam
    ) -> VersionOut:
        """The version is ready and never changes again (no upload may be open)."""
        return await self.service.finish(db_session, access, dataset_id, version)

    @get("/{dataset_id:str}/versions/{version:int}/files")
    async def list_files(
        self, db_session: DbSession, access: Access, dataset_id: DatasetIdParam, version: VersionParam
    ) -> list[FileOut]:
        """The version's manifest: each file's path, size and SHA-256."""
        return await self.service.files(db_session, access, dataset_id, version)

    @delete("/{dataset_id:str}/versions/{version:int}/files")
    async def remove_file(
        self, db_session: DbSession, access: Access, dataset_id: DatasetIdParam, version: VersionParam, path: PathQuery
    ) -> None:
        """A file out of a version still uploading (a ready version never changes)."""
        await self.service.remove_file(db_session, access, dataset_id, version, path)

    @get("/{dataset_id:str}/versions/{version:int}/download-url")
    async def download_url(
        self, db_session: DbSession, access: Access, dataset_id: DatasetIdParam, version: VersionParam, path: PathQuery
    ) -> DownloadOut:
        """A presigned GET of one file from the replica routing picks for the caller (15 minutes)."""
        return await self.service.download_url(db_session, access, dataset_id, version, path)

    @post("/{dataset_id:str}/versions/{version:int}/uploads")
    async def start_upload(
        self,
        db_session: DbSession,
        access: Access,
        dataset_id: DatasetIdParam,
        version: VersionParam,
        data: JSONBody[UploadCreate],
    ) -> Response[UploadOut]:
        """A multipart upload of one file with presigned part URLs (201); the same path, size and SHA-256
        again resumes it (200, with the parts the store holds)."""
        upload, new = await self.service.start_upload(db_session, access, dataset_id, version, data)
        return Response(upload, status_code=201 if new else 200)

    @get("/{dataset_id:str}/versions/{version:int}/uploads")
    async def list_uploads(
        self, db_session: DbSession, access: Access, dataset_id: DatasetIdParam, version: VersionParam
    ) -> list[UploadOut]:
        return await self.service.uploads(db_session, access, dataset_id, version)

    @get("/{dataset_id:str}/versions/{version:int}/uploads/{upload_id:str}")
    async def get_upload(
        self,
        db_session: DbSession,
        access: Access,
        dataset_id: DatasetIdParam,
        version: VersionParam,
        upload_id: UploadIdParam,
    ) -> UploadOut:
        """The parts the store holds, and fresh URLs for the others."""
        return await self.service.get_upload(db_session, access, dataset_id, version, upload_id)

    @post("/{dataset_id:str}/versions/{version:int}/uploads/{upload_id:str}/complete", status_code=200)
    async def complete_upload(
        self,
        db_session: DbSession,
        access: Access,
        dataset_id: DatasetIdParam,
        version: VersionParam,
        upload_id: UploadIdParam,
    ) -> UploadOut:
        """Every part there, of its planned size: the file enters the version's manifest."""
        return await self.service.complete_upload(db_session, access, dataset_id, version, upload_id)

    @delete("/{dataset_id:str}/versions/{version:int}/uploads/{upload_id:str}")
    async def abort_upload(
        self,
        db_session: DbSession,
        access: Access,
        dataset_id: DatasetIdParam,
        version: VersionParam,
        upload_id: UploadIdParam,
    ) -> None:
        await self.service.abort_upload(db_session, access, dataset_id, version, upload_id)


def dataset_controllers(settings: Settings) -> list[type[Controller]]:
    """The datasets' and the models' routes, each with its service."""
    made: list[type[Controller]] = []
    for kind in KINDS:
        made.append(
            type(
                f"{kind.title()}Controller",
                (_DatasetRoutes,),
                {"path": f"{WS_PATH}/{kind}s", "tags": [f"{kind}s"], "service": DatasetService(settings, kind)},
            )
        )
    return made


SlotParam = Annotated[str, PathParameter(pattern=r"^(data-[123]|pretrain[23]?)$", max_length=16)]
NodeParam = Annotated[
    str | None,
    QueryParameter(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$",
        max_length=63,
        description="the Slurm node the stage-in runs on: replicas in its region come first",
    ),
]


class StageInController(Controller):
    """Called by ``remotegpu-stage-in`` on a job's node, with the job's stage-in token (never a user's)."""

    path = "/api/v1/stage-in"
    tags = ["datasets"]
    security = BEARER

    @get("/{slot:str}", summary="A starting job's dataset or model: its files and where to fetch them")
    async def stage_in_manifest(
        self,
        request: Request[object, object, State],
        db_session: DbSession,
        state: State,
        slot: SlotParam,
        node: NodeParam = None,
    ) -> StageManifest:
        service: StageInService = state.stage_in
        return await service.manifest(db_session, _stage_token(request), slot, node)

    @post("/{slot:str}/report", status_code=204, summary="A starting job's node says how its stage-in went")
    async def stage_in_report(
        self,
        request: Request[object, object, State],
        db_session: DbSession,
        state: State,
        slot: SlotParam,
        data: JSONBody[StageReport],
    ) -> None:
        service: StageInService = state.stage_in
        await service.report(db_session, _stage_token(request), slot, data)


def _stage_token(request: Request[object, object, State]) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("a stage-in token is required")
    return token.strip()
