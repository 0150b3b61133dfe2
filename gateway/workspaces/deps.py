"""The ``access`` dependency of every route under ``/api/v1/workspaces/{ws}``: the caller's view of the
workspace (gateway.workspaces.access), 404 for non-members, before the handler runs."""

from __future__ import annotations

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide

from gateway.dependencies import READ_METHODS, CurrentActor, lazy_session, lookup_session
from gateway.schemas import SlugParam
from gateway.workspaces.access import WorkspaceAccess, get_access


async def provide_access(
    request: Request[object, object, State], actor: CurrentActor, ws: SlugParam
) -> WorkspaceAccess:
    cached = request.method in READ_METHODS or request.route_handler.opt.get(CACHED_ACCESS, False)
    session = lookup_session(request) if cached else lazy_session(request)  # cached: a detached snapshot anyway
    return await get_access(session, actor, ws, cached=cached)


CACHED_ACCESS = "cached_access"
"""Route option: this write may use the cached access snapshot (see ``service.get_access``)."""
WORKSPACE_DEPENDENCIES = {"access": Provide(provide_access)}
Access = NamedDependency[WorkspaceAccess]
WS_PATH = "/api/v1/workspaces/{ws:str}"
