"""Routes of storage sources (platform admins): thin, the logic is in gateway.datasets.sources."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, delete, get, patch, post
from litestar.datastructures import State
from litestar.params import JSONBody, PathParameter

from gateway.datasets import sources
from gateway.datasets.schemas import StorageSourceCreate, StorageSourceOut, StorageSourcePatch
from gateway.dependencies import ADMIN_DEPENDENCIES, BEARER, AppSettings, CurrentActor, DbSession
from gateway.errors import NotFound

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
