from __future__ import annotations

from typing import Annotated

from litestar import Controller, get
from litestar.di import NamedDependency, Provide
from litestar.params import QueryParameter

from gateway.audit import reader
from gateway.audit.reader import AuditFilter
from gateway.audit.schemas import AuditOut
from gateway.dependencies import ADMIN_DEPENDENCIES, BEARER, CurrentActor, DbSession
from gateway.dependencies import Page as PageParams
from gateway.schemas import InstantQuery, Page, SlugQuery, instant
from gateway.workspaces.deps import WORKSPACE_DEPENDENCIES, WS_PATH, Access
from gateway.workspaces.models import Role

Action = Annotated[str | None, QueryParameter(max_length=64, description="exact action, or a prefix ending in '.'")]
Name = Annotated[str | None, QueryParameter(max_length=64)]
# ``actor`` is also the name of the caller dependency, so the query parameter is read into ``by``.
By = Annotated[str | None, QueryParameter(name="actor", max_length=64, description="name of the acting user")]


async def provide_filter(
    action: Action = None,
    by: By = None,
    target_type: Name = None,
    since: InstantQuery = None,
    until: InstantQuery = None,
) -> AuditFilter:
    return AuditFilter(
        action=action, actor=by, target_type=target_type, since=instant("since", since), until=instant("until", until)
    )


FILTER = {"filters": Provide(provide_filter)}
Filters = NamedDependency[AuditFilter]


class AuditController(Controller):
    path = "/api/v1/audit"
    tags = ["audit"]
    security = BEARER
    dependencies = {**ADMIN_DEPENDENCIES, **FILTER}

    @get("/")
    async def list_audit(
        self,
        db_session: DbSession,
        admin: CurrentActor,
        page: PageParams,
        filters: Filters,
        workspace: SlugQuery = None,
    ) -> Page[AuditOut]:
        """Platform-wide audit trail, newest first."""
        ws_id = None if workspace is None else await reader.workspace_id_of(db_session, workspace)
        rows, total = await reader.list_entries(db_session, page, filters, workspace_id=ws_id)
        return Page([AuditOut.of(entry, slug) for entry, slug in rows], total, page.limit, page.offset)


class WorkspaceAuditController(Controller):
    path = WS_PATH + "/audit"
    tags = ["audit"]
    security = BEARER
    dependencies = {**WORKSPACE_DEPENDENCIES, **FILTER}

    @get("/")
    async def list_workspace_audit(
        self, db_session: DbSession, access: Access, page: PageParams, filters: Filters
    ) -> Page[AuditOut]:
        """The workspace's audit trail (owners), newest first."""
        access.require(Role.OWNER)
        rows, total = await reader.list_entries(db_session, page, filters, workspace_id=access.workspace.id)
        return Page([AuditOut.of(entry, slug) for entry, slug in rows], total, page.limit, page.offset)
