"""The environments API (``/api/v1/workspaces/{ws}/environments``) and the sessions' callback."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Request, delete, get, patch, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import JSONBody, PathParameter, QueryParameter

from gateway.dependencies import BEARER, DbSession
from gateway.dependencies import Page as PageParams
from gateway.environments.schemas import (
    CallbackIn,
    CallbackOut,
    EnvironmentCreate,
    EnvironmentEventOut,
    EnvironmentName,
    EnvironmentOut,
    EnvironmentPatch,
    PortMappingOut,
    StartOptions,
)
from gateway.environments.service import EnvironmentService, rows_view
from gateway.environments.states import STATES
from gateway.errors import Unauthorized
from gateway.schemas import Page, UserName, whole
from gateway.workspaces.deps import WORKSPACE_DEPENDENCIES, WS_PATH, Access

EnvironmentId = Annotated[str, PathParameter(pattern=whole(r"[0-9a-f]{32}"))]


def provide_environments(state: State) -> EnvironmentService:
    service: EnvironmentService = state.environments
    return service


Environments = NamedDependency[EnvironmentService]


class EnvironmentController(Controller):
    path = WS_PATH + "/environments"
    tags = ["environments"]
    security = BEARER
    dependencies = {**WORKSPACE_DEPENDENCIES, "environments": Provide(provide_environments, sync_to_thread=False)}

    @post("/", status_code=201)
    async def create(
        self, db_session: DbSession, access: Access, environments: Environments, data: JSONBody[EnvironmentCreate]
    ) -> EnvironmentOut:
        """Create an environment (and start it, unless ``start`` is false): one Slurm job per start, as you."""
        row = await environments.create(db_session, access, data)
        return environments.view(row, access)

    @get("/")
    async def list_environments(
        self,
        db_session: DbSession,
        access: Access,
        environments: Environments,
        page: PageParams,
        # ``state`` is reserved by Litestar (the app state): the query parameter is read into ``status``.
        status: Annotated[str | None, QueryParameter(name="state", schema_extra={"enum": list(STATES)})] = None,
        user: Annotated[UserName | None, QueryParameter()] = None,
        name: Annotated[EnvironmentName | None, QueryParameter()] = None,
    ) -> Page[EnvironmentOut]:
        """Members see their own environments, admins and owners all of the workspace's; newest first."""
        rows, total = await environments.search(db_session, access, page, state=status, user=user, name=name)
        return Page(rows_view(environments, rows, access), total, page.limit, page.offset)

    @get("/{environment_id:str}")
    async def get_environment(
        self, db_session: DbSession, access: Access, environments: Environments, environment_id: EnvironmentId
    ) -> EnvironmentOut:
        return environments.view(await environments.row(db_session, access, environment_id), access)

    @patch("/{environment_id:str}")
    async def update(
        self,
        db_session: DbSession,
        access: Access,
        environments: Environments,
        environment_id: EnvironmentId,
        data: JSONBody[EnvironmentPatch],
    ) -> EnvironmentOut:
        """Name and description at once; resources, image, data and services from the next start."""
        row = await environments.patch(db_session, access, environment_id, data)
        return environments.view(row, access)

    @delete("/{environment_id:str}", status_code=204)
    async def delete_environment(
        self, db_session: DbSession, access: Access, environments: Environments, environment_id: EnvironmentId
    ) -> None:
        """Stop it if it runs and remove it; its code directory (``/gemini/code``) stays the user's."""
        await environments.delete(db_session, access, environment_id)

    @post("/{environment_id:str}/stop", status_code=202, summary="Stop an environment's session")
    async def stop(
        self, db_session: DbSession, access: Access, environments: Environments, environment_id: EnvironmentId
    ) -> EnvironmentOut:
        """``scancel`` of its session as its owner: the GPUs are freed; ``stopping`` until Slurm ends it."""
        return environments.view(await environments.stop(db_session, access, environment_id), access)

    @post("/{environment_id:str}/start", status_code=202, summary="Start a stopped environment")
    async def start(
        self,
        db_session: DbSession,
        access: Access,
        environments: Environments,
        environment_id: EnvironmentId,
        data: JSONBody[StartOptions | None] = None,
    ) -> EnvironmentOut:
        """A new session (a new Slurm job) with the environment's settings; ``/gemini/code`` is the same.
        JupyterHub's spawner gives ``jupyterhub``: the session runs its single-user server (JupyterLab)."""
        launch = data.jupyterhub if data is not None else None
        return environments.view(await environments.start(db_session, access, environment_id, launch), access)

    @post("/{environment_id:str}/restart", status_code=202, summary="Restart an environment")
    async def restart(
        self,
        db_session: DbSession,
        access: Access,
        environments: Environments,
        environment_id: EnvironmentId,
        data: JSONBody[StartOptions | None] = None,
    ) -> EnvironmentOut:
        """Stop the session, wait for Slurm to end it, start a new one (the settings as they are now)."""
        launch = data.jupyterhub if data is not None else None
        return environments.view(await environments.restart(db_session, access, environment_id, launch), access)

    @get("/{environment_id:str}/ports")
    async def ports(
        self, db_session: DbSession, access: Access, environments: Environments, environment_id: EnvironmentId
    ) -> list[PortMappingOut]:
        """The environment's port mappings, live ones first."""
        return await environments.ports(db_session, access, environment_id)

    @post("/{environment_id:str}/ports", status_code=200, summary="Map released ports again")
    async def remap(
        self, db_session: DbSession, access: Access, environments: Environments, environment_id: EnvironmentId
    ) -> list[PortMappingOut]:
        """A running session whose port was released (no traffic for its auto-release time) gets one again."""
        return await environments.remap(db_session, access, environment_id)

    @get("/{environment_id:str}/events")
    async def events(
        self, db_session: DbSession, access: Access, environments: Environments, environment_id: EnvironmentId
    ) -> list[EnvironmentEventOut]:
        """Starts, stops, readiness, released ports and the sessions' Slurm state changes, oldest first."""
        return await environments.events(db_session, access, environment_id)


class SessionCallbackController(Controller):
    """Called by a session's supervisor from its node, with the session's token (never a user's)."""

    path = "/api/v1/sessions"
    tags = ["environments"]
    security = BEARER  # the session's own token (gateway.environments.tokens), never a user's
    dependencies = {"environments": Provide(provide_environments, sync_to_thread=False)}

    @post("/callback", status_code=200, summary="A session reports where its services listen")
    async def callback(
        self,
        request: Request[object, object, State],
        db_session: DbSession,
        environments: Environments,
        data: JSONBody[CallbackIn],
    ) -> CallbackOut:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("a session token is required")
        peer = request.client.host if request.client is not None else ""
        return await environments.callback(db_session, token.strip(), peer, data)
