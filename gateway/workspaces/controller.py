from __future__ import annotations

from typing import Annotated

from litestar import Controller, delete, get, patch, post, put
from litestar.params import FromQuery, JSONBody, QueryParameter

from gateway.dependencies import (
    BEARER,
    AppSettings,
    CurrentActor,
    DbSession,
)
from gateway.dependencies import Page as PageParams
from gateway.schemas import Page, UserNameParam
from gateway.workspaces import service
from gateway.workspaces.deps import WORKSPACE_DEPENDENCIES, WS_PATH, Access
from gateway.workspaces.models import Role, WorkspaceStatus
from gateway.workspaces.schemas import (
    MemberCreate,
    MemberOut,
    MemberUpdate,
    QuotaIn,
    QuotaOut,
    QuotaPatch,
    SlurmSyncOut,
    WorkspaceCreate,
    WorkspaceOut,
    WorkspaceUpdate,
)


class WorkspaceController(Controller):
    path = "/api/v1/workspaces"
    tags = ["workspaces"]
    security = BEARER

    @get("/")
    async def list_workspaces(
        self,
        db_session: DbSession,
        actor: CurrentActor,
        page: PageParams,
        q: Annotated[str | None, QueryParameter(max_length=64)] = None,
        status: FromQuery[WorkspaceStatus | None] = None,
        mine: Annotated[bool, QueryParameter(description="platform admins: only workspaces they belong to")] = False,
    ) -> Page[WorkspaceOut]:
        rows, total = await service.list_workspaces(db_session, actor, page, q=q, status=status, mine=mine)
        return Page([WorkspaceOut.of(ws, role) for ws, role in rows], total, page.limit, page.offset)

    @post("/")
    async def create_workspace(
        self, db_session: DbSession, actor: CurrentActor, settings: AppSettings, data: JSONBody[WorkspaceCreate]
    ) -> WorkspaceOut:
        """Create a workspace; the caller (or ``owner``, for admins) becomes its owner."""
        access = await service.create_workspace(db_session, actor, settings, data)
        return WorkspaceOut.of(access.workspace, access.role)

    @get("/{ws:str}", dependencies=WORKSPACE_DEPENDENCIES)
    async def get_workspace(self, db_session: DbSession, access: Access) -> WorkspaceOut:
        """The workspace, with how its last reconciliation with Slurm went (``slurm_sync``)."""
        sync = SlurmSyncOut.of(await service.get_sync(db_session, access))
        return WorkspaceOut.of(access.workspace, access.role, sync)

    @patch("/{ws:str}", dependencies=WORKSPACE_DEPENDENCIES)
    async def update_workspace(
        self, db_session: DbSession, access: Access, data: JSONBody[WorkspaceUpdate]
    ) -> WorkspaceOut:
        return WorkspaceOut.of(await service.update_workspace(db_session, access, data), access.role)

    @delete("/{ws:str}", dependencies=WORKSPACE_DEPENDENCIES)
    async def delete_workspace(self, db_session: DbSession, access: Access) -> None:
        await service.delete_workspace(db_session, access)


class MemberController(Controller):
    path = WS_PATH + "/members"
    tags = ["workspaces"]
    security = BEARER
    dependencies = WORKSPACE_DEPENDENCIES

    @get("/")
    async def list_members(
        self, db_session: DbSession, access: Access, page: PageParams, role: FromQuery[Role | None] = None
    ) -> Page[MemberOut]:
        rows, total = await service.list_members(db_session, access, page, role)
        return Page([MemberOut.of(m, name) for m, name in rows], total, page.limit, page.offset)

    @post("/")
    async def add_member(self, db_session: DbSession, access: Access, data: JSONBody[MemberCreate]) -> MemberOut:
        return MemberOut.of(await service.add_member(db_session, access, data), data.username)

    @get("/{user:str}")
    async def get_member(self, db_session: DbSession, access: Access, user: UserNameParam) -> MemberOut:
        return MemberOut.of(await service.get_member(db_session, access, user), user)

    @patch("/{user:str}")
    async def change_role(
        self, db_session: DbSession, access: Access, user: UserNameParam, data: JSONBody[MemberUpdate]
    ) -> MemberOut:
        return MemberOut.of(await service.change_role(db_session, access, user, data.role), user)

    @delete("/{user:str}")
    async def remove_member(self, db_session: DbSession, access: Access, user: UserNameParam) -> None:
        """Remove a member, or leave the workspace when ``user`` is the caller."""
        await service.remove_member(db_session, access, user)


class QuotaController(Controller):
    path = WS_PATH + "/quota"
    tags = ["workspaces"]
    security = BEARER
    dependencies = WORKSPACE_DEPENDENCIES

    @get("/")
    async def get_quota(self, db_session: DbSession, access: Access) -> QuotaOut:
        """The limits, and whether Slurm has them (``slurm_sync``)."""
        quota = await service.get_quota(db_session, access)
        return QuotaOut.of(quota, SlurmSyncOut.of(await service.get_sync(db_session, access)))

    @put("/")
    async def set_quota(self, db_session: DbSession, access: Access, data: JSONBody[QuotaIn]) -> QuotaOut:
        """Replace the whole quota: every limit omitted or ``null`` becomes unlimited (PATCH changes some).
        A GPU type the cluster has no GPU of is a 400 naming ``gpus_by_type.TYPE``."""
        quota = await service.set_quota(db_session, access, data)
        return QuotaOut.of(quota, SlurmSyncOut.of(await service.get_sync(db_session, access)))

    @patch("/")
    async def patch_quota(self, db_session: DbSession, access: Access, data: JSONBody[QuotaPatch]) -> QuotaOut:
        """Change only the limits given (JSON merge patch): ``null`` lifts one; in ``gpus_by_type`` a type set to
        ``null`` is removed and types not named are kept."""
        quota = await service.patch_quota(db_session, access, data)
        return QuotaOut.of(quota, SlurmSyncOut.of(await service.get_sync(db_session, access)))
