from __future__ import annotations

from datetime import datetime
from typing import Annotated

from litestar import Controller, get
from litestar.params import FromQuery, QueryParameter
from sqlalchemy import select

from gateway.audit import service
from gateway.audit.schemas import AuditOut
from gateway.dependencies import ADMIN_DEPENDENCIES, BEARER, CurrentActor, DbSession
from gateway.dependencies import Page as PageParams
from gateway.errors import NotFound
from gateway.schemas import Page, SlugQuery
from gateway.workspaces.controller import WORKSPACE_DEPENDENCIES, WS_PATH, Access
from gateway.workspaces.models import Role, Workspace

Action = Annotated[str | None, QueryParameter(max_length=64, description="exact action, or a prefix ending in '.'")]
Name = Annotated[str | None, QueryParameter(max_length=64)]
# ``actor`` is also the name of the caller dependency, so the query parameter is read into ``by``.
By = Annotated[str | None, QueryParameter(name="actor", max_length=64, description="name of the acting user")]


class AuditController(Controller):
    path = "/api/v1/audit"
    tags = ["audit"]
    security = BEARER
    dependencies = ADMIN_DEPENDENCIES

    @get("/")
    async def list_audit(
        self,
        db_session: DbSession,
        admin: CurrentActor,
        page: PageParams,
        workspace: SlugQuery = None,
        action: Action = None,
        by: By = None,
        target_type: Name = None,
        since: FromQuery[datetime | None] = None,
        until: FromQuery[datetime | None] = None,
    ) -> Page[AuditOut]:
        """Platform-wide audit trail, newest first."""
        ws_id = None
        if workspace is not None:
            ws_id = await db_session.scalar(select(Workspace.id).where(Workspace.slug == workspace))
            if ws_id is None:
                raise NotFound(f"workspace {workspace!r} not found", field="workspace")
        entries, total = await service.list_entries(
            db_session,
            page,
            workspace_id=ws_id,
            action=action,
            actor=by,
            target_type=target_type,
            since=since,
            until=until,
        )
        slugs = dict(
            (
                await db_session.execute(
                    select(Workspace.id, Workspace.slug).where(
                        Workspace.id.in_({e.workspace_id for e in entries if e.workspace_id})
                    )
                )
            ).all()
        )
        return Page([AuditOut.of(e, slugs.get(e.workspace_id or 0)) for e in entries], total, page.limit, page.offset)


class WorkspaceAuditController(Controller):
    path = WS_PATH + "/audit"
    tags = ["audit"]
    security = BEARER
    dependencies = WORKSPACE_DEPENDENCIES

    @get("/")
    async def list_workspace_audit(
        self,
        db_session: DbSession,
        access: Access,
        page: PageParams,
        action: Action = None,
        by: By = None,
        target_type: Name = None,
        since: FromQuery[datetime | None] = None,
        until: FromQuery[datetime | None] = None,
    ) -> Page[AuditOut]:
        """The workspace's audit trail (owners), newest first."""
        access.require(Role.OWNER)
        entries, total = await service.list_entries(
            db_session,
            page,
            workspace_id=access.workspace.id,
            action=action,
            actor=by,
            target_type=target_type,
            since=since,
            until=until,
        )
        return Page([AuditOut.of(e, access.workspace.slug) for e in entries], total, page.limit, page.offset)
